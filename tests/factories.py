"""Plain functions that make test data: real CIFAR images as archives, small generated images."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = Path(
    os.environ.get("VISIONTUNE_TEST_CIFAR", REPO.parent / "shared" / "data" / "cifar10-subset" / "cifar-10-batches-py")
)


def cifar_arrays(batch: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images N×32×32×3, labels, class names) of one batch of the shared CIFAR subset."""
    with (CIFAR_DIR / "batches.meta").open("rb") as f:
        names = [n.decode() for n in pickle.load(f, encoding="bytes")[b"label_names"]]
    with (CIFAR_DIR / batch).open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    data = np.asarray(raw[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, np.asarray(raw[b"labels"]), names


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def cifar_imagefolder_zip(
    path: Path,
    classes: tuple[str, ...] = ("airplane", "automobile", "frog"),
    train_per_class: int = 60,
    test_per_class: int = 0,
    wrapper: str = "",
) -> dict[str, list[tuple[bytes, str]]]:
    """Zip real CIFAR images as `[wrapper/]train/<class>/*.png` (+ test/); returns held-out images too.

    The returned dict holds 'heldout': images of the same classes from the test batch that are not in the zip.
    """
    train, train_labels, names = cifar_arrays("data_batch_1")
    test, test_labels, _ = cifar_arrays("test_batch")
    prefix = f"{wrapper}/" if wrapper else ""
    heldout: list[tuple[bytes, str]] = []
    with zipfile.ZipFile(path, "w") as zf:
        for cls in classes:
            label = names.index(cls)
            for i, idx in enumerate(np.flatnonzero(train_labels == label)[:train_per_class]):
                zf.writestr(f"{prefix}train/{cls}/{i:04d}.png", png_bytes(train[idx]))
            test_idx = np.flatnonzero(test_labels == label)
            for i, idx in enumerate(test_idx[:test_per_class]):
                zf.writestr(f"{prefix}test/{cls}/{i:04d}.png", png_bytes(test[idx]))
            heldout += [(png_bytes(test[idx]), cls) for idx in test_idx[test_per_class : test_per_class + 20]]
    return {"heldout": heldout}


def color_pixels(rng: np.random.Generator, channel: int, size: int) -> np.ndarray:
    """A size x size RGB image of one colour (that channel at 200) plus noise below 40 from rng."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., channel] = 200
    return pixels + rng.integers(0, 40, size=pixels.shape, dtype=np.uint8)


def color_images_zip(path: Path, layout: dict[str, int], size: int = 24, extra: dict[str, bytes] | None = None) -> Path:
    """A zip of generated images: layout maps `folder/path` to an image count; extra adds raw files."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for j, (folder, count) in enumerate(layout.items()):
            for i in range(count):
                zf.writestr(f"{folder}/{i:03d}.png", png_bytes(color_pixels(rng, j % 3, size)))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def cifar_python_archive(path: Path, kind: str = "zip", batches: tuple[str, ...] | None = None) -> Path:
    """The shared cifar-10-batches-py folder as a .zip or .tar.gz (all batches unless named)."""
    names = [
        "batches.meta",
        *(batches or ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "test_batch")),
    ]
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for n in names:
                zf.write(CIFAR_DIR / n, f"cifar-10-batches-py/{n}")
    else:
        with tarfile.open(path, "w:gz") as tf:
            for n in names:
                tf.add(CIFAR_DIR / n, arcname=f"cifar-10-batches-py/{n}")
    return path


# The smallest real job: a ResNet-18 trained from scratch on 32 px images, seconds per epoch on a CPU.
TINY_JOB = {"arch": "resnet18", "weights": "none", "strategy": "full", "image_size": 32, "learning_rate": 0.01}


def tiny_job(dataset_id: object, **fields: object) -> dict:
    """A POST /jobs body for TINY_JOB on a dataset, under a fresh model name; fields add or override."""
    return {"dataset_id": str(dataset_id), "model_name": f"m-{uuid.uuid4().hex[:8]}", **TINY_JOB, **fields}


def only(*ids: uuid.UUID):
    """A reaper report's list filtered to these rows: on PostgreSQL the database is shared by the whole test
    session, and sweeps with a clock hours ahead also see other tests' rows."""
    return lambda found: [i for i in found if i in ids]
