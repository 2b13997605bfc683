"""Dataset ingest over HTTP: ImageFolder zips, CIFAR python archives, server directories."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from tests.factories import CIFAR_DIR, cifar_imagefolder_zip, cifar_python_archive, color_images_zip, png_bytes


def post_file(client, path: Path, **form):
    with path.open("rb") as f:
        return client.post("/datasets", files={"file": (path.name, f, "application/octet-stream")}, data=form)


def test_imagefolder_zip_with_splits_and_wrapper_folder(client, tmp_path):
    cifar_imagefolder_zip(tmp_path / "animals.zip", train_per_class=12, test_per_class=5, wrapper="animals")
    r = post_file(client, tmp_path / "animals.zip")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "animals"
    assert ds["format"] == "imagefolder" and ds["source"] == "upload"
    assert ds["class_names"] == ["airplane", "automobile", "frog"] and ds["num_classes"] == 3
    assert ds["split_counts"] == {
        "train": {"airplane": 12, "automobile": 12, "frog": 12},
        "test": {"airplane": 5, "automobile": 5, "frog": 5},
    }
    assert ds["num_images"] == 51 and ds["invalid_files"] == []
    assert client.get(f"/datasets/{ds['id']}").json() == ds
    listed = client.get("/datasets", params={"limit": 500}).json()
    assert ds["id"] in [d["id"] for d in listed["items"]] and listed["total"] >= 1


def test_flat_class_folders_and_non_image_files_are_reported(client, tmp_path):
    path = color_images_zip(
        tmp_path / "flat.zip", {"red": 4, "green": 3, "val/x": 0}, extra={"red/notes.txt": b"hello"}
    )
    r = post_file(client, path, name="colours")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "colours"
    assert ds["class_names"] == ["green", "red"]
    assert ds["split_counts"] == {"train": {"green": 3, "red": 4}}
    assert ds["invalid_files"] == [{"file": "red/notes.txt", "reason": "not an image file (by extension)"}]


def test_corrupt_images_can_be_skipped_on_request(client, tmp_path):
    path = color_images_zip(tmp_path / "c.zip", {"a": 3, "b": 3}, extra={"a/broken.png": b"\x89PNG\r\n\x1a\nxx"})
    r = post_file(client, path, skip_invalid="true")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["split_counts"]["train"] == {"a": 3, "b": 3}
    assert [f["file"] for f in ds["invalid_files"]] == ["a/broken.png"]


def test_cifar_python_zip_and_tar_gz(client, tmp_path):
    for kind, name in (("zip", "cifar.zip"), ("tar", "cifar.tar.gz")):
        path = cifar_python_archive(tmp_path / name, kind, batches=("data_batch_1", "test_batch"))
        r = post_file(client, path)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["format"] == "cifar10"
        assert ds["class_names"][:3] == ["airplane", "automobile", "bird"] and ds["num_classes"] == 10
        assert sum(ds["split_counts"]["train"].values()) == 1017
        assert sum(ds["split_counts"]["test"].values()) == 1017
        assert ds["num_images"] == 2034


def test_register_directory_under_the_root(client, settings, tmp_path):
    root = settings.dataset_root
    shutil.copytree(CIFAR_DIR, root / "cifar" / "cifar-10-batches-py")
    r = client.post("/datasets/register", json={"path": "cifar", "name": "cifar-subset"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["source"] == "local" and ds["format"] == "cifar10" and ds["num_images"] == 5085
    assert sum(ds["split_counts"]["train"].values()) == 4 * 1017

    folder = root / "colours"
    with zipfile.ZipFile(color_images_zip(tmp_path / "c.zip", {"a": 2, "b": 2})) as zf:
        zf.extractall(folder)
    r = client.post("/datasets/register", json={"path": str(folder)})
    assert r.status_code == 201, r.text
    assert r.json()["split_counts"] == {"train": {"a": 2, "b": 2}}


def test_register_refuses_paths_outside_the_root(client, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    r = client.post("/datasets/register", json={"path": str(outside)})
    assert r.status_code == 403
    assert "outside the dataset root" in r.json()["error"]["message"]
    r = client.post("/datasets/register", json={"path": "../elsewhere"})
    assert r.status_code == 403
    r = client.post("/datasets/register", json={"path": "missing"})
    assert r.status_code == 422 and "not a directory" in r.json()["error"]["message"]


def test_png_roundtrip_factory_makes_real_images():
    import io

    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png_bytes(np.full((4, 4, 3), 7, dtype=np.uint8))))
    assert img.size == (4, 4)
