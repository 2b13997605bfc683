"""STRATEGIES: how a job fine-tunes its backbone. One module per strategy (which parameters train, what it checks
before a job is queued, whether it trains on cached features, its FLOPs factor, its docs line); this list registers
them in the order the API documents them.

Adding a strategy: a module with its `STRATEGY` entry, then one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.ml.registry import Registry
from app.ml.strategies import full, linear, lora, partial
from app.ml.strategies.base import Strategy, StrategyError, StrategyKnobs, StrategyRequest
from app.ml.strategies.lora import head_module_name, lora_targets

if TYPE_CHECKING:
    import torch
    from torch import nn

    from app.ml.architectures.base import BuiltModel

STRATEGIES: Registry[Strategy] = Registry(
    "strategy", StrategyError, [linear.STRATEGY, partial.STRATEGY, full.STRATEGY, lora.STRATEGY]
)
DEFAULT_STRATEGY = linear.STRATEGY.name

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Strategy",
    "StrategyError",
    "StrategyKnobs",
    "StrategyRequest",
    "apply_strategy",
    "export_state_dict",
    "head_module_name",
    "lora_targets",
]


@dataclass(frozen=True)
class Knobs:
    unfreeze_stages: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0


def apply_strategy(
    built: BuiltModel, strategy: str, unfreeze_stages: int = 1, lora_rank: int = 8, lora_alpha: float = 16.0
) -> list[nn.Parameter]:
    """Freeze what the strategy keeps fixed (or wrap the model with LoRA); returns the trainable parameters."""
    return STRATEGIES.get(strategy).apply(built, Knobs(unfreeze_stages, lora_rank, lora_alpha))


def export_state_dict(built: BuiltModel) -> dict[str, torch.Tensor]:
    """Plain weights of the model as served: LoRA adapters merged into the layers they adapt."""
    if not built.lora:
        return built.model.state_dict()
    return lora.merged_state_dict(built)
