"""GET /datasets/{id}/samples and /datasets/{id}/images/{ref} in-process: refs name the dataset's own images
(ImageFolder and CIFAR batches), thumbnails decode with the right size and headers, and bad input is a 4xx."""

from __future__ import annotations

import io
import threading
import uuid
import zipfile

import numpy as np
import pytest
from PIL import Image

from app.ml import image_index
from app.ml.data import ImageTooLarge
from app.services import dataset_images
from tests.factories import CIFAR_DIR, cifar_arrays, cifar_python_archive, color_images_zip, png_bytes

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def thumbnail(client, dataset_id: str, ref: int, **params) -> Image.Image:
    r = client.get(f"/datasets/{dataset_id}/images/{ref}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "private, max-age=86400"
    img = Image.open(io.BytesIO(r.content))
    img.load()
    return img


def test_samples_are_spread_over_each_class_and_the_same_every_time(client, dataset_id):
    r = client.get(f"/datasets/{dataset_id}/samples", params={"per_class": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dataset_id"] == dataset_id and body["split"] == "train" and body["per_class"] == 5
    assert [(c["index"], c["name"], c["count"]) for c in body["classes"]] == [
        (0, "blue", 12),
        (1, "green", 12),
        (2, "red", 12),
    ]
    # The manifest lists train images class by class: class i's refs are 12 i .. 12 i + 11, five spread over them.
    assert [c["samples"] for c in body["classes"]] == [[0, 3, 6, 8, 11], [12, 15, 18, 20, 23], [24, 27, 30, 32, 35]]
    assert client.get(f"/datasets/{dataset_id}/samples", params={"per_class": 5}).json() == body
    default = client.get(f"/datasets/{dataset_id}/samples").json()
    assert all(len(c["samples"]) == 4 for c in default["classes"])


def test_thumbnails_show_the_image_their_ref_names(client, dataset_id):
    samples = client.get(f"/datasets/{dataset_id}/samples", params={"per_class": 16}).json()
    channel = {"red": 0, "green": 1, "blue": 2}  # the colour each class's generated images are
    for c in samples["classes"]:
        for ref in c["samples"][:3]:
            img = thumbnail(client, dataset_id, ref)
            assert img.size == (16, 16)  # a 16 px image is never enlarged
            means = np.asarray(img, dtype=np.float64).mean(axis=(0, 1))
            assert int(means.argmax()) == channel[c["name"]]
    assert thumbnail(client, dataset_id, 0, size=16).size == (16, 16)


def test_large_images_are_shrunk_to_the_size_asked(client, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("a", "b"):
            for i in range(2):
                zf.writestr(f"{cls}/{i}.png", png_bytes(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)))
    r = client.post("/datasets", files={"file": ("big.zip", path.read_bytes())})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    assert thumbnail(client, ds, 3, size=64).size == (64, 43)
    assert thumbnail(client, ds, 0).size == (96, 64)
    assert thumbnail(client, ds, 1, size=256).size == (256, 171)
    # Sizes snap down to a few sides, so an image has a handful of thumbnails however many sizes are asked for.
    assert thumbnail(client, ds, 3, size=100).size == (96, 64)
    assert (
        client.get(f"/datasets/{ds}/images/3", params={"size": 127}).content
        == client.get(f"/datasets/{ds}/images/3", params={"size": 96}).content
    )


def test_cifar_refs_run_through_the_train_batches_then_the_test_batch(client, tmp_path):
    archive = cifar_python_archive(tmp_path / "c.zip", batches=("data_batch_1", "test_batch"))
    r = client.post("/datasets", files={"file": ("c.zip", archive.read_bytes())})
    assert r.status_code == 201, r.text
    ds = r.json()
    train, train_labels, names = cifar_arrays("data_batch_1")
    test, test_labels, _ = cifar_arrays("test_batch")

    body = client.get(f"/datasets/{ds['id']}/samples", params={"split": "test", "per_class": 2}).json()
    assert [c["name"] for c in body["classes"]] == names
    assert [c["count"] for c in body["classes"]] == [int((test_labels == i).sum()) for i in range(len(names))]
    assert {c["name"]: c["count"] for c in body["classes"]} == ds["split_counts"]["test"]
    for c in body["classes"]:
        for ref in c["samples"]:
            position = ref - len(train)  # the test split's refs follow the train split's
            assert test_labels[position] == c["index"]
            pixels = np.asarray(thumbnail(client, ds["id"], ref, size=32), dtype=np.int16)
            assert np.abs(pixels - test[position]).mean() < 8  # the same picture, through JPEG

    first = client.get(f"/datasets/{ds['id']}/samples").json()["classes"][0]["samples"][0]
    assert train_labels[first] == 0
    assert thumbnail(client, ds["id"], first, size=16).size == (16, 16)
    last = len(train) + len(test) - 1
    assert thumbnail(client, ds["id"], last).size == (32, 32)
    r = client.get(f"/datasets/{ds['id']}/images/{last + 1}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert CIFAR_DIR.is_dir()


def test_bad_input_and_other_projects(client, dataset_id):
    base = f"/datasets/{dataset_id}"
    for path, params in [
        (f"{base}/samples", {"per_class": 0}),
        (f"{base}/samples", {"per_class": 17}),
        (f"{base}/samples", {"split": "test"}),  # this dataset has a train split only
        (f"{base}/samples", {"split": "x" * 100}),
        (f"{base}/images/0", {"size": 15}),
        (f"{base}/images/0", {"size": 257}),
        (f"{base}/images/-1", {}),
        (f"{base}/images/abc", {}),
        (f"{base}/images/{2**31}", {}),
        ("/datasets/not-a-uuid/samples", {}),
    ]:
        r = client.get(path, params=params)
        assert r.status_code == 422, (path, params, r.text)
        assert r.json()["error"]["code"]
    assert "train" in client.get(f"{base}/samples", params={"split": "test"}).json()["error"]["message"]
    r = client.get(f"{base}/images/36")
    assert r.status_code == 404 and "0..35" in r.json()["error"]["message"]
    assert client.get(f"{base}/images/..%2F..%2Fmanifest.json").status_code in (404, 422)

    key = client.post("/keys", json={"name": "o", "scopes": ["read"], "project": f"o-{uuid.uuid4().hex[:8]}"})
    other = {"Authorization": f"Bearer {key.json()['key']}"}
    for path in (f"{base}/samples", f"{base}/images/0", f"/datasets/{uuid.uuid4()}/images/0"):
        r = client.get(path, headers=other)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_an_image_removed_from_disk_is_404_not_500(client, dataset_id, settings):
    samples = client.get(f"/datasets/{dataset_id}/samples").json()
    ref = samples["classes"][0]["samples"][0]
    for f in (settings.datasets_dir / dataset_id).rglob("*.png"):
        f.unlink()
    r = client.get(f"/datasets/{dataset_id}/images/{ref}")
    assert r.status_code == 404 and "missing" in r.json()["error"]["message"]
    assert str(settings.datasets_dir) not in r.text


def test_imagefolder_splits_are_numbered_train_then_val_then_test(client, tmp_path):
    layout = {"test/green": 1, "test/red": 1, "train/green": 4, "train/red": 4, "val/green": 2, "val/red": 2}
    path = color_images_zip(tmp_path / "splits.zip", layout, size=20)
    r = client.post("/datasets", files={"file": ("splits.zip", path.read_bytes())})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    refs = {}
    for split in ("train", "val", "test"):
        body = client.get(f"/datasets/{ds}/samples", params={"split": split, "per_class": 16}).json()
        refs[split] = {c["name"]: c["samples"] for c in body["classes"]}
    assert refs == {
        "train": {"green": [0, 1, 2, 3], "red": [4, 5, 6, 7]},
        "val": {"green": [8, 9], "red": [10, 11]},
        "test": {"green": [12], "red": [13]},
    }
    # color_images_zip colours the n-th folder of its layout with channel n % 3: test/green and train/red are
    # red (0), test/red and val/green green (1), train/green and val/red blue (2).
    colour = {("test", "green"): 0, ("test", "red"): 1, ("train", "green"): 2, ("train", "red"): 0}
    colour |= {("val", "green"): 1, ("val", "red"): 2}
    for (split, name), channel in colour.items():
        for ref in refs[split][name]:
            means = np.asarray(thumbnail(client, ds, ref), dtype=np.float64).mean(axis=(0, 1))
            assert int(means.argmax()) == channel, (split, name, ref)


def test_no_database_connection_is_held_while_indexing_or_decoding(client, dataset_id, monkeypatch):
    pool = client.app.state.engine.pool
    held: list[int] = []
    real_index, real_decode = image_index.DatasetImages, image_index.decode_image

    def index(*args, **kwargs):
        held.append(pool.checkedout())
        return real_index(*args, **kwargs)

    def decode(*args, **kwargs):
        held.append(pool.checkedout())
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(dataset_images, "DatasetImages", index)
    monkeypatch.setattr(image_index, "decode_image", decode)
    assert client.get(f"/datasets/{dataset_id}/samples").status_code == 200
    thumbnail(client, dataset_id, 5, size=32)
    assert held == [0, 0]  # one index build, one decode, each with every pooled connection back in the pool


def test_an_image_over_the_thumbnail_pixel_limit_is_422_and_not_decoded(client, dataset_id, settings, monkeypatch):
    real = image_index.decode_image
    refused: list[BaseException] = []

    def decode(*args, **kwargs):
        try:
            return real(*args, **kwargs)
        except ImageTooLarge as exc:
            refused.append(exc)
            raise

    monkeypatch.setattr(image_index, "decode_image", decode)
    monkeypatch.setattr(settings, "max_predict_pixels", 255)  # the dataset's images are 16x16 = 256 pixels
    r = client.get(f"/datasets/{dataset_id}/images/0")
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "16x16" in message and "at most 255 pixels" in message and "VISIONTUNE_MAX_PREDICT_PIXELS" in message
    assert len(refused) == 1 and refused[0].size == (16, 16)  # refused from its header, before any pixel


def test_requests_beyond_the_decode_slots_are_503_with_retry_after(client, dataset_id, monkeypatch):
    cached = client.get(f"/datasets/{dataset_id}/images/0").content
    monkeypatch.setattr(dataset_images, "_decode_slots", threading.BoundedSemaphore(1))
    monkeypatch.setattr(dataset_images, "DECODE_WAIT_SECONDS", 0.01)
    assert dataset_images._decode_slots.acquire(timeout=1)  # another request decoding
    try:
        r = client.get(f"/datasets/{dataset_id}/images/1")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        r = client.get(f"/datasets/{dataset_id}/images/0")  # a cached thumbnail needs no decode
        assert r.status_code == 200 and r.content == cached
    finally:
        dataset_images._decode_slots.release()
    assert thumbnail(client, dataset_id, 1).size == (16, 16)
