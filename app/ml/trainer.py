"""fit(): a whole fine-tuning run, from a job config and data splits to the best weights and metrics."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from app.ml.backbones import BuiltModel, build_model
from app.ml.data import ImageDataset, SampleSet, stratified_split
from app.ml.engine import (
    DeviceSetup,
    EpochStats,
    evaluate,
    evaluate_head,
    extract_features,
    train_head_epoch,
    train_one_epoch,
)
from app.ml.metrics import MetricAccumulator
from app.ml.transforms import eval_transform, train_transform

STRATEGIES = ("linear", "partial", "full")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Everything that determines a training run (the job request, validated)."""

    arch: str
    weights: str = "imagenet"
    strategy: str = "linear"
    unfreeze_stages: int = 1
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    image_size: int = 224
    augment: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    num_workers: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochReport:
    epoch: int  # 1-based
    train: EpochStats
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    seconds: float
    is_best: bool


@dataclass
class FitResult:
    best_epoch: int
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    epochs_run: int
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingHooks(Protocol):
    def should_stop(self) -> bool: ...

    def on_epoch(self, report: EpochReport, built: BuiltModel) -> None: ...


def apply_strategy(built: BuiltModel, strategy: str, unfreeze_stages: int) -> list[nn.Parameter]:
    """Freeze what the strategy keeps fixed; returns the trainable parameters."""
    head = built.head_param_names
    if strategy == "full":
        trainable_names = {n for n, _ in built.model.named_parameters()}
    elif strategy == "partial":
        if not 1 <= unfreeze_stages <= len(built.stages):
            raise ValueError(f"unfreeze_stages must be between 1 and {len(built.stages)} for this architecture")
        trainable_names = head | {n for stage in built.stages[-unfreeze_stages:] for n in stage}
    elif strategy == "linear":
        trainable_names = head
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    params = []
    for name, p in built.model.named_parameters():
        p.requires_grad_(name in trainable_names)
        if p.requires_grad:
            params.append(p)
    return params


def make_optimizer(named: list[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; norms and biases get no weight decay."""
    decay = [p for n, p in named if p.ndim > 1]
    no_decay = [p for n, p in named if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step linear warmup then cosine decay to zero (or constant)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def default_num_workers(samples: SampleSet) -> int:
    """In-memory arrays decode for free; files use every core but the one that trains."""
    if samples.arrays is not None:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def eval_batch_size(setup: DeviceSetup, batch_size: int) -> int:
    """Inference batch: large on a GPU; small on a CPU, where big activations thrash the caches (2x slower)."""
    return max(batch_size, 256) if setup.device.type == "cuda" else 16


def make_loader(
    samples: SampleSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    shuffle: bool,
    setup: DeviceSetup,
    seed: int,
    num_workers: int | None,
) -> torch.utils.data.DataLoader:
    workers = default_num_workers(samples) if num_workers is None else num_workers
    return torch.utils.data.DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=setup.device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        drop_last=False,
    )


def split_train_val(splits: dict[str, SampleSet], cfg: TrainConfig) -> tuple[SampleSet, SampleSet | None]:
    """The dataset's own val split, or a stratified val_fraction of train."""
    train = splits["train"]
    if "val" in splits:
        return train, splits["val"]
    if cfg.val_fraction <= 0:
        return train, None
    train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    if len(val_idx) == 0:
        return train, None
    return train.subset(train_idx), train.subset(val_idx)


def fit(
    cfg: TrainConfig,
    class_names: list[str],
    splits: dict[str, SampleSet],
    hooks: TrainingHooks,
    setup: DeviceSetup | None = None,
) -> FitResult:
    """Train per cfg, reporting each epoch to hooks; the best epoch (val accuracy) is evaluated on test."""
    setup = setup or DeviceSetup.for_device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    built = build_model(cfg.arch, len(class_names), cfg.weights)
    trainable = apply_strategy(built, cfg.strategy, cfg.unfreeze_stages)
    if not trainable:
        raise ValueError("the strategy leaves no trainable parameters")
    memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
    built.model.to(setup.device, memory_format=memory_format)
    train, val = split_train_val(splits, cfg)
    if cfg.strategy == "linear":
        return _fit_linear(cfg, built, class_names, train, val, splits.get("test"), hooks, setup)
    return _fit_finetune(cfg, built, class_names, train, val, splits.get("test"), hooks, setup)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _better(val: MetricAccumulator | None, train: EpochStats, best: tuple[float, float] | None) -> bool:
    # Highest val accuracy wins; lower val loss breaks ties. Without val, the training loss decides.
    return best is None or _key(val, train) > best


def _key(val: MetricAccumulator | None, train: EpochStats) -> tuple[float, float]:
    return (val.accuracy, -val.loss) if val is not None else (0.0, -train.loss)


def _fit_linear(
    cfg: TrainConfig,
    built: BuiltModel,
    class_names: list[str],
    train: SampleSet,
    val: SampleSet | None,
    test: SampleSet | None,
    hooks: TrainingHooks,
    setup: DeviceSetup,
) -> FitResult:
    """Frozen backbone: features are computed once, then only the head trains (no augmentation)."""
    prep = built.preprocessing
    tf = eval_transform(cfg.image_size, prep.interpolation)
    start = time.perf_counter()

    def features(samples: SampleSet) -> tuple[torch.Tensor, torch.Tensor]:
        loader = make_loader(
            samples, tf, eval_batch_size(setup, cfg.batch_size), False, setup, cfg.seed, cfg.num_workers
        )
        return extract_features(built.model, built.head, loader, setup, prep, hooks.should_stop)

    train_x, train_y = features(train)
    val_x, val_y = features(val) if val is not None else (None, None)
    extraction = time.perf_counter() - start

    num_classes = len(class_names)
    head = built.head
    optimizer = make_optimizer([(n, p) for n, p in head.named_parameters()], cfg)
    steps = math.ceil(len(train_y) / cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(cfg.seed)
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = _snapshot(head)
    best_epoch = 1
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        epoch_start = time.perf_counter()
        stats = train_head_epoch(
            head,
            train_x,
            train_y,
            optimizer,
            scheduler,
            loss_fn,
            cfg.batch_size,
            generator,
            hooks.should_stop,
        )
        val_acc = evaluate_head(head, val_x, val_y, num_classes) if val_x is not None else None
        seconds = time.perf_counter() - epoch_start + (extraction if epoch == 1 else 0.0)
        if epoch == 1:
            # The first epoch pays for the feature pass over the training images: count them.
            stats = EpochStats(stats.loss, stats.accuracy, stats.images, seconds)
        is_best = _better(val_acc, stats, best_key)
        if is_best:
            best_key, best_state, best_epoch = _key(val_acc, stats), _snapshot(head), epoch
        hooks.on_epoch(
            EpochReport(
                epoch=epoch,
                train=stats,
                val_loss=val_acc.loss if val_acc else None,
                val_accuracy=val_acc.accuracy if val_acc else None,
                learning_rate=lr,
                seconds=seconds,
                is_best=is_best,
            ),
            built,
        )
    head.load_state_dict(best_state)
    val_metrics = evaluate_head(head, val_x, val_y, num_classes).summary(class_names) if val_x is not None else None
    test_metrics = None
    if test is not None and len(test):
        test_x, test_y = features(test)
        test_metrics = evaluate_head(head, test_x, test_y, num_classes).summary(class_names)
    return FitResult(best_epoch, val_metrics, test_metrics, cfg.epochs)


def _fit_finetune(
    cfg: TrainConfig,
    built: BuiltModel,
    class_names: list[str],
    train: SampleSet,
    val: SampleSet | None,
    test: SampleSet | None,
    hooks: TrainingHooks,
    setup: DeviceSetup,
) -> FitResult:
    """partial / full: the unfrozen backbone stages train with the head on augmented images."""
    prep = built.preprocessing
    model = built.model
    num_classes = len(class_names)
    train_loader = make_loader(
        train,
        train_transform(cfg.image_size, prep.interpolation, cfg.augment),
        cfg.batch_size,
        True,
        setup,
        cfg.seed,
        cfg.num_workers,
    )
    eval_tf = eval_transform(cfg.image_size, prep.interpolation)
    eval_bs = eval_batch_size(setup, cfg.batch_size)
    val_loader = make_loader(val, eval_tf, eval_bs, False, setup, cfg.seed, cfg.num_workers) if val else None
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(named, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))
    scaler = torch.amp.GradScaler(setup.device.type) if setup.needs_scaler() else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    best_key: tuple[float, float] | None = None
    best_state = _snapshot(model)
    best_epoch = 1
    for epoch in range(1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        epoch_start = time.perf_counter()
        stats = train_one_epoch(
            model,
            train_loader,
            optimizer,
            scheduler,
            loss_fn,
            setup,
            prep,
            hooks.should_stop,
            scaler,
            cfg.grad_clip,
        )
        val_acc = evaluate(model, val_loader, setup, prep, num_classes, hooks.should_stop) if val_loader else None
        is_best = _better(val_acc, stats, best_key)
        if is_best:
            best_key, best_state, best_epoch = _key(val_acc, stats), _snapshot(model), epoch
        hooks.on_epoch(
            EpochReport(
                epoch=epoch,
                train=stats,
                val_loss=val_acc.loss if val_acc else None,
                val_accuracy=val_acc.accuracy if val_acc else None,
                learning_rate=lr,
                seconds=time.perf_counter() - epoch_start,
                is_best=is_best,
            ),
            built,
        )
    model.load_state_dict(best_state)
    val_metrics = evaluate(model, val_loader, setup, prep, num_classes).summary(class_names) if val_loader else None
    test_metrics = None
    if test is not None and len(test):
        test_loader = make_loader(test, eval_tf, eval_bs, False, setup, cfg.seed, cfg.num_workers)
        test_metrics = evaluate(model, test_loader, setup, prep, num_classes).summary(class_names)
    return FitResult(best_epoch, val_metrics, test_metrics, cfg.epochs)
