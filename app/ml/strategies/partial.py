"""partial: the head and the last `unfreeze_stages` backbone stages train; the earlier stages stay frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.ml.strategies.base import Strategy, StrategyError, StrategyKnobs, StrategyRequest, train_only

if TYPE_CHECKING:
    from torch import nn

    from app.ml.architectures.base import BuiltModel


def apply(built: BuiltModel, knobs: StrategyKnobs) -> list[nn.Parameter]:
    n = knobs.unfreeze_stages
    if not 1 <= n <= len(built.stages):
        raise StrategyError(f"unfreeze_stages must be between 1 and {len(built.stages)} for this architecture")
    return train_only(built, built.head_param_names | {name for stage in built.stages[-n:] for name in stage})


def check(request: StrategyRequest) -> None:
    """The architecture must have that many stages (counted on the meta device)."""
    from app.ml.backbones import count_stages

    stages = count_stages(request.arch)
    if request.unfreeze_stages > stages:
        raise StrategyError(
            f"unfreeze_stages={request.unfreeze_stages} but {request.arch} has {stages} stages; "
            f"use 1..{stages} (or strategy 'full')"
        )


STRATEGY = Strategy(name="partial", docs="the last `unfreeze_stages` stages train too", apply=apply, check=check)
