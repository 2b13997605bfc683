"""A dataset's images for people: a few samples per class, and a thumbnail of any image by its ref."""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

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

_cache: OrderedDict[uuid.UUID, DatasetImages] = OrderedDict()
_cache_lock = threading.Lock()


def dataset_images(dataset: Dataset) -> DatasetImages:
    """The dataset's image index, built from its manifest once and kept for the next requests."""
    with _cache_lock:
        found = _cache.get(dataset.id)
        if found is not None:
            _cache.move_to_end(dataset.id)
            return found
    try:
        index = DatasetImages(Path(dataset.path))
    except DatasetFormatError as exc:  # its messages name files of the dataset, never a server path
        raise InvalidDataset(f"the files of dataset {dataset.id} cannot be read: {exc}") from None
    except (OSError, ValueError, KeyError):  # the manifest is gone or damaged
        raise InvalidDataset(f"the index of dataset {dataset.id} cannot be read") from None
    with _cache_lock:
        _cache[dataset.id] = index
        while len(_cache) > INDEX_CACHE_SIZE:
            _cache.popitem(last=False)
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
    return buf.getvalue()
