"""A stored dataset's images by ref: each split's labels, where a ref lies, and one image's pixels.

Refs number the images split after split (data.ref_offsets), the numbering load_splits gives the samples a job
trains and validates on, so a validation prediction's ref finds its image here. Only the manifest names files:
a ref is an integer, and nothing a caller sends becomes a path. Every file, ImageFolder image or CIFAR batch, is
read only while it still resolves inside the dataset (`within`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image

from app.ml.data import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DatasetFormatError,
    decode_image,
    manifest_root,
    read_cifar_batch,
    read_manifest,
    ref_offsets,
)

K = TypeVar("K")
V = TypeVar("V")

# Decoded CIFAR batches kept per process: three CIFAR-10 batches (30 MB each), a page of thumbnails reads the same
# ones again. A batch larger than this (a batch file may hold up to 256 MiB) is read for one request and dropped.
BATCH_CACHE_BYTES = 96 * 1024**2


class ImageGone(DatasetFormatError):
    """The manifest names a file that is no longer there (or now leads outside the dataset)."""


@dataclass
class _Making:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0


class WeightedLRU(Generic[K, V]):
    """A thread-safe least-recently-used map bounded by the summed weight of its values.

    A value heavier than the whole capacity is never kept. get_or_make builds a missing value once however many
    threads ask for it at the same time (single flight, one lock per key): the others wait for it.
    """

    def __init__(self, capacity: int, weight: Callable[[V], int]) -> None:
        self.capacity, self.weight = capacity, weight
        self._items: OrderedDict[K, V] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()
        self._making: dict[K, _Making] = {}

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: K, value: V) -> None:
        weight = self.weight(value)
        if weight > self.capacity:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._used += weight
            while self._used > self.capacity:
                _, dropped = self._items.popitem(last=False)
                self._used -= self.weight(dropped)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def get_or_make(self, key: K, make: Callable[[], V], timeout: float = -1) -> V:
        """The value of key, made by make() when missing, by one thread at a time per key; TimeoutError when
        another thread has been making it for longer than timeout seconds (-1: wait as long as it takes)."""
        found = self.get(key)
        if found is not None:
            return found
        with self._lock:
            making = self._making.setdefault(key, _Making())
            making.waiting += 1
        try:
            if not making.lock.acquire(timeout=timeout):
                raise TimeoutError(f"still being made after {timeout:g} s")
            try:
                found = self.get(key)  # made while this thread waited
                if found is None:
                    found = make()
                    self.put(key, found)
                return found
            finally:
                making.lock.release()
        finally:
            with self._lock:
                making.waiting -= 1
                if making.waiting == 0:
                    del self._making[key]


def _batch_bytes(batch: tuple[np.ndarray, np.ndarray]) -> int:
    return batch[0].nbytes + batch[1].nbytes


# (resolved path, mtime_ns, classes) -> (images, labels) of a CIFAR batch, shared by the indexes of this process.
_batches: WeightedLRU[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = WeightedLRU(
    BATCH_CACHE_BYTES, _batch_bytes
)


def _read_batch(real: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR batch's (images, labels) from its resolved path, read once for concurrent callers."""
    try:
        mtime = real.stat().st_mtime_ns
    except OSError:
        raise ImageGone(f"{real.name} is missing") from None
    return _batches.get_or_make((str(real), mtime, num_classes), lambda: read_cifar_batch(real, num_classes))


class DatasetImages:
    """The images of one stored dataset (its folder holds manifest.json), addressed by ref.

    Files are read only while they resolve inside `within` (default: the dataset's root). Keeps labels only:
    a CIFAR batch's pixels are read again (through a byte-bounded cache) when an image of it is asked for.
    """

    def __init__(self, dataset_dir: Path, within: Path | None = None) -> None:
        manifest: dict[str, Any] = read_manifest(dataset_dir)
        self.root = manifest_root(dataset_dir, manifest)
        self.within = (within or self.root).resolve()
        self.format: str = manifest["format"]
        self.class_names: list[str] = manifest["class_names"]
        self._labels: dict[str, np.ndarray] = {}
        self._files: dict[str, list[tuple[str, int]]] = {}  # split -> (file, images) of a CIFAR split
        self._paths: dict[str, list[str]] = {}  # split -> relative path per image of an ImageFolder split
        if self.format == "cifar10":
            for split, files in manifest["splits"].items():
                labels = [self._batch(f)[1] for f in files]
                self._files[split] = [(f, len(lab)) for f, lab in zip(files, labels, strict=True)]
                self._labels[split] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        else:
            for split, rows in manifest["samples"].items():
                self._paths[split] = [rel for rel, _ in rows]
                self._labels[split] = np.asarray([label for _, label in rows], dtype=np.int64)
        self.offsets = ref_offsets({split: len(labels) for split, labels in self._labels.items()})
        self.size = sum(len(labels) for labels in self._labels.values())
        # Each class's positions in each split, found once: a stable argsort keeps them in ref order, and class
        # i's are order[bounds[i]:bounds[i + 1]].
        self._by_class: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split, split_labels in self._labels.items():
            counts = np.bincount(split_labels, minlength=len(self.class_names))
            bounds = np.concatenate([[0], np.cumsum(counts)])
            self._by_class[split] = (np.argsort(split_labels, kind="stable"), bounds)

    @property
    def splits(self) -> list[str]:
        return list(self.offsets)

    def labels(self, split: str) -> np.ndarray:
        """The class index of each image of split, in ref order (the split's first ref is offsets[split])."""
        return self._labels[split]

    def class_positions(self, split: str, class_index: int) -> np.ndarray:
        """The positions in split of the images of one class, ascending (their refs are offsets[split] + these)."""
        order, bounds = self._by_class[split]
        return order[bounds[class_index] : bounds[class_index + 1]]

    def locate(self, ref: int) -> tuple[str, int] | None:
        """(split, position in it) of ref; None when the dataset has no such image."""
        for split, start in self.offsets.items():
            if start <= ref < start + len(self._labels[split]):
                return split, ref - start
        return None

    def _inside(self, relative: str, what: str) -> Path:
        """The file the manifest names, resolved; ImageGone when it is missing or no longer a file inside
        `within` (a link swapped in since the dataset was indexed)."""
        try:
            real = (self.root / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ImageGone(f"{what} is missing") from None
        if not real.is_relative_to(self.within) or not real.is_file():
            raise ImageGone(f"{what} is no longer a file inside the dataset")
        return real

    def _batch(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _read_batch(self._inside(name, name), len(self.class_names))

    def image(self, ref: int, max_side: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
        """Image ref as RGB, its longer side shrunk to at most max_side (never enlarged).

        A file is decoded with the project's limits (header checked against max_pixels first), and only when it
        still resolves inside `within`. Raises KeyError for an unknown ref, ImageGone, ImageTooLarge or
        UnreadableImage.
        """
        found = self.locate(ref)
        if found is None:
            raise KeyError(ref)
        split, position = found
        if self.format == "cifar10":
            for name, count in self._files[split]:
                if position < count:
                    images, _ = self._batch(name)
                    if position >= len(images):  # the batch changed since it was indexed
                        raise ImageGone(f"image {ref} is missing from {name}")
                    img = Image.fromarray(images[position])
                    break
                position -= count
            else:
                raise ImageGone(f"image {ref} is missing")
        else:
            real = self._inside(self._paths[split][position], f"image {ref}")
            img = decode_image(real, max_pixels, max_side=max_side, draft_side=max_side)
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
        return img
