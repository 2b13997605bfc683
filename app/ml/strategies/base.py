"""What a training strategy is: which parameters train, what it checks before a job is queued, how it trains.

Nothing here imports torch, so the API contract (which lists the strategies) loads without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn

    from app.ml.architectures.base import BuiltModel


class StrategyError(ValueError):
    """The strategy cannot be applied to this model as configured."""


class StrategyKnobs(Protocol):
    """The job's settings a strategy reads when it freezes or wraps the model."""

    @property
    def unfreeze_stages(self) -> int: ...

    @property
    def lora_rank(self) -> int: ...

    @property
    def lora_alpha(self) -> float: ...


class StrategyRequest(StrategyKnobs, Protocol):
    """What a strategy checks before a job is accepted: its knobs, the architecture and the weights."""

    @property
    def arch(self) -> str: ...

    @property
    def weights(self) -> str: ...


def no_checks(request: StrategyRequest) -> None:
    return None


@dataclass(frozen=True)
class Strategy:
    """A registry entry: one way of fine-tuning a backbone."""

    name: str
    docs: str  # one line for the API schema and the README (without the name)
    # Freeze what stays fixed (or wrap the model); returns the trainable parameters.
    apply: Callable[[BuiltModel, StrategyKnobs], list[nn.Parameter]]
    # Checks a job must pass before it is queued (they may build the model on the meta device); StrategyError.
    check: Callable[[StrategyRequest], None] = no_checks
    # Trains the head alone on backbone features computed once per image and kept (no augmentation, no backbone).
    feature_cache: bool = False
    # Training cost in forward passes: forward + backward through the activations (+ the weights' gradients when
    # every weight trains), for achieved TFLOP/s and MFU.
    flops_factor: float = 2.0
    # Trains on augmented images (the `augmentation`, `mixup_prob` and `cutmix_prob` settings apply).
    augmented: bool = True

    @property
    def label(self) -> str:
        return self.name

    def accepts(self, name: str) -> bool:
        return name == self.name


def train_only(built: BuiltModel, trainable: set[str]) -> list[nn.Parameter]:
    """Freeze every parameter of the model but the named ones; returns those, in the model's order."""
    params = []
    for name, p in built.model.named_parameters():
        p.requires_grad_(name in trainable)
        if p.requires_grad:
            params.append(p)
    return params
