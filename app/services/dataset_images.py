"""A dataset's images for people: a few samples per class, and a thumbnail of any image by its ref.

Both read the dataset's row in a short session of their own and close it before any file is read, so that no
pooled database connection is held while an index is built or an image decoded. Decoding is bounded per API
process: at most DECODE_SLOTS index builds and thumbnail decodes at once, each of an image of at most
max_predict_pixels (and max_image_pixels); a request that finds every slot taken for DECODE_WAIT_SECONDS is
answered 503 with Retry-After, as /predict is when its queue is full.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import session_scope
from app.errors import InvalidDataset, InvalidInput, NotFound, ServiceUnavailable
from app.ml.data import DatasetFormatError, ImageTooLarge
from app.ml.image_index import DatasetImages, ImageGone, WeightedLRU
from app.schemas import ClassSamples, DatasetSamples
from app.services.datasets import get_dataset

# Thumbnails of a dataset never change (its manifest is written once), but they show the project's images:
# browsers may keep them, shared caches may not.
THUMBNAIL_CACHE_CONTROL = "private, max-age=86400"
THUMBNAIL_MEDIA_TYPE = "image/jpeg"
# A size asked for is served at the largest of these not above it, so an image has at most this many thumbnails
# (cached or to decode) however many sizes are asked for.
THUMBNAIL_SIDES = (16, 24, 32, 48, 64, 96, 128, 192, 256)
# Indexes kept per API process (labels, positions and file names only: a CIFAR-10 index is about 1 MB).
INDEX_CACHE_SIZE = 8
# Encoded thumbnails kept per API process: a page shows the same ones again, and decoding a large image costs
# far more than keeping its few kilobytes.
THUMBNAIL_CACHE_BYTES = 16 * 1024**2
# Index builds and image decodes running at once per API process (each may hold a few hundred MB: a 40 MP PNG
# decodes at full size, a CIFAR batch file may hold 256 MiB), and how long a request waits for one of them.
DECODE_SLOTS = 2
DECODE_WAIT_SECONDS = 2.0
# How long a request waits for the index another request is building (a CIFAR index reads every batch).
INDEX_WAIT_SECONDS = 10.0
RETRY_AFTER_SECONDS = 1

_indexes: WeightedLRU[uuid.UUID, DatasetImages] = WeightedLRU(INDEX_CACHE_SIZE, lambda _index: 1)
_thumbnails: WeightedLRU[tuple[uuid.UUID, int, int], bytes] = WeightedLRU(THUMBNAIL_CACHE_BYTES, len)
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)


@contextmanager
def decode_slot() -> Iterator[None]:
    """One of this process's DECODE_SLOTS; 503 with Retry-After when none frees up within DECODE_WAIT_SECONDS."""
    slots = _decode_slots  # the one acquired is the one released, even if the module's is replaced meanwhile
    if not slots.acquire(timeout=DECODE_WAIT_SECONDS):
        raise ServiceUnavailable(
            "the server is busy decoding other images; try again shortly", retry_after=RETRY_AFTER_SECONDS
        )
    try:
        yield
    finally:
        slots.release()


@dataclass(frozen=True)
class StoredDataset:
    """What the image routes need of a dataset's row, read before its session is closed."""

    id: uuid.UUID
    path: Path
    within: Path | None  # where its files must resolve; None: the dataset's own root


def stored_dataset(
    factory: sessionmaker[Session], settings: Settings, project: str, dataset_id: uuid.UUID
) -> StoredDataset:
    """The project's dataset (404 for another project's), read in a session of its own that is closed on return."""
    with session_scope(factory) as session:
        dataset = get_dataset(session, project, dataset_id)
        # A registered directory's files may link anywhere under the dataset root (as when it was indexed).
        within = settings.dataset_root if dataset.source == "local" and settings.dataset_root else None
        return StoredDataset(dataset.id, Path(dataset.path), within)


def _build_index(dataset: StoredDataset) -> DatasetImages:
    with decode_slot():
        try:
            return DatasetImages(dataset.path, dataset.within)
        except DatasetFormatError as exc:  # its messages name files of the dataset, never a server path
            raise InvalidDataset(f"the files of dataset {dataset.id} cannot be read: {exc}") from None
        except (OSError, ValueError, KeyError):  # the manifest is gone or damaged
            raise InvalidDataset(f"the index of dataset {dataset.id} cannot be read") from None


def dataset_images(dataset: StoredDataset) -> DatasetImages:
    """The dataset's image index, built from its manifest once (however many requests ask at the same time) and
    kept for the next requests."""
    try:
        return _indexes.get_or_make(dataset.id, lambda: _build_index(dataset), timeout=INDEX_WAIT_SECONDS)
    except TimeoutError:
        raise ServiceUnavailable(
            f"the index of dataset {dataset.id} is still being built; try again shortly",
            retry_after=RETRY_AFTER_SECONDS,
        ) from None


def spread(positions: np.ndarray, k: int) -> np.ndarray:
    """k of positions, evenly spread over them (all of them when there are at most k); the same every time."""
    if len(positions) <= k:
        return positions
    return positions[np.unique(np.linspace(0, len(positions) - 1, k).round().astype(np.int64))]


def samples(
    factory: sessionmaker[Session], settings: Settings, project: str, dataset_id: uuid.UUID, split: str, per_class: int
) -> DatasetSamples:
    """Up to per_class image refs of each class of split, with the class's image count; 422 for an unknown split."""
    dataset = stored_dataset(factory, settings, project, dataset_id)
    index = dataset_images(dataset)
    if split not in index.splits:
        raise InvalidInput(f"split {split!r} is not one of this dataset's splits: {', '.join(index.splits)}")
    start = index.offsets[split]
    classes = []
    for i, name in enumerate(index.class_names):
        positions = index.class_positions(split, i)
        refs = start + spread(positions, per_class)
        classes.append(ClassSamples(index=i, name=name, count=len(positions), samples=[int(r) for r in refs]))
    return DatasetSamples(dataset_id=dataset.id, split=split, per_class=per_class, classes=classes)


def thumbnail_side(size: int) -> int:
    """The side a thumbnail asked for at size is made at: the largest of THUMBNAIL_SIDES not above it."""
    return max((s for s in THUMBNAIL_SIDES if s <= size), default=THUMBNAIL_SIDES[0])


def thumbnail_pixels(settings: Settings) -> int:
    """The most pixels an image may have to be shown as a thumbnail: what /predict decodes, at most."""
    return min(settings.max_predict_pixels, settings.max_image_pixels)


def thumbnail(
    factory: sessionmaker[Session], settings: Settings, project: str, dataset_id: uuid.UUID, ref: int, size: int
) -> bytes:
    """Image ref of the dataset as a JPEG whose longer side is at most size (one of THUMBNAIL_SIDES); 404 for a
    ref it does not have, 422 for an image larger than thumbnail_pixels, 503 while the decode slots are taken."""
    dataset = stored_dataset(factory, settings, project, dataset_id)
    side = thumbnail_side(size)
    key = (dataset.id, ref, side)
    cached = _thumbnails.get(key)
    if cached is not None:
        return cached
    index = dataset_images(dataset)
    if index.locate(ref) is None:  # answered without waiting for a decode slot
        raise NotFound(f"dataset {dataset_id} has no image {ref} (refs are 0..{index.size - 1})")
    limit = thumbnail_pixels(settings)
    with decode_slot():
        try:
            img = index.image(ref, side, limit)
        except ImageGone as exc:
            raise NotFound(f"dataset {dataset_id}: {exc}") from None
        except ImageTooLarge as exc:
            shown = f"{exc.size[0]}x{exc.size[1]} pixels" if exc.size else "too many pixels"
            setting = "MAX_PREDICT_PIXELS" if limit == settings.max_predict_pixels else "MAX_IMAGE_PIXELS"
            raise InvalidDataset(
                f"image {ref} is {shown}: thumbnails are made of images of at most {limit:,} pixels "
                f"(VISIONTUNE_{setting})"
            ) from None
        except DatasetFormatError as exc:
            raise InvalidDataset(f"image {ref} cannot be read: {exc}") from None
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, optimize=True)
    body = buf.getvalue()
    _thumbnails.put(key, body)
    return body
