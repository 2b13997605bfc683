"""The per-process caches and limits behind the dataset image routes."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from app.errors import ServiceUnavailable
from app.ml.data import write_manifest
from app.ml.image_index import DatasetImages, ImageGone, WeightedLRU
from app.services import dataset_images
from app.services.dataset_images import spread, thumbnail_side
from tests.factories import CIFAR_DIR, cifar_arrays
from tests.processes import wait_for

DEADLINE_S = 10.0


def test_the_caches_are_bounded_by_weight():
    cache: WeightedLRU[str, bytes] = WeightedLRU(10, len)
    cache.put("a", b"12345")
    cache.put("b", b"1234")
    assert cache.get("a") == b"12345"  # now the most recently used
    cache.put("c", b"123")  # 12 bytes: the least recently used (b) goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"12345", None, b"123")
    cache.put("huge", b"x" * 11)  # heavier than the whole cache: never kept, nothing else dropped for it
    assert cache.get("huge") is None and cache.used == 8


def test_a_missing_value_is_made_once_for_threads_asking_at_the_same_time():
    cache: WeightedLRU[str, list[int]] = WeightedLRU(4, lambda _v: 1)
    made: list[int] = []
    release = threading.Event()

    def make() -> list[int]:
        made.append(1)
        assert release.wait(DEADLINE_S)
        return [42]

    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_make("k", make))) for _ in range(8)]
    for t in threads:
        t.start()
    # all eight are in: one making the value, seven waiting on its lock
    wait_for(lambda: len(made) == 1 and cache._making["k"].waiting == 8, "eight threads on one key", DEADLINE_S)
    release.set()
    for t in threads:
        t.join(DEADLINE_S)
    assert made == [1] and len(results) == 8 and all(r is results[0] for r in results)
    assert cache._making == {}  # the per-key lock goes with its last user

    # A waiter gives up after its timeout while another thread is still making the value.
    started, finish = threading.Event(), threading.Event()

    def slow() -> list[int]:
        started.set()
        assert finish.wait(DEADLINE_S)
        return [1]

    maker = threading.Thread(target=cache.get_or_make, args=("slow", slow))
    maker.start()
    assert started.wait(DEADLINE_S)
    try:
        with pytest.raises(TimeoutError):
            cache.get_or_make("slow", lambda: [2], timeout=0.01)
    finally:
        finish.set()
        maker.join(DEADLINE_S)
    assert cache.get("slow") == [1]


def test_decodes_are_bounded_per_process_and_the_rest_answered_503(monkeypatch):
    monkeypatch.setattr(dataset_images, "_decode_slots", threading.BoundedSemaphore(2))
    monkeypatch.setattr(dataset_images, "DECODE_WAIT_SECONDS", 0.01)
    lock, active, most = threading.Lock(), [0], [0]
    release = threading.Event()

    def decode() -> None:
        with dataset_images.decode_slot():
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            assert release.wait(DEADLINE_S)
            with lock:
                active[0] -= 1

    refused: list[ServiceUnavailable] = []

    def request() -> None:
        try:
            decode()
        except ServiceUnavailable as exc:
            refused.append(exc)

    threads = [threading.Thread(target=request) for _ in range(5)]
    for t in threads:
        t.start()
    wait_for(lambda: active[0] == 2 and len(refused) == 3, "two decoding, three refused", DEADLINE_S)
    release.set()
    for t in threads:
        t.join(DEADLINE_S)
    assert most[0] == 2
    assert all(e.status_code == 503 and e.headers == {"Retry-After": "1"} for e in refused)
    decode()  # the slots are free again


def test_sizes_snap_down_to_a_few_thumbnail_sides():
    assert [thumbnail_side(s) for s in (16, 17, 40, 64, 100, 255, 256)] == [16, 16, 32, 64, 96, 192, 256]
    assert len({thumbnail_side(s) for s in range(16, 257)}) == len(dataset_images.THUMBNAIL_SIDES)


def test_samples_are_spread_over_a_class_and_all_of_a_small_one():
    assert spread(np.arange(10, 20), 3).tolist() == [10, 14, 19]  # evenly from the first to the last
    assert spread(np.arange(2), 5).tolist() == [0, 1]


def test_class_positions_are_each_class_in_ref_order(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, 300)
    rows = [[f"c{label}/{i}.png", int(label)] for i, label in enumerate(labels)]
    manifest = {"format": "imagefolder", "root": ".", "class_names": [f"c{i}" for i in range(6)]}
    write_manifest(tmp_path, manifest | {"samples": {"train": rows[:200], "test": rows[200:]}})
    index = DatasetImages(tmp_path)
    for split, part in (("train", labels[:200]), ("test", labels[200:])):
        for i in range(6):  # class 5 has no image
            assert index.class_positions(split, i).tolist() == np.flatnonzero(part == i).tolist()


def test_a_cifar_batch_is_read_only_while_it_resolves_inside_the_dataset(tmp_path):
    dataset, outside = tmp_path / "dataset", tmp_path / "outside"
    (dataset / "cifar").mkdir(parents=True)
    outside.mkdir()
    for name in ("data_batch_1", "test_batch"):
        shutil.copy(CIFAR_DIR / name, dataset / "cifar" / name)
    shutil.copy(CIFAR_DIR / "data_batch_1", outside / "data_batch_1")
    names = cifar_arrays("test_batch")[2]
    splits = {"train": ["data_batch_1"], "test": ["test_batch"]}
    write_manifest(dataset, {"format": "cifar10", "root": "cifar", "class_names": names, "splits": splits})
    index = DatasetImages(dataset)
    train = len(index.labels("train"))
    assert index.image(0, 32).size == (32, 32) and index.image(train, 32).size == (32, 32)

    # The train batch swapped for a link to a copy outside the dataset: its images are gone, the test batch's not.
    (dataset / "cifar" / "data_batch_1").unlink()
    (dataset / "cifar" / "data_batch_1").symlink_to(outside / "data_batch_1")
    with pytest.raises(ImageGone, match="no longer a file inside the dataset"):
        index.image(1, 32)
    assert index.image(train + 1, 32).size == (32, 32)
    with pytest.raises(ImageGone, match="data_batch_1 is no longer a file inside"):
        DatasetImages(dataset)  # nor is it read to build an index
    assert DatasetImages(dataset, within=tmp_path).size == index.size  # unless the link stays inside `within`
