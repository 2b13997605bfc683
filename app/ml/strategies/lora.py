"""lora: low-rank adapters (peft) on the backbone's linear and dense convolution layers train with the head; the
adapters are merged into the weights for serving."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from app.ml.strategies.base import Strategy, StrategyError, StrategyKnobs, StrategyRequest

if TYPE_CHECKING:
    import torch
    from torch import nn

    from app.ml.architectures.base import BuiltModel


def head_module_name(built: BuiltModel) -> str:
    for name, module in built.model.named_modules():
        if module is built.head:
            return name
    raise StrategyError("the classification head is not a submodule of the model")


def lora_targets(built: BuiltModel) -> list[str]:
    """Linear layers and dense (non-grouped) convolutions outside the head: what LoRA adapts."""
    from torch import nn

    head = head_module_name(built)
    targets = []
    for name, module in built.model.named_modules():
        if not name or name == head or name.startswith(head + "."):
            continue
        if isinstance(module, nn.Linear) and type(module) is not nn.modules.linear.NonDynamicallyQuantizableLinear:
            targets.append(name)
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            targets.append(name)
    return targets


def apply(built: BuiltModel, knobs: StrategyKnobs) -> list[nn.Parameter]:
    """Wrap the model with LoRA adapters; the head trains whole (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(built)
    if not targets:
        raise StrategyError("LoRA found no linear or dense convolution layers to adapt in this architecture")
    # peft annotates lora_alpha as an int, but only ever divides it by the rank: a fractional alpha is fine.
    config = LoraConfig(
        r=knobs.lora_rank,
        lora_alpha=knobs.lora_alpha,  # type: ignore[arg-type]
        target_modules=targets,
        modules_to_save=[head_module_name(built)],
    )
    built.model = get_peft_model(built.model, config)
    built.lora = True
    return [p for p in built.model.parameters() if p.requires_grad]


def check(request: StrategyRequest) -> None:
    """Pretrained weights to adapt, and layers to adapt them in (found on the meta device)."""
    import torch

    from app.ml.backbones import build_model

    if request.weights == "none":
        raise StrategyError("lora adapts pretrained weights; with weights 'none' use strategy 'full'")
    with torch.device("meta"):
        if not lora_targets(build_model(request.arch, 2, "none")):
            raise StrategyError(f"LoRA finds no linear or dense convolution layers to adapt in {request.arch}")


def merged_state_dict(built: BuiltModel) -> dict[str, torch.Tensor]:
    """The weights with the adapters merged into the layers they adapt (a copy: training goes on unmerged)."""
    from peft import PeftModel

    assert isinstance(built.model, PeftModel), "apply() wraps the model in a PeftModel"
    return copy.deepcopy(built.model).merge_and_unload().state_dict()


STRATEGY = Strategy(
    name="lora",
    docs="LoRA adapters (peft) on the backbone's linear and dense conv layers plus the head; merged into the "
    "weights for serving",
    apply=apply,
    check=check,
)
