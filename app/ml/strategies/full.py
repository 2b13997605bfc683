"""full: every parameter trains, the backbone's stages at discriminative learning rates (`lr_decay`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.ml.strategies.base import Strategy, StrategyKnobs, train_only

if TYPE_CHECKING:
    from torch import nn

    from app.ml.architectures.base import BuiltModel


def apply(built: BuiltModel, knobs: StrategyKnobs) -> list[nn.Parameter]:
    return train_only(built, {name for name, _ in built.model.named_parameters()})


STRATEGY = Strategy(
    name="full",
    docs="everything trains, with discriminative learning rates (`lr_decay`)",
    apply=apply,
    flops_factor=3.0,  # every weight gets a gradient: a full third pass
)
