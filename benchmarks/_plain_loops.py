"""The plain PyTorch loops the service is measured against: what a careful tutorial writes, nothing more.

Each loop takes the job request of its service twin (model, strategy, stages, image size, epochs, batch size,
learning rate, augmentation, label smoothing, seed, hold-out fraction) and trains the same thing the textbook
way: a ``Dataset`` that runs torchvision transforms on a PIL image per item, a ``DataLoader`` in the main
process, fp32 NCHW tensors, AdamW on the trainable parameters at a constant learning rate with torch's default
weight decay, CrossEntropy. Every epoch is a training pass followed by an accuracy pass over the hold-out, and
the model after the last epoch is scored on the test batch.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from app.ml.architectures.base import BuiltModel
from app.ml.augment import CROP_RATIO, CROP_SCALE
from app.ml.backbones import build_model
from app.ml.data import stratified_split
from app.schemas import JobCreate
from benchmarks._bench_common import EpochTiming, RunResult, load_average, load_cifar

PLAIN_STRATEGIES = ("linear", "partial", "full")
PLAIN_AUGMENTATIONS = ("none", "basic")

log = logging.getLogger("visiontune.bench.plain")

Transform = Callable[[np.ndarray], torch.Tensor]


class CifarArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """In-memory CIFAR images with a per-item torchvision transform, as in the tutorials."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    return transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.Resize(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def train_transform(image_size: int, augmentation: str, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """'none': the eval transform; 'basic': random resized crop (the service's scale and ratio) + flip."""
    if augmentation == "none":
        return eval_transform(image_size, mean, std)
    return transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.RandomResizedCrop(image_size, scale=CROP_SCALE, ratio=CROP_RATIO),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def check_supported(req: JobCreate) -> None:
    """The plain loop reproduces these strategies and presets only; refuse the rest before anything runs."""
    if req.strategy not in PLAIN_STRATEGIES:
        raise ValueError(f"the plain loop has no {req.strategy!r} strategy (only {', '.join(PLAIN_STRATEGIES)})")
    if req.strategy != "linear" and req.augmentation not in PLAIN_AUGMENTATIONS:
        raise ValueError(f"the plain loop has no {req.augmentation!r} augmentation")


def trainable_names(built: BuiltModel, strategy: str, unfreeze_stages: int) -> set[str]:
    """The head; plus the last unfreeze_stages backbone stages (partial); or everything (full)."""
    head = built.head_param_names
    if strategy == "linear":
        return head
    if strategy == "partial":
        return head | {name for stage in built.stages[-unfreeze_stages:] for name in stage}
    return {name for name, _ in built.model.named_parameters()}


def set_trainable(model: nn.Module, names: set[str]) -> list[nn.Parameter]:
    """requires_grad only on names; returns those parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return [p for p in model.parameters() if p.requires_grad]


def set_mode(built: BuiltModel, strategy: str) -> None:
    """linear: the frozen backbone in eval mode and the head in train mode; otherwise model.train().

    For the linear probe this is what a careful tutorial does: with a bare model.train() the frozen BatchNorm
    layers normalise with batch statistics and their running statistics drift towards upsampled CIFAR.
    """
    if strategy == "linear":
        built.model.eval()
        built.head.train()
    else:
        built.model.train()


def train_epoch(
    built: BuiltModel, strategy: str, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module
) -> tuple[float, float, int]:
    """(mean loss, accuracy, images) of one training pass."""
    set_mode(built, strategy)
    model = built.model
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        logits = model(images)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen


def evaluate_accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            seen += len(labels)
    return correct / max(seen, 1)


def make_loader(dataset: CifarArrayDataset, batch_size: int, shuffle: bool, seed: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def run_plain(req: JobCreate, scenario: str, cifar_dir: Path, num_workers: int = 0) -> RunResult:
    """The loop for req's model and recipe; the total covers reading the data, building the model, every
    epoch (training + hold-out pass) and the test pass, like the service job's run() wall time.

    It trains on the same stratified 90% of the training images as the service and checks accuracy on the same
    10% hold-out every epoch, so both sides do the same work per epoch (the service picks its best epoch on
    that hold-out; the plain loop simply keeps the last one).
    """
    check_supported(req)
    load_before = load_average()
    start = time.perf_counter()
    torch.manual_seed(req.seed)
    data = load_cifar(cifar_dir)
    train_idx, val_idx = stratified_split(data.train_labels, req.val_fraction, req.seed)
    built = build_model(req.arch, len(data.class_names), req.weights)
    names = trainable_names(built, req.strategy, req.unfreeze_stages)
    params = set_trainable(built.model, names)
    mean, std = built.preprocessing.mean, built.preprocessing.std
    train_tf = train_transform(req.image_size, "none" if req.strategy == "linear" else req.augmentation, mean, std)
    eval_tf = eval_transform(req.image_size, mean, std)

    def loader(images: np.ndarray, labels: np.ndarray, tf: Transform, shuffle: bool) -> DataLoader:
        return make_loader(CifarArrayDataset(images, labels, tf), req.batch_size, shuffle, req.seed, num_workers)

    train_loader = loader(data.train_images[train_idx], data.train_labels[train_idx], train_tf, True)
    val_loader = (
        loader(data.train_images[val_idx], data.train_labels[val_idx], eval_tf, False) if len(val_idx) else None
    )
    test_loader = loader(data.test_images, data.test_labels, eval_tf, False)
    optimizer = torch.optim.AdamW(params, lr=req.learning_rate)  # constant lr, torch's default weight decay
    loss_fn = nn.CrossEntropyLoss(label_smoothing=req.label_smoothing)

    epochs = [
        _timed_epoch(epoch, req, scenario, built, train_loader, val_loader, optimizer, loss_fn)
        for epoch in range(1, req.epochs + 1)
    ]
    test_start = time.perf_counter()
    accuracy = evaluate_accuracy(built.model, test_loader)
    test_seconds = time.perf_counter() - test_start
    total = time.perf_counter() - start
    extra: dict[str, Any] = {
        "test_seconds": test_seconds,
        "test_count": len(data.test_labels),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "trainable_parameters": sum(p.numel() for p in params),
        "optimizer": f"AdamW lr {req.learning_rate} constant, weight decay 0.01 (torch default)",
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    del built, optimizer, params
    gc.collect()
    return RunResult(scenario, "plain", req.strategy, req.image_size, epochs, total, accuracy, None, extra)


def _timed_epoch(
    epoch: int,
    req: JobCreate,
    scenario: str,
    built: BuiltModel,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
) -> EpochTiming:
    start = time.perf_counter()
    loss, accuracy, seen = train_epoch(built, req.strategy, train_loader, optimizer, loss_fn)
    train_seconds = time.perf_counter() - start
    val_accuracy = evaluate_accuracy(built.model, val_loader) if val_loader is not None else None
    seconds = time.perf_counter() - start
    log.info(
        "plain %s: epoch %d/%d in %.1f s (train %.1f s, train acc %.3f, val acc %s)",
        scenario,
        epoch,
        req.epochs,
        seconds,
        train_seconds,
        accuracy,
        "-" if val_accuracy is None else f"{val_accuracy:.3f}",
    )
    return EpochTiming(
        epoch=epoch,
        seconds=seconds,
        train_loss=loss,
        train_accuracy=accuracy,
        val_accuracy=val_accuracy,
        images_per_second=seen / max(seconds, 1e-9),
        train_seconds=train_seconds,
        val_seconds=seconds - train_seconds,
    )
