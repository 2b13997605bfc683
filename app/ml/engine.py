"""The inner loops: one training epoch, evaluation and feature extraction, on an explicit device."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from app.ml.architectures.base import Preprocessing
from app.ml.metrics import MetricAccumulator
from app.ml.transforms import normalize_batch


class TrainingStopped(Exception):
    """should_stop() said so between two batches (cancellation, lost lease, shutdown)."""


class Batches(Protocol):
    """(images, labels) batches, as many as len() says: a DataLoader, or DeviceBatches on the training device."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


@dataclass
class DeviceSetup:
    """Where and how tensors are computed."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def for_device(cls, name: str | None = None) -> DeviceSetup:
        """CUDA with bf16 (or fp16) autocast when present, else CPU in fp32."""
        if name is None:
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        amp: torch.dtype | None = None
        if device.type == "cuda":
            amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device=device, amp_dtype=amp)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


# Called after each training step with (step, steps, images seen, the running mean loss as a zero-arg read):
# reading the loss waits for the device, so a listener calls it only when it reports.
StepCallback = Callable[[int, int, int, Callable[[], float]], None]


class RunningStats:
    """Loss and correct predictions summed on the device and read once per epoch: reading them every step
    (float(loss), int(...)) would make each CUDA step wait until the GPU has finished the previous one."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = len(labels)
        self.loss_sum += loss.detach().float() * n
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += n

    def mean_loss(self) -> float:
        """The mean loss so far (waits for the device's queued work: call it rarely)."""
        return float(self.loss_sum) / max(self.seen, 1)

    def finish(self) -> EpochStats:
        """The epoch's stats; waits for the device's queued work, so the seconds include it."""
        loss_sum, correct = float(self.loss_sum), int(self.correct)
        seen = max(self.seen, 1)
        return EpochStats(loss_sum / seen, correct / seen, self.seen, time.perf_counter() - self.start)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except BatchNorm layers whose parameters are frozen keep their running statistics."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters(False)):
            module.eval()


def _to_device(t: torch.Tensor, setup: DeviceSetup) -> torch.Tensor:
    """Asynchronous on CUDA (the loader pins its batches), a no-op for tensors already there."""
    return t.to(setup.device, non_blocking=setup.device.type == "cuda")


def _prepare(images: torch.Tensor, setup: DeviceSetup, prep: Preprocessing) -> torch.Tensor:
    x = _to_device(images, setup)
    x = normalize_batch(x, prep.mean, prep.std)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    setup: DeviceSetup,
    prep: Preprocessing,
    should_stop: Callable[[], bool] = lambda: False,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    mixer: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    on_step: StepCallback | None = None,
) -> EpochStats:
    """One pass over loader; raises TrainingStopped as soon as should_stop() turns true.

    With a mixer (MixUp/CutMix) the loss uses its soft targets; accuracy counts against the hard labels.
    """
    set_train_mode(model)
    running = RunningStats(setup.device)
    steps = len(loader)
    for step, (images, targets) in enumerate(loader, 1):
        if should_stop():
            raise TrainingStopped
        x = _prepare(images, setup, prep)
        y = _to_device(targets, setup)
        target = y
        if mixer is not None:
            x, target = mixer(x, y)
        with setup.autocast():
            logits = model(x)
            loss = loss_fn(logits, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running.add(loss, logits, y)
        if on_step is not None:
            on_step(step, steps, running.seen, running.mean_loss)
    return running.finish()


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Batches,
    setup: DeviceSetup,
    prep: Preprocessing,
    num_classes: int,
    should_stop: Callable[[], bool] = lambda: False,
    keep_predictions: bool = False,
) -> MetricAccumulator:
    """Loss, accuracy and confusion matrix of model over loader (and each image's prediction, when kept)."""
    model.eval()
    acc = MetricAccumulator(num_classes, keep_predictions)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for images, targets in loader:
        if should_stop():
            raise TrainingStopped
        x = _prepare(images, setup, prep)
        y = _to_device(targets, setup)
        with setup.autocast():
            logits = model(x)
        logits = logits.float()
        acc.update(logits, y, loss_fn(logits, y))
    return acc


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    head: nn.Module,
    loader: Batches,
    setup: DeviceSetup,
    prep: Preprocessing,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs the head receives for every image of loader (and the labels), computed once."""
    model.eval()
    captured: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].float())

    handle = head.register_forward_pre_hook(grab)
    try:
        for images, targets in loader:
            if should_stop():
                raise TrainingStopped
            with setup.autocast():
                model(_prepare(images, setup, prep))
            labels.append(_to_device(targets, setup))
    finally:
        handle.remove()
    return torch.cat(captured), torch.cat(labels)


def feature_batches(
    features: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of cached features, shuffled when a generator is given."""
    n = len(labels)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(features.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield features[idx], labels[idx]


def train_head_epoch(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: nn.Module,
    batch_size: int,
    generator: torch.Generator,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: StepCallback | None = None,
) -> EpochStats:
    """One epoch of the head alone on cached backbone features."""
    head.train()
    running = RunningStats(features.device)
    steps = math.ceil(len(labels) / batch_size)
    for step, (x, y) in enumerate(feature_batches(features, labels, batch_size, generator), 1):
        if should_stop():
            raise TrainingStopped
        logits = head(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running.add(loss, logits, y)
        if on_step is not None:
            on_step(step, steps, running.seen, running.mean_loss)
    return running.finish()


@torch.inference_mode()
def evaluate_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int = 1024,
    keep_predictions: bool = False,
) -> MetricAccumulator:
    """Metrics of the head on cached features (and each image's prediction, in order, when kept)."""
    head.eval()
    acc = MetricAccumulator(num_classes, keep_predictions)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for x, y in feature_batches(features, labels, batch_size, None):
        logits = head(x).float()
        acc.update(logits, y, loss_fn(logits, y))
    return acc
