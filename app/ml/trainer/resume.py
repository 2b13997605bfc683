"""The epoch loop's record (best epoch and weights, early stopping) and the resumable training state it is saved
to after each epoch and restored from when a re-claimed job continues."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from app.ml.engine import EpochStats
from app.ml.metrics import MetricAccumulator
from app.ml.optim import EarlyStopping
from app.ml.trainer.hooks import TrainingState
from app.ml.trainer.rng import capture_rng, restore_rng


@dataclass
class Trainable:
    """What the loop trains and checkpoints: the module whose weights define "best" (the head alone for linear),
    what updates it, and the generators its batches draw from."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    generators: dict[str, torch.Generator] = field(default_factory=dict)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's weights on the host."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class Progress:
    """How far the loop got, the best epoch so far (and its weights) and the early-stopping count."""

    stopper: EarlyStopping
    best_state: dict[str, torch.Tensor]
    best_key: tuple[float, float] | None = None
    best_epoch: int = 1
    epochs_run: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None  # the epoch a resumed attempt continued after

    def record(self, epoch: int, val: MetricAccumulator | None, train: EpochStats, module: nn.Module) -> bool:
        """Keep the module's weights if this epoch is the best so far; whether it is.

        Highest val accuracy wins; lower val loss breaks ties. Without val, the training loss decides.
        """
        key = (val.accuracy, -val.loss) if val is not None else (0.0, -train.loss)
        is_best = self.best_key is None or key > self.best_key
        if is_best:
            self.best_key, self.best_state, self.best_epoch = key, snapshot(module), epoch
        return is_best


def training_state(epoch: int, progress: Progress, trainable: Trainable) -> TrainingState:
    """Everything needed to continue after `epoch` exactly as an uninterrupted run would."""
    scheduler, scaler = trainable.scheduler, trainable.scaler
    return {
        "epoch": epoch,
        "step": scheduler.last_epoch if scheduler is not None else None,
        "stopped_early": progress.stopped_early,
        "model": trainable.module.state_dict(),
        "optimizer": trainable.optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best_key": list(progress.best_key) if progress.best_key is not None else None,
        "best_epoch": progress.best_epoch,
        # The best weights are the model's own when this epoch is the best (saves a copy on disk).
        "best_state": None if progress.best_epoch == epoch else progress.best_state,
        "stopper": [progress.stopper.best, progress.stopper.stale],
        "rng": capture_rng(trainable.generators),
    }


def restore_training_state(state: TrainingState, progress: Progress, trainable: Trainable) -> int:
    """Load a training state saved at the end of an epoch; returns that epoch."""
    trainable.module.load_state_dict(state["model"])
    trainable.optimizer.load_state_dict(state["optimizer"])
    if trainable.scheduler is not None and state["scheduler"] is not None:
        trainable.scheduler.load_state_dict(state["scheduler"])
    if trainable.scaler is not None and state["scaler"] is not None:
        trainable.scaler.load_state_dict(state["scaler"])
    epoch = int(state["epoch"])
    progress.best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
    progress.best_epoch = int(state["best_epoch"])
    best = state["best_state"]
    progress.best_state = snapshot(trainable.module) if best is None else best
    progress.stopper.best, progress.stopper.stale = float(state["stopper"][0]), int(state["stopper"][1])
    restore_rng(state["rng"], trainable.generators)
    progress.epochs_run = epoch
    progress.stopped_early = bool(state["stopped_early"])
    progress.resumed_from = epoch
    return epoch
