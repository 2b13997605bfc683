"""Which parameters train: linear (head), partial (last N stages), full, or LoRA adapters (peft)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from app.ml.backbones import BuiltModel

STRATEGIES = ("linear", "partial", "full", "lora")


class StrategyError(ValueError):
    """The strategy cannot be applied to this model as configured."""


def head_module_name(built: BuiltModel) -> str:
    for name, module in built.model.named_modules():
        if module is built.head:
            return name
    raise StrategyError("the classification head is not a submodule of the model")


def lora_targets(built: BuiltModel) -> list[str]:
    """Linear layers and dense (non-grouped) convolutions outside the head: what LoRA adapts."""
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


def apply_strategy(
    built: BuiltModel, strategy: str, unfreeze_stages: int = 1, lora_rank: int = 8, lora_alpha: float = 16.0
) -> list[nn.Parameter]:
    """Freeze what the strategy keeps fixed (or wrap the model with LoRA); returns the trainable parameters."""
    if strategy == "lora":
        return _apply_lora(built, lora_rank, lora_alpha)
    head = built.head_param_names
    if strategy == "full":
        trainable = {n for n, _ in built.model.named_parameters()}
    elif strategy == "partial":
        if not 1 <= unfreeze_stages <= len(built.stages):
            raise StrategyError(f"unfreeze_stages must be between 1 and {len(built.stages)} for this architecture")
        trainable = head | {n for stage in built.stages[-unfreeze_stages:] for n in stage}
    elif strategy == "linear":
        trainable = head
    else:
        raise StrategyError(f"unknown strategy {strategy!r}")
    params = []
    for name, p in built.model.named_parameters():
        p.requires_grad_(name in trainable)
        if p.requires_grad:
            params.append(p)
    return params


def _apply_lora(built: BuiltModel, rank: int, alpha: float) -> list[nn.Parameter]:
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(built)
    if not targets:
        raise StrategyError("LoRA found no linear or dense convolution layers to adapt in this architecture")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, modules_to_save=[head_module_name(built)])
    built.model = get_peft_model(built.model, config)
    built.lora = True
    return [p for p in built.model.parameters() if p.requires_grad]


def export_state_dict(built: BuiltModel) -> dict[str, torch.Tensor]:
    """Plain weights of the model as served: LoRA adapters merged into the layers they adapt."""
    if not getattr(built, "lora", False):
        return built.model.state_dict()
    merged = copy.deepcopy(built.model).merge_and_unload()
    return merged.state_dict()
