"""fit(): a whole fine-tuning run, from a job config and data splits to the best weights and metrics."""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from app.ml.augment import DEVICE_AUGMENTATIONS, BatchMixer, train_transform
from app.ml.backbones import BuiltModel, build_model
from app.ml.config import TrainConfig
from app.ml.data import DeviceBatches, ImageDataset, SampleSet, stratified_split
from app.ml.engine import (
    DeviceSetup,
    EpochStats,
    evaluate,
    evaluate_head,
    extract_features,
    train_head_epoch,
    train_one_epoch,
)
from app.ml.flops import forward_flops, peak_flops, training_flops_multiplier
from app.ml.metrics import MetricAccumulator
from app.ml.optim import EarlyStopping, class_weights, make_optimizer, make_scheduler, stage_depths
from app.ml.strategies import apply_strategy
from app.ml.transforms import eval_transform

# Small datasets are decoded once and kept in memory (per job) up to this many bytes.
DECODED_CACHE_BYTES = 2 * 1024**3
# A uniformly sized dataset up to this size lives on the GPU, augmented there.
DEVICE_RESIDENT_BYTES = 4 * 1024**3


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
class FitResult:
    best_epoch: int
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    epochs_run: int
    baseline: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    flops_per_image: float | None = None
    resumed_from: int | None = None  # set when this run continued a checkpointed one after that epoch


TrainingState = dict[str, Any]


class TrainingHooks(Protocol):
    def should_stop(self) -> bool: ...

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

    def on_epoch(self, report: EpochReport, built: BuiltModel, state: Callable[[], TrainingState]) -> None:
        return None

    def resume_state(self) -> TrainingState | None:
        return None

    def saved_baseline(self) -> dict[str, Any] | None:
        return None

    def on_baseline(self, baseline: dict[str, Any]) -> None:
        return None


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream training draws from: torch (CPU, CUDA), numpy, python, and the job's generators."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what capture_rng() took, so a resumed run draws the same numbers as an uninterrupted one."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for key, g in generators.items():
        if key in state["generators"]:
            g.set_state(state["generators"][key])


def default_num_workers(samples: SampleSet) -> int:
    """In-memory arrays need no workers; decoding and per-image transforms use every core but one."""
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
        # Fresh workers each epoch, seeded from `generator`: a resumed job then augments exactly as an
        # uninterrupted one (persistent workers would carry their random state across epochs).
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def device_resident(samples: SampleSet, setup: DeviceSetup, augmentation: str) -> bool:
    """Whether samples can live on the device with augmentation there (square arrays, small, simple preset)."""
    arrays = samples.arrays
    return (
        setup.device.type == "cuda"
        and arrays is not None
        and arrays.shape[1] == arrays.shape[2]
        and arrays.nbytes <= DEVICE_RESIDENT_BYTES
        and augmentation in DEVICE_AUGMENTATIONS
    )


def batches(
    samples: SampleSet, cfg: TrainConfig, setup: DeviceSetup, train: bool, interpolation: str
) -> torch.utils.data.DataLoader | DeviceBatches:
    """Training or evaluation batches of uint8 (or 0-255 float) images at cfg.image_size."""
    augmentation = cfg.augmentation if train else "none"
    size = cfg.batch_size if train else eval_batch_size(setup, cfg.batch_size)
    if device_resident(samples, setup, augmentation):
        return DeviceBatches(samples, size, cfg.image_size, setup.device, train, augmentation != "none", cfg.seed)
    transform = (
        train_transform(cfg.image_size, augmentation, interpolation)
        if train
        else eval_transform(cfg.image_size, interpolation)
    )
    return make_loader(samples, transform, size, train, setup, cfg.seed, cfg.num_workers)


def loader_generators(source: torch.utils.data.DataLoader | DeviceBatches) -> dict[str, torch.Generator]:
    """The generator that orders (and, on the device, augments) training batches, for resuming."""
    generator = getattr(source, "generator", None)
    return {"batches": generator} if isinstance(generator, torch.Generator) else {}


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


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _key(val: MetricAccumulator | None, train: EpochStats) -> tuple[float, float]:
    # Highest val accuracy wins; lower val loss breaks ties. Without val, the training loss decides.
    return (val.accuracy, -val.loss) if val is not None else (0.0, -train.loss)


@dataclass
class _Loop:
    """The epoch loop both paths share: best tracking, early stopping, reporting, FLOP accounting."""

    cfg: TrainConfig
    built: BuiltModel
    hooks: TrainingHooks
    state_of: nn.Module  # the module whose weights define "best" (the head alone for linear)
    flops_per_image: float | None
    peak: float | None
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    best_epoch: int = 1
    epochs_run: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None  # the epoch a resumed attempt continued after

    def run(
        self,
        optimizer: torch.optim.Optimizer,
        train_step: Callable[[], EpochStats],
        validate: Callable[[], MetricAccumulator | None],
        extra_seconds: Callable[[int], float] = lambda _epoch: 0.0,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        scaler: torch.amp.GradScaler | None = None,
        generators: dict[str, torch.Generator] | None = None,
    ) -> None:
        generators = generators or {}
        stopper = EarlyStopping(self.cfg.early_stopping_patience, self.cfg.early_stopping_min_delta)
        self.best_state = _snapshot(self.state_of)
        first = 1
        resume = self.hooks.resume_state()
        if resume is not None:
            first = self._restore(resume, optimizer, scheduler, scaler, stopper, generators) + 1

        def state(epoch: int) -> Callable[[], TrainingState]:
            return lambda: {
                "epoch": epoch,
                "step": scheduler.last_epoch if scheduler is not None else None,
                "stopped_early": self.stopped_early,
                "model": self.state_of.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "best_key": list(self.best_key) if self.best_key is not None else None,
                "best_epoch": self.best_epoch,
                # The best weights are the model's own when this epoch is the best (saves a copy on disk).
                "best_state": None if self.best_epoch == epoch else self.best_state,
                "stopper": [stopper.best, stopper.stale],
                "rng": capture_rng(generators),
            }

        for epoch in range(first, self.cfg.epochs + 1):
            if self.stopped_early:
                break
            lr = max(group["lr"] for group in optimizer.param_groups)
            start = time.perf_counter()
            stats = train_step()
            val = validate()
            seconds = time.perf_counter() - start + extra_seconds(epoch)
            stats = EpochStats(stats.loss, stats.accuracy, stats.images, seconds)
            key = _key(val, stats)
            is_best = self.best_key is None or key > self.best_key
            if is_best:
                self.best_key, self.best_state, self.best_epoch = key, _snapshot(self.state_of), epoch
            tflops = mfu = None
            if self.flops_per_image:
                achieved = self.flops_per_image * training_flops_multiplier(self.cfg.strategy)
                tflops = achieved * stats.images_per_second / 1e12
                mfu = tflops * 1e12 / self.peak if self.peak else None
            self.epochs_run = epoch
            self.stopped_early = stopper.update(val.accuracy if val else None)
            self.hooks.on_epoch(
                EpochReport(
                    epoch,
                    stats,
                    val.loss if val else None,
                    val.accuracy if val else None,
                    lr,
                    seconds,
                    is_best,
                    tflops,
                    mfu,
                ),
                self.built,
                state(epoch),
            )
        self.state_of.load_state_dict(self.best_state)

    def _restore(
        self,
        resume: TrainingState,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        scaler: torch.amp.GradScaler | None,
        stopper: EarlyStopping,
        generators: dict[str, torch.Generator],
    ) -> int:
        """Load a training state saved at the end of an epoch; returns that epoch."""
        self.state_of.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume["scheduler"] is not None:
            scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume["scaler"] is not None:
            scaler.load_state_dict(resume["scaler"])
        epoch = int(resume["epoch"])
        self.best_key = tuple(resume["best_key"]) if resume["best_key"] is not None else None  # type: ignore[assignment]
        self.best_epoch = int(resume["best_epoch"])
        best = resume["best_state"]
        self.best_state = _snapshot(self.state_of) if best is None else best
        stopper.best, stopper.stale = float(resume["stopper"][0]), int(resume["stopper"][1])
        restore_rng(resume["rng"], generators)
        self.epochs_run = epoch
        self.stopped_early = bool(resume["stopped_early"])
        self.resumed_from = epoch
        return epoch


def fit(
    cfg: TrainConfig,
    class_names: list[str],
    splits: dict[str, SampleSet],
    hooks: TrainingHooks,
    setup: DeviceSetup | None = None,
) -> FitResult:
    """Train per cfg, reporting each epoch to hooks; the best epoch (val accuracy) is evaluated on val and test."""
    setup = setup or DeviceSetup.for_device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    built = build_model(cfg.arch, len(class_names), cfg.weights)
    memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
    built.model.to(setup.device, memory_format=memory_format)
    flops = forward_flops(built.model, cfg.image_size, setup.device)
    train, val = split_train_val(splits, cfg)
    test = splits.get("test")
    max_side = math.ceil(cfg.image_size * 1.15)
    train = train.decode_all(max_side, DECODED_CACHE_BYTES)
    val = val.decode_all(max_side, DECODED_CACHE_BYTES) if val is not None else None
    test = test.decode_all(max_side, DECODED_CACHE_BYTES) if test is not None else None
    if cfg.strategy == "linear":
        result = _fit_linear(cfg, built, class_names, train, val, test, hooks, setup, flops)
    else:
        baseline = hooks.saved_baseline()
        features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if baseline is None:
            baseline, features = _baseline(cfg, built, class_names, train, val, test, hooks, setup)
            hooks.on_baseline(baseline)
        if cfg.probe_epochs and hooks.resume_state() is None:  # a resumed job restores its trained head
            _probe_before_finetuning(cfg, built, train, features.get("train"), hooks, setup, len(class_names))
        del features  # fine-tuning works on images, not on cached features
        result = _fit_finetune(cfg, built, class_names, train, val, test, hooks, setup, flops)
        result.baseline = baseline
    result.flops_per_image = flops
    return result


def _features(
    built: BuiltModel, samples: SampleSet, cfg: TrainConfig, setup: DeviceSetup, hooks: TrainingHooks
) -> tuple[torch.Tensor, torch.Tensor]:
    loader = batches(samples, cfg, setup, False, built.preprocessing.interpolation)
    return extract_features(built.model, built.head, loader, setup, built.preprocessing, hooks.should_stop)


def _probe_head(
    head: nn.Module, train: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, num_classes: int, epochs: int
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A copy of the fresh head trained for `epochs` on cached features (the linear-probe pass)."""
    probe = copy.deepcopy(head)
    optimizer = make_optimizer(list(probe.named_parameters()), cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        train_head_epoch(probe, train[0], train[1], optimizer, None, loss_fn, cfg.batch_size, generator)
    return probe, optimizer


def _probe_before_finetuning(
    cfg: TrainConfig,
    built: BuiltModel,
    train: SampleSet,
    train_features: tuple[torch.Tensor, torch.Tensor] | None,
    hooks: TrainingHooks,
    setup: DeviceSetup,
    num_classes: int,
) -> None:
    """LP-FT: train the fresh head for cfg.probe_epochs on the frozen backbone's features (computed here unless
    the before-fine-tuning pass already did), so that fine-tuning starts from a trained head."""
    features = train_features or _features(built, train, cfg, setup, hooks)
    probe, _ = _probe_head(built.head, features, cfg, num_classes, cfg.probe_epochs)
    built.head.load_state_dict(probe.state_dict())


def _summaries(
    evaluate_split: Callable[[Any], MetricAccumulator], class_names: list[str], **splits: Any
) -> dict[str, Any]:
    return {name: evaluate_split(data).summary(class_names) for name, data in splits.items() if data is not None}


NOT_APPLICABLE = {"status": "not applicable", "reason": "the backbone has no pretrained weights (weights: none)"}


def _baseline(
    cfg: TrainConfig,
    built: BuiltModel,
    class_names: list[str],
    train: SampleSet,
    val: SampleSet | None,
    test: SampleSet | None,
    hooks: TrainingHooks,
    setup: DeviceSetup,
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Metrics before fine-tuning: the pretrained backbone with a fresh head after one linear-probe pass.

    Also returns the backbone features it computed per split (empty when it measured nothing), for reuse.
    """
    if cfg.weights == "none":
        return NOT_APPLICABLE, {}
    if not cfg.baseline:
        return {"status": "skipped", "reason": "baseline: false"}, {}
    n = len(class_names)
    feats = {
        name: _features(built, s, cfg, setup, hooks)
        for name, s in (("train", train), ("val", val), ("test", test))
        if s is not None
    }
    probe, _ = _probe_head(built.head, feats["train"], cfg, n, epochs=1)
    return {
        "status": "measured",
        **_summaries(
            lambda f: evaluate_head(probe, f[0], f[1], n), class_names, val=feats.get("val"), test=feats.get("test")
        ),
    }, feats


def _fit_linear(
    cfg: TrainConfig,
    built: BuiltModel,
    class_names: list[str],
    train: SampleSet,
    val: SampleSet | None,
    test: SampleSet | None,
    hooks: TrainingHooks,
    setup: DeviceSetup,
    flops: float | None,
) -> FitResult:
    """Frozen backbone: features are computed once, then only the head trains (no augmentation)."""
    apply_strategy(built, "linear")
    n = len(class_names)
    start = time.perf_counter()
    train_x, train_y = _features(built, train, cfg, setup, hooks)
    val_f = _features(built, val, cfg, setup, hooks) if val is not None else None
    extraction = time.perf_counter() - start

    head = built.head
    initial_head = copy.deepcopy(head)  # the fresh head, for the before-fine-tuning probe
    optimizer = make_optimizer(list(head.named_parameters()), cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(len(train_y) / cfg.batch_size))
    weights = class_weights(train.labels, n, cfg.class_weighting)
    loss_fn = nn.CrossEntropyLoss(
        weight=weights.to(setup.device) if weights is not None else None, label_smoothing=cfg.label_smoothing
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    # The feature pass is the real work of a linear probe: its time is counted in the first epoch.
    loop = _Loop(cfg, built, hooks, head, None, None)
    loop.run(
        optimizer,
        lambda: train_head_epoch(
            head, train_x, train_y, optimizer, scheduler, loss_fn, cfg.batch_size, generator, hooks.should_stop
        ),
        lambda: evaluate_head(head, val_f[0], val_f[1], n) if val_f is not None else None,
        extra_seconds=lambda epoch: extraction if epoch == 1 else 0.0,
        scheduler=scheduler,
        generators={"head": generator},
    )
    test_f = _features(built, test, cfg, setup, hooks) if test is not None and len(test) else None
    metrics = _summaries(lambda f: evaluate_head(head, f[0], f[1], n), class_names, val=val_f, test=test_f)
    baseline = NOT_APPLICABLE
    if cfg.weights != "none":
        probe, _ = _probe_head(initial_head, (train_x, train_y), cfg, n, epochs=1)
        baseline = {
            "status": "measured",
            **_summaries(lambda f: evaluate_head(probe, f[0], f[1], n), class_names, val=val_f, test=test_f),
        }
    return FitResult(
        loop.best_epoch,
        metrics.get("val"),
        metrics.get("test"),
        loop.epochs_run,
        baseline,
        loop.stopped_early,
        resumed_from=loop.resumed_from,
    )


def _fit_finetune(
    cfg: TrainConfig,
    built: BuiltModel,
    class_names: list[str],
    train: SampleSet,
    val: SampleSet | None,
    test: SampleSet | None,
    hooks: TrainingHooks,
    setup: DeviceSetup,
    flops: float | None,
) -> FitResult:
    """partial / full / lora: the backbone (or its adapters) train with the head on augmented images."""
    n = len(class_names)
    trainable = apply_strategy(built, cfg.strategy, cfg.unfreeze_stages, cfg.lora_rank, cfg.lora_alpha)
    if not trainable:
        raise ValueError("the strategy leaves no trainable parameters")
    prep = built.preprocessing
    model = built.model
    runner: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    train_batches = batches(train, cfg, setup, True, prep.interpolation)
    val_batches = batches(val, cfg, setup, False, prep.interpolation) if val is not None else None
    depths = None if built.lora else stage_depths(built)
    optimizer = make_optimizer([(nm, p) for nm, p in model.named_parameters() if p.requires_grad], cfg, depths)
    scheduler = make_scheduler(optimizer, cfg, len(train_batches))
    scaler = torch.amp.GradScaler(setup.device.type) if setup.needs_scaler() else None
    weights = class_weights(train.labels, n, cfg.class_weighting)
    loss_fn = nn.CrossEntropyLoss(
        weight=weights.to(setup.device) if weights is not None else None, label_smoothing=cfg.label_smoothing
    )
    mixer = BatchMixer(n, cfg.mixup_prob, cfg.cutmix_prob, torch.Generator().manual_seed(cfg.seed + 1))
    loop = _Loop(cfg, built, hooks, model, flops, peak_flops(setup.device, setup.amp_dtype is not None))
    loop.run(
        optimizer,
        lambda: train_one_epoch(
            runner,
            train_batches,
            optimizer,
            scheduler,
            loss_fn,
            setup,
            prep,
            hooks.should_stop,
            scaler,
            cfg.grad_clip,
            mixer if mixer.active else None,
        ),
        lambda: evaluate(runner, val_batches, setup, prep, n, hooks.should_stop) if val_batches else None,
        scheduler=scheduler,
        scaler=scaler,
        generators={"mixer": mixer.generator, **loader_generators(train_batches)},
    )
    test_batches = batches(test, cfg, setup, False, prep.interpolation) if test is not None and len(test) else None
    metrics = _summaries(lambda b: evaluate(runner, b, setup, prep, n), class_names, val=val_batches, test=test_batches)
    return FitResult(
        loop.best_epoch,
        metrics.get("val"),
        metrics.get("test"),
        loop.epochs_run,
        stopped_early=loop.stopped_early,
        resumed_from=loop.resumed_from,
    )
