"""The job's data as batches: train/val splits, images decoded once when they fit, DataLoaders or batches that
live on the training device, and the generators that order them (checkpointed for an exact resume)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.ml.augment import DEVICE_AUGMENTATIONS, train_transform
from app.ml.config import TrainConfig
from app.ml.data import DeviceBatches, ImageDataset, SampleSet, stratified_split
from app.ml.engine import Batches, DeviceSetup
from app.ml.transforms import eval_transform

# Small datasets are decoded once and kept in memory (per job) up to this many bytes.
DECODED_CACHE_BYTES = 2 * 1024**3
# A uniformly sized dataset up to this size lives on the GPU, augmented there.
DEVICE_RESIDENT_BYTES = 4 * 1024**3


@dataclass
class Splits:
    """The images a run uses: train, and val and test when there are any."""

    train: SampleSet
    val: SampleSet | None
    test: SampleSet | None


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


def decoded_splits(splits: dict[str, SampleSet], cfg: TrainConfig) -> Splits:
    """Train, val (held out of train when the dataset has none) and test, decoded once if they fit in memory."""
    train, val = split_train_val(splits, cfg)
    test = splits.get("test")
    max_side = math.ceil(cfg.image_size * 1.15)
    return Splits(
        train.decode_all(max_side, DECODED_CACHE_BYTES),
        val.decode_all(max_side, DECODED_CACHE_BYTES) if val is not None else None,
        test.decode_all(max_side, DECODED_CACHE_BYTES) if test is not None else None,
    )


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
) -> torch.utils.data.DataLoader[tuple[torch.Tensor, int]]:
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


def batches(samples: SampleSet, cfg: TrainConfig, setup: DeviceSetup, train: bool, interpolation: str) -> Batches:
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


def loader_generators(source: Batches) -> dict[str, torch.Generator]:
    """The generator that orders (and, on the device, augments) training batches, for resuming."""
    generator = getattr(source, "generator", None)
    return {"batches": generator} if isinstance(generator, torch.Generator) else {}
