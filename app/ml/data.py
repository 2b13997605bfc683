"""Reading labelled images: ImageFolder trees and CIFAR-10 python batches, splits and torch datasets."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
MANIFEST = "manifest.json"
# Pillow refuses images over ~179 Mpx by default (decompression bombs); we keep that guard.
Image.MAX_IMAGE_PIXELS = 178_956_970


class DatasetFormatError(ValueError):
    """The files do not form a usable labelled image dataset; the message says why."""


def is_hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX" or part.startswith("._")


def decode_image(source: Path | bytes | Any) -> Image.Image:
    """Open and fully decode an image as RGB; raises DatasetFormatError when it is not a readable image."""
    try:
        with Image.open(source) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetFormatError(f"not a readable image ({exc.__class__.__name__}: {exc})") from exc


def check_image(path: Path) -> str | None:
    """None when path decodes as an image, else the reason it does not (JPEGs are decoded at reduced scale)."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (64, 64))
            img.load()
            if img.width < 1 or img.height < 1:
                return "empty image"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


# ---------------------------------------------------------------- CIFAR-10 python batches


def find_cifar_dir(root: Path) -> Path | None:
    """The folder under root holding CIFAR-10 python batches (batches.meta + data/test batches)."""
    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for d in candidates:
        if any(is_hidden(part) for part in d.relative_to(root).parts):
            continue
        if (d / "batches.meta").is_file() and ((d / "test_batch").is_file() or (d / "data_batch_1").is_file()):
            return d
    return None


# CIFAR batches are pickles, and uploads are untrusted: only numpy array reconstruction may be referenced.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol 2
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DatasetFormatError(f"CIFAR batch references {module}.{name}, which a data file never needs")
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def _unpickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path.name} is not a CIFAR batch (not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_cifar_meta(cifar_dir: Path) -> list[str]:
    """Class names from batches.meta."""
    try:
        meta = _unpickle(cifar_dir / "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetFormatError(f"batches.meta is unreadable: {exc}") from exc
    if len(names) < 2:
        raise DatasetFormatError("batches.meta lists fewer than 2 classes")
    return names


def read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×32×32×3, labels int64 N) from one python batch file."""
    try:
        batch = _unpickle(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{path.name} is not a readable CIFAR batch: {exc}") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetFormatError(f"{path.name}: expected N×3072 pixels and N labels, got {data.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(f"{path.name}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def cifar_split_files(cifar_dir: Path) -> dict[str, list[str]]:
    """Batch file names per split: data_batch_* train, test_batch test."""
    train = sorted(p.name for p in cifar_dir.glob("data_batch_*") if p.is_file())
    splits = {"train": train}
    if (cifar_dir / "test_batch").is_file():
        splits["test"] = ["test_batch"]
    return splits


# ---------------------------------------------------------------- ImageFolder trees


@dataclass
class FolderScan:
    """What an ImageFolder tree holds: classes, samples per split, and what could not be used."""

    class_names: list[str]
    samples: dict[str, list[tuple[str, int]]]  # split -> [(path relative to root, label)]
    invalid: list[dict[str, str]] = field(default_factory=list)


def content_root(root: Path) -> Path:
    """Descend through single wrapper folders (e.g. a zip of `mydata/`) to where classes or splits start."""
    current = root
    while True:
        entries = [p for p in current.iterdir() if not is_hidden(p.name)]
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(dirs) == 1 and not files and dirs[0].name.lower() not in SPLIT_ALIASES:
            inner = [p for p in dirs[0].iterdir() if not is_hidden(p.name) and p.is_dir()]
            if inner:
                current = dirs[0]
                continue
        return current


def scan_imagefolder(root: Path, check: bool = True) -> FolderScan:
    """Scan `<class>/<image>` or `<split>/<class>/<image>` under root; decode each image when check."""
    base = content_root(root)
    top_dirs = {p.name: p for p in base.iterdir() if p.is_dir() and not is_hidden(p.name)}
    split_dirs = {SPLIT_ALIASES[n.lower()]: p for n, p in top_dirs.items() if n.lower() in SPLIT_ALIASES}
    if split_dirs:
        if "train" not in split_dirs:
            raise DatasetFormatError(
                f"found split folders {sorted(split_dirs)} but no train/ folder with the training images"
            )
        others = sorted(set(top_dirs) - {n for n in top_dirs if n.lower() in SPLIT_ALIASES})
        if others:
            raise DatasetFormatError(f"folders {others} sit beside the split folders train/val/test")
    else:
        split_dirs = {"train": base}

    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, folder in split_dirs.items():
        classes = {p.name: p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name)}
        per_split[split] = {
            name: sorted(
                f for f in d.rglob("*") if f.is_file() and not any(is_hidden(x) for x in f.relative_to(d).parts)
            )
            for name, d in classes.items()
        }

    class_names = sorted(per_split["train"])
    if not class_names:
        raise DatasetFormatError(
            "no class folders found: expected `<class>/<image>` (optionally under train/, val/, test/)"
        )
    for split, classes in per_split.items():
        extra = sorted(set(classes) - set(class_names))
        if extra:
            raise DatasetFormatError(f"{split}/ has classes {extra} that train/ does not have")

    index = {name: i for i, name in enumerate(class_names)}
    samples: dict[str, list[tuple[str, int]]] = {}
    invalid: list[dict[str, str]] = []
    for split, classes in per_split.items():
        rows: list[tuple[str, int]] = []
        for name, files in sorted(classes.items()):
            for f in files:
                rel = str(f.relative_to(root))
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    invalid.append({"file": rel, "reason": "not an image file (by extension)"})
                    continue
                reason = check_image(f) if check else None
                if reason:
                    invalid.append({"file": rel, "reason": reason})
                    continue
                rows.append((rel, index[name]))
        if rows:
            samples[split] = rows
    if "train" not in samples:
        raise DatasetFormatError("the training split holds no readable images")
    present = {label for _, label in samples["train"]}
    if len(present) < 2:
        raise DatasetFormatError(
            f"a classifier needs at least 2 classes with images; found {len(present)} "
            f"({', '.join(class_names[i] for i in sorted(present))})"
        )
    return FolderScan(class_names=class_names, samples=samples, invalid=invalid)


# ---------------------------------------------------------------- manifests and sample sets


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest))


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / MANIFEST).read_text())


@dataclass
class SampleSet:
    """Images of one split: in-memory uint8 arrays (CIFAR) or files on disk."""

    labels: np.ndarray
    arrays: np.ndarray | None = None  # N×H×W×3 uint8
    paths: list[Path] | None = None
    decoded: list[np.ndarray] | None = None  # H×W×3 uint8 per image, when files were decoded once up front

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> SampleSet:
        idx = np.asarray(indices, dtype=np.int64)
        return SampleSet(
            labels=self.labels[idx],
            arrays=None if self.arrays is None else self.arrays[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            decoded=None if self.decoded is None else [self.decoded[i] for i in idx],
        )

    def decode_all(self, max_side: int, budget_bytes: int) -> SampleSet:
        """Decode every file once, shrunk so the shorter side is at most max_side; self if over budget."""
        if self.paths is None or self.decoded is not None:
            return self
        if len(self.paths) * max_side * max_side * 3 > budget_bytes:
            return self  # clearly too large: do not spend a decode pass finding out
        decoded: list[np.ndarray] = []
        used = 0
        for path in self.paths:
            img = decode_image(path)
            scale = max_side / min(img.size)
            if scale < 1:
                img = img.resize(
                    (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR
                )
            array = np.array(img, dtype=np.uint8)  # a writable copy, as torch wants
            used += array.nbytes
            if used > budget_bytes:
                return self
            decoded.append(array)
        return SampleSet(labels=self.labels, paths=self.paths, decoded=decoded)

    def image(self, i: int) -> torch.Tensor:
        """Image i as a uint8 C×H×W tensor."""
        if self.arrays is not None:
            return torch.from_numpy(self.arrays[i]).permute(2, 0, 1)
        if self.decoded is not None:
            return torch.from_numpy(self.decoded[i]).permute(2, 0, 1)
        assert self.paths is not None
        img = decode_image(self.paths[i])
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_splits(dataset_dir: Path) -> tuple[list[str], dict[str, SampleSet]]:
    """Class names and the sample sets of every split a stored dataset has."""
    manifest = read_manifest(dataset_dir)
    root = Path(manifest["root"])
    root = root if root.is_absolute() else dataset_dir / root
    classes: list[str] = manifest["class_names"]
    splits: dict[str, SampleSet] = {}
    if manifest["format"] == "cifar10":
        for split, files in manifest["splits"].items():
            parts = [read_cifar_batch(root / f, len(classes)) for f in files]
            splits[split] = SampleSet(
                labels=np.concatenate([p[1] for p in parts]), arrays=np.concatenate([p[0] for p in parts])
            )
    else:
        for split, rows in manifest["samples"].items():
            splits[split] = SampleSet(
                labels=np.asarray([label for _, label in rows], dtype=np.int64),
                paths=[root / rel for rel, _ in rows],
            )
    return classes, splits


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with about `fraction` of each class in val (at least one where a class has 2+)."""
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


class DeviceBatches:
    """A small, uniformly sized dataset held as one uint8 tensor on the training device.

    Batches are indexed, cropped/flipped (train) or resized (eval) there, so nothing crosses the bus per step.
    Yields float batches in [0, 255], which normalize_batch accepts like uint8 ones.
    """

    def __init__(
        self,
        samples: SampleSet,
        batch_size: int,
        image_size: int,
        device: torch.device,
        train: bool,
        augment: bool,
        seed: int,
    ) -> None:
        assert samples.arrays is not None
        self.images = torch.from_numpy(samples.arrays).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(samples.labels).to(device)
        self.batch_size, self.image_size = batch_size, image_size
        self.train, self.augment = train, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from app.ml.augment import random_resized_crop_batch, resize_batch

        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.images[idx].float()
            if self.train and self.augment:
                batch = random_resized_crop_batch(batch, self.image_size, self.generator)
            else:
                batch = resize_batch(batch, self.image_size)
            yield batch, self.labels[idx]


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """A SampleSet with a per-image transform producing uint8 C×S×S tensors."""

    def __init__(self, samples: SampleSet, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.samples.image(i)), int(self.samples.labels[i])
