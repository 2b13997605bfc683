"""What fit() reports (each epoch, the result) and what it asks its caller (stop? resume from? saved baseline?)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from app.ml.architectures.base import BuiltModel
from app.ml.engine import EpochStats
from app.ml.metrics import MetricAccumulator

# The resumable state of a run at the end of an epoch: weights, optimizer, schedule, best so far, random streams.
TrainingState = dict[str, Any]


@dataclass
class EpochReport:
    epoch: int  # 1-based
    train: EpochStats
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    seconds: float
    is_best: bool
    tflops: float | None = None  # achieved model TFLOP/s while training
    mfu: float | None = None  # tflops over the device's peak


@dataclass
class ValPredictions:
    """The best weights' prediction for each validation image: the rows its confusion matrix counts."""

    refs: np.ndarray  # int64: each image's stable number within its dataset (SampleSet.refs)
    true: np.ndarray  # int64 class indices
    predicted: np.ndarray  # int64 class indices
    confidence: np.ndarray  # float32: the predicted class's softmax probability

    def __len__(self) -> int:
        return len(self.refs)

    @classmethod
    def of(cls, accumulator: MetricAccumulator, refs: np.ndarray) -> ValPredictions:
        """From an evaluation that kept its predictions over images numbered refs, in the same order."""
        true, predicted, confidence = accumulator.predictions()
        if len(true) != len(refs):
            raise ValueError(f"{len(true)} predictions for {len(refs)} validation images")
        return cls(np.asarray(refs, dtype=np.int64), true, predicted, confidence)


@dataclass
class FitResult:
    best_epoch: int
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    epochs_run: int
    baseline: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    flops_per_image: float | None = None
    resumed_from: int | None = None  # set when this run continued a checkpointed one after that epoch
    val_predictions: ValPredictions | None = None  # per image, from the same pass as val_metrics


class TrainingHooks(Protocol):
    def should_stop(self) -> bool: ...

    def on_progress(
        self, epoch: int, epochs: int, step: int, steps: int, images: int, loss: Callable[[], float]
    ) -> None:
        """A training step of epoch (of epochs) ended: step of steps, images seen this epoch; loss() reads the
        epoch's running mean loss (it waits for the device: call it only when reporting)."""

    def on_epoch(self, report: EpochReport, built: BuiltModel, state: Callable[[], TrainingState]) -> None:
        """An epoch ended; state() builds the resumable training state (call it to checkpoint)."""

    def resume_state(self) -> TrainingState | None:
        """The training state to continue from (a re-claimed job), or None to start at epoch 1."""

    def saved_baseline(self) -> dict[str, Any] | None:
        """Before-fine-tuning metrics an earlier attempt already measured, if any."""

    def on_baseline(self, baseline: dict[str, Any]) -> None:
        """Before-fine-tuning metrics were measured (persist them so a resumed attempt skips the pass)."""


class BaseHooks:
    """Hooks that never stop, record nothing and start fresh: subclass and override what you need."""

    def should_stop(self) -> bool:
        return False

    def on_progress(
        self, epoch: int, epochs: int, step: int, steps: int, images: int, loss: Callable[[], float]
    ) -> None:
        return None

    def on_epoch(self, report: EpochReport, built: BuiltModel, state: Callable[[], TrainingState]) -> None:
        return None

    def resume_state(self) -> TrainingState | None:
        return None

    def saved_baseline(self) -> dict[str, Any] | None:
        return None

    def on_baseline(self, baseline: dict[str, Any]) -> None:
        return None
