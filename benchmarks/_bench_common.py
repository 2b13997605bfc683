"""What benchmarks/finetune_cifar.py and its plain loops share: CIFAR-10 files and the result of one run."""

from __future__ import annotations

import os
import pickle
import shutil
import statistics
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.data import read_cifar_batch, read_cifar_meta

# ---------------------------------------------------------------- results


@dataclass
class EpochTiming:
    """One epoch as either side reports it; seconds cover the training pass and the validation pass."""

    epoch: int
    seconds: float
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    images_per_second: float | None = None
    train_seconds: float | None = None  # plain loop only: the training pass alone
    val_seconds: float | None = None  # plain loop only: the pass over the hold-out


@dataclass
class RunResult:
    """One side (service job or plain loop) of one scenario."""

    scenario: str
    side: str  # "service" | "plain"
    strategy: str
    image_size: int
    epochs: list[EpochTiming]
    total_seconds: float
    test_accuracy: float | None
    baseline_test_accuracy: float | None = None  # before fine-tuning (service, when measured)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch_seconds(self) -> list[float]:
        return [e.seconds for e in self.epochs]

    @property
    def mean_epoch_seconds(self) -> float | None:
        return statistics.fmean(self.epoch_seconds) if self.epochs else None

    @property
    def first_epoch_seconds(self) -> float | None:
        return self.epochs[0].seconds if self.epochs else None

    @property
    def later_epochs_mean_seconds(self) -> float | None:
        later = self.epoch_seconds[1:]
        return statistics.fmean(later) if later else None

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "side": self.side,
            "strategy": self.strategy,
            "image_size": self.image_size,
            "epochs": [asdict(e) for e in self.epochs],
            "mean_epoch_seconds": self.mean_epoch_seconds,
            "first_epoch_seconds": self.first_epoch_seconds,
            "later_epochs_mean_seconds": self.later_epochs_mean_seconds,
            "total_seconds": self.total_seconds,
            "test_accuracy": self.test_accuracy,
            "baseline_test_accuracy": self.baseline_test_accuracy,
            **self.extra,
        }


def load_average() -> float:
    """The 1-minute load average: other processes on the machine make every timing here noisy."""
    return os.getloadavg()[0]


# ---------------------------------------------------------------- CIFAR-10 python batches


@dataclass
class CifarData:
    class_names: list[str]
    train_images: np.ndarray  # N×32×32×3 uint8
    train_labels: np.ndarray  # N int64
    test_images: np.ndarray
    test_labels: np.ndarray


def load_cifar(cifar_dir: Path) -> CifarData:
    """All training batches concatenated (sorted by name, as the service does), and the test batch."""
    classes = read_cifar_meta(cifar_dir)
    train = [read_cifar_batch(p, len(classes)) for p in sorted(cifar_dir.glob("data_batch_*"))]
    if not train:
        raise FileNotFoundError(f"no data_batch_* files in {cifar_dir}")
    test_images, test_labels = read_cifar_batch(cifar_dir / "test_batch", len(classes))
    return CifarData(
        class_names=classes,
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
    )


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray, batch_label: str) -> None:
    """A CIFAR-10 python batch: N×3072 uint8 rows, channel-planar (all R, then G, then B)."""
    planar = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32))
    batch = {b"batch_label": batch_label.encode(), b"data": planar, b"labels": [int(x) for x in labels]}
    # Protocol 4: numpy arrays pickle as _reconstruct + raw bytes, which the service's restricted unpickler
    # accepts (protocol 2 goes through _codecs.encode and protocol 5 through _frombuffer: both refused).
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=4)


def write_subset_dir(source: Path, dest: Path, train_limit: int, test_limit: int) -> Path:
    """A cifar-10-batches-py folder under dest with the first train_limit / test_limit images of source."""
    data = load_cifar(source)
    target = dest / "cifar-10-batches-py"
    target.mkdir(parents=True)
    shutil.copyfile(source / "batches.meta", target / "batches.meta")
    write_cifar_batch(
        target / "data_batch_1", data.train_images[:train_limit], data.train_labels[:train_limit], "subset train"
    )
    write_cifar_batch(
        target / "test_batch", data.test_images[:test_limit], data.test_labels[:test_limit], "subset test"
    )
    return target


def tar_cifar_dir(cifar_dir: Path, archive: Path) -> Path:
    """A .tar.gz of the batch files under cifar-10-batches-py/, the layout users upload."""
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(cifar_dir.iterdir()):
            if p.is_file():
                tf.add(p, arcname=f"cifar-10-batches-py/{p.name}")
    return archive
