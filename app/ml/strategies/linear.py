"""linear: the backbone stays frozen and only the new head trains, on features computed once per image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.ml.strategies.base import Strategy, StrategyKnobs, train_only

if TYPE_CHECKING:
    from torch import nn

    from app.ml.architectures.base import BuiltModel


def apply(built: BuiltModel, knobs: StrategyKnobs) -> list[nn.Parameter]:
    return train_only(built, built.head_param_names)


STRATEGY = Strategy(
    name="linear",
    docs="frozen backbone, only the new head trains; features are computed once and cached, so augmentation and "
    "mixup/cutmix do not apply",
    apply=apply,
    feature_cache=True,
    augmented=False,
)
