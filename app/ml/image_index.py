"""A stored dataset's images by ref: each split's labels, where a ref lies, and one image's pixels.

Refs number the images split after split (data.ref_offsets), the numbering load_splits gives the samples a job
trains and validates on, so a validation prediction's ref finds its image here. Only the manifest names files:
a ref is an integer, and nothing a caller sends becomes a path.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

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


class ImageGone(DatasetFormatError):
    """The manifest names a file that is no longer there (or now leads outside the dataset)."""


@lru_cache(maxsize=3)
def _cifar_batch(path: str, mtime_ns: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR batch's (images, labels), the last few kept: a page of thumbnails reads the same batch again."""
    return read_cifar_batch(Path(path), num_classes)


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise ImageGone(f"{path.name} is missing") from None
    return _cifar_batch(str(path), mtime, num_classes)


class DatasetImages:
    """The images of one stored dataset (its folder holds manifest.json), addressed by ref."""

    def __init__(self, dataset_dir: Path) -> None:
        manifest: dict[str, Any] = read_manifest(dataset_dir)
        self.root = manifest_root(dataset_dir, manifest)
        self.format: str = manifest["format"]
        self.class_names: list[str] = manifest["class_names"]
        self._labels: dict[str, np.ndarray] = {}
        self._files: dict[str, list[tuple[str, int]]] = {}  # split -> (file, images) of a CIFAR split
        self._paths: dict[str, list[str]] = {}  # split -> relative path per image of an ImageFolder split
        if self.format == "cifar10":
            for split, files in manifest["splits"].items():
                labels = [_read_batch(self.root / f, len(self.class_names))[1] for f in files]
                self._files[split] = [(f, len(lab)) for f, lab in zip(files, labels, strict=True)]
                self._labels[split] = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        else:
            for split, rows in manifest["samples"].items():
                self._paths[split] = [rel for rel, _ in rows]
                self._labels[split] = np.asarray([label for _, label in rows], dtype=np.int64)
        self.offsets = ref_offsets({split: len(labels) for split, labels in self._labels.items()})
        self.size = sum(len(labels) for labels in self._labels.values())

    @property
    def splits(self) -> list[str]:
        return list(self.offsets)

    def labels(self, split: str) -> np.ndarray:
        """The class index of each image of split, in ref order (the split's first ref is offsets[split])."""
        return self._labels[split]

    def locate(self, ref: int) -> tuple[str, int] | None:
        """(split, position in it) of ref; None when the dataset has no such image."""
        for split, start in self.offsets.items():
            if start <= ref < start + len(self._labels[split]):
                return split, ref - start
        return None

    def label(self, ref: int) -> int | None:
        found = self.locate(ref)
        return None if found is None else int(self._labels[found[0]][found[1]])

    def image(
        self, ref: int, max_side: int, within: Path | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    ) -> Image.Image:
        """Image ref as RGB, its longer side shrunk to at most max_side (never enlarged).

        A file is decoded with the project's limits (header checked against max_pixels first), and only when it
        still resolves inside `within` (default: the dataset's root). Raises KeyError for an unknown ref,
        ImageGone, ImageTooLarge or UnreadableImage.
        """
        found = self.locate(ref)
        if found is None:
            raise KeyError(ref)
        split, position = found
        if self.format == "cifar10":
            for name, count in self._files[split]:
                if position < count:
                    images, _ = _read_batch(self.root / name, len(self.class_names))
                    if position >= len(images):  # the batch changed since it was indexed
                        raise ImageGone(f"image {ref} is missing from {name}")
                    img = Image.fromarray(images[position])
                    break
                position -= count
            else:
                raise ImageGone(f"image {ref} is missing")
        else:
            path = self.root / self._paths[split][position]
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError):
                raise ImageGone(f"image {ref} is missing") from None
            if not real.is_relative_to((within or self.root).resolve()) or not real.is_file():
                raise ImageGone(f"image {ref} is no longer a file inside the dataset")
            img = decode_image(real, max_pixels, max_side=max_side, draft_side=max_side)
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
        return img
