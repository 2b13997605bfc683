"""A dataset's images for people: a few samples per class, and a thumbnail of any image by its ref."""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidDataset, InvalidInput, NotFound
from app.ml.data import DatasetFormatError, ImageTooLarge
from app.ml.image_index import DatasetImages, ImageGone
from app.models import Dataset
from app.schemas import ClassSamples, DatasetSamples
from app.services.datasets import get_dataset

# Thumbnails of a dataset never change (its manifest is written once), but they show the project's images:
# browsers may keep them, shared caches may not.
THUMBNAIL_CACHE_CONTROL = "private, max-age=86400"
THUMBNAIL_MEDIA_TYPE = "image/jpeg"
# Indexes kept per API process (labels and file names only: a CIFAR-10 index is about 0.5 MB).
INDEX_CACHE_SIZE = 8
# Encoded thumbnails kept per API process: a page shows the same ones again, and decoding a large image costs
# far more than keeping its few kilobytes.
THUMBNAIL_CACHE_BYTES = 16 * 1024**2

K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A thread-safe least-recently-used map bounded by the summed weight of its values."""

    def __init__(self, capacity: int, weight: Callable[[V], int]) -> None:
        self.capacity, self.weight = capacity, weight
        self._items: OrderedDict[K, V] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._used += self.weight(value)
            while self._used > self.capacity and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._used -= self.weight(dropped)


_indexes: _LRU[uuid.UUID, DatasetImages] = _LRU(INDEX_CACHE_SIZE, lambda _index: 1)
_thumbnails: _LRU[tuple[uuid.UUID, int, int], bytes] = _LRU(THUMBNAIL_CACHE_BYTES, len)


def dataset_images(dataset: Dataset) -> DatasetImages:
    """The dataset's image index, built from its manifest once and kept for the next requests."""
    found = _indexes.get(dataset.id)
    if found is not None:
        return found
    try:
        index = DatasetImages(Path(dataset.path))
    except DatasetFormatError as exc:  # its messages name files of the dataset, never a server path
        raise InvalidDataset(f"the files of dataset {dataset.id} cannot be read: {exc}") from None
    except (OSError, ValueError, KeyError):  # the manifest is gone or damaged
        raise InvalidDataset(f"the index of dataset {dataset.id} cannot be read") from None
    _indexes.put(dataset.id, index)
    return index


def spread(positions: np.ndarray, k: int) -> np.ndarray:
    """k of positions, evenly spread over them (all of them when there are at most k); the same every time."""
    if len(positions) <= k:
        return positions
    return positions[np.unique(np.linspace(0, len(positions) - 1, k).round().astype(np.int64))]


def samples(session: Session, project: str, dataset_id: uuid.UUID, split: str, per_class: int) -> DatasetSamples:
    """Up to per_class image refs of each class of split, with the class's image count; 422 for an unknown split."""
    dataset = get_dataset(session, project, dataset_id)
    index = dataset_images(dataset)
    if split not in index.splits:
        raise InvalidInput(f"split {split!r} is not one of this dataset's splits: {', '.join(index.splits)}")
    labels = index.labels(split)
    start = index.offsets[split]
    classes = []
    for i, name in enumerate(index.class_names):
        positions = np.flatnonzero(labels == i)
        refs = start + spread(positions, per_class)
        classes.append(ClassSamples(index=i, name=name, count=len(positions), samples=[int(r) for r in refs]))
    return DatasetSamples(dataset_id=dataset.id, split=split, per_class=per_class, classes=classes)


def thumbnail(session: Session, settings: Settings, project: str, dataset_id: uuid.UUID, ref: int, size: int) -> bytes:
    """Image ref of the dataset as a JPEG whose longer side is at most size; 404 for a ref it does not have."""
    dataset = get_dataset(session, project, dataset_id)
    cached = _thumbnails.get((dataset.id, ref, size))
    if cached is not None:
        return cached
    index = dataset_images(dataset)
    # A registered directory's files may link anywhere under the dataset root (as when it was indexed).
    within = settings.dataset_root if dataset.source == "local" and settings.dataset_root else None
    try:
        img = index.image(ref, size, within, settings.max_image_pixels)
    except KeyError:
        raise NotFound(f"dataset {dataset_id} has no image {ref} (refs are 0..{index.size - 1})") from None
    except ImageGone as exc:
        raise NotFound(f"dataset {dataset_id}: {exc}") from None
    except ImageTooLarge as exc:
        raise InvalidDataset(f"image {ref}: {exc}") from None
    except DatasetFormatError as exc:
        raise InvalidDataset(f"image {ref} cannot be read: {exc}") from None
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    body = buf.getvalue()
    _thumbnails.put((dataset.id, ref, size), body)
    return body
