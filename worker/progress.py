"""What the runner's progress and epoch events say: the pace of the epoch in progress, the ETA, an epoch's metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.ml.trainer import EpochReport


@dataclass
class EpochPace:
    """How fast the epoch in progress goes (from its first reported step) and how long epochs took: the ETA."""

    epoch: int = 0
    first_step: int = 0
    first_images: int = 0
    started: float = 0.0
    last_step: int = 0
    last_images: int = 0
    last_time: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)

    def step(self, epoch: int, step: int, images: int) -> None:
        now = time.monotonic()
        if epoch != self.epoch:
            self.epoch, self.first_step, self.first_images, self.started = epoch, step, images, now
        self.last_step, self.last_images, self.last_time = step, images, now

    def rates(self) -> tuple[float | None, float | None]:
        """(steps per second, images per second) in this epoch so far; None before two steps."""
        elapsed = self.last_time - self.started
        if elapsed <= 0 or self.last_step <= self.first_step:
            return None, None
        return (self.last_step - self.first_step) / elapsed, (self.last_images - self.first_images) / elapsed

    def eta(self, epoch: int, epochs: int, step: int, steps: int, rate: float | None) -> float | None:
        """This epoch's remaining steps at the current rate plus the remaining epochs at the mean epoch time
        (this epoch's training pace before one has finished); None before a rate is known."""
        if rate is None:
            return None
        mean_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else steps / rate
        return round((steps - step) / rate + (epochs - epoch) * mean_epoch, 1)


def epoch_event(report: EpochReport) -> dict[str, Any]:
    """The data of an `epoch` event: what the epoch row records."""
    return {
        "epoch": report.epoch,
        "train_loss": report.train.loss,
        "train_accuracy": report.train.accuracy,
        "val_loss": report.val_loss,
        "val_accuracy": report.val_accuracy,
        "learning_rate": report.learning_rate,
        "seconds": report.seconds,
        "images_per_second": report.train.images_per_second,
    }
