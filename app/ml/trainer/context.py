"""TrainContext: what every part of a run reads (config and strategy, model, class names, data, hooks, device)."""

from __future__ import annotations

from dataclasses import dataclass

from app.ml.architectures.base import BuiltModel
from app.ml.config import TrainConfig
from app.ml.engine import DeviceSetup
from app.ml.strategies import Strategy
from app.ml.trainer.hooks import TrainingHooks
from app.ml.trainer.loaders import Splits


@dataclass
class TrainContext:
    """One training run, once its model is built and its data split and decoded."""

    cfg: TrainConfig
    strategy: Strategy  # the registry entry cfg.strategy names
    built: BuiltModel
    class_names: list[str]
    splits: Splits
    hooks: TrainingHooks
    setup: DeviceSetup
    flops_per_image: float | None  # one forward pass (None when the counter cannot trace the model)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
