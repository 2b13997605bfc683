"""Every bad input gets a 4xx JSON error that says what is wrong, and nothing is left behind."""

from __future__ import annotations

import io
import uuid
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.factories import color_images_zip, png_bytes


def error(r, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    return body["error"]["message"]


def upload_bytes(client, data: bytes, name: str = "data.zip", **form):
    return client.post("/datasets", files={"file": (name, io.BytesIO(data), "application/zip")}, data=form)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def dataset(client, tmp_path) -> dict:
    path = color_images_zip(tmp_path / "ok.zip", {"a": 4, "b": 4})
    r = client.post("/datasets", files={"file": ("ok.zip", path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()


def test_upload_errors(client, settings):
    assert "multipart field `file`" in error(client.post("/datasets"), 422)
    assert "not a dataset archive" in error(upload_bytes(client, b"just some text", "notes.txt"), 415)
    assert "not a dataset archive" in error(upload_bytes(client, png_bytes(np.zeros((4, 4, 3), np.uint8))), 415)
    assert "not a dataset archive" in error(upload_bytes(client, b"PK\x03\x04" + b"\x00" * 200), 415)
    assert "no class folders" in error(
        upload_bytes(client, zip_bytes({"a.png": png_bytes(np.zeros((4, 4, 3), np.uint8))})), 422
    )
    assert "no class folders" in error(upload_bytes(client, zip_bytes({})), 422)
    single = zip_bytes({f"only/{i}.png": png_bytes(np.zeros((4, 4, 3), np.uint8)) for i in range(3)})
    assert "at least 2 classes" in error(upload_bytes(client, single), 422)
    corrupt = zip_bytes(
        {
            "a/1.png": png_bytes(np.zeros((4, 4, 3), np.uint8)),
            "b/1.png": png_bytes(np.ones((4, 4, 3), np.uint8)),
            "b/2.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
        }
    )
    message = error(upload_bytes(client, corrupt), 422)
    assert "b/2.jpg" in message and "skip_invalid" in message
    escape = zip_bytes({"../evil/1.png": b"x", "a/1.png": b"y"})
    assert "unsafe path" in error(upload_bytes(client, escape), 422)
    # Nothing refused leaves files behind.
    leftovers = [p for p in settings.datasets_dir.glob("*")] if settings.datasets_dir.exists() else []
    assert leftovers == []
    assert list(settings.uploads_dir.glob("*")) == []


def test_damaged_zip_is_422(client):
    good = zip_bytes({"a/1.png": png_bytes(np.zeros((4, 4, 3), np.uint8)), "b/1.png": b"z" * 100})
    damaged = good[: len(good) // 2] + b"\x00" * 10 + good[len(good) // 2 + 10 :]
    assert "damaged" in error(upload_bytes(client, damaged), 422)


def test_upload_over_the_limit_is_413(tmp_path, database_url):
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, max_upload_bytes=1000, auth="off")
    with TestClient(create_app(settings, enqueue=lambda _id: None), headers={"Authorization": "Bearer -"}) as client:
        data = color_images_zip(tmp_path / "big.zip", {"a": 20, "b": 20}).read_bytes()
        assert "larger than the limit" in error(upload_bytes(client, data), 413)


def test_job_errors(client, dataset):
    base = {"dataset_id": dataset["id"], "arch": "resnet18", "weights": "none", "image_size": 32}
    missing = {**base, "dataset_id": str(uuid.uuid4())}
    assert "does not exist" in error(client.post("/jobs", json=missing), 422)
    assert "unknown architecture 'resnet9000'" in error(client.post("/jobs", json={**base, "arch": "resnet9000"}), 422)
    assert "unknown architecture" in error(client.post("/jobs", json={**base, "arch": "timm/not_a_model"}), 422)
    assert "weights root" in error(client.post("/jobs", json={**base, "weights": "/nope/w.pt"}), 422)
    msg = error(client.post("/jobs", json={**base, "strategy": "partial", "unfreeze_stages": 9}), 422)
    assert "resnet18 has 5 stages" in msg
    assert "epochs" in error(client.post("/jobs", json={**base, "epochs": 0}), 422)
    assert "batch_size" in error(client.post("/jobs", json={**base, "batch_size": 100000}), 422)
    assert "image_size" in error(client.post("/jobs", json={**base, "image_size": 5000}), 422)
    assert "strategy" in error(client.post("/jobs", json={**base, "strategy": "magic"}), 422)
    assert "learning_rat" in error(client.post("/jobs", json={**base, "learning_rat": 0.1}), 422)
    assert "model_name" in error(client.post("/jobs", json={**base, "model_name": "no spaces/slashes"}), 422)
    assert "dataset_id" in error(client.post("/jobs", json={"arch": "resnet18"}), 422)
    assert error(client.post("/jobs", content=b"not json", headers={"content-type": "application/json"}), 422)


def test_lookup_errors(client):
    assert "does not exist" in error(client.get(f"/jobs/{uuid.uuid4()}"), 404)
    assert error(client.get("/jobs/not-a-uuid"), 422)
    assert "does not exist" in error(client.get(f"/datasets/{uuid.uuid4()}"), 404)
    assert "does not exist" in error(client.post(f"/jobs/{uuid.uuid4()}/cancel"), 404)
    assert "does not exist" in error(client.get("/models/nobody"), 404)
    assert "does not exist" in error(client.post("/models/nobody/versions/1/promote"), 404)
    assert error(client.get("/no/such/route"), 404)


def test_predict_errors(client, tmp_path):
    assert "at least one image" in error(client.post("/predict"), 422)
    assert "at least one image" in error(client.post("/predict", data={"model": "x"}), 422)
    bad = [("files", ("notes.txt", io.BytesIO(b"hello"), "text/plain"))]
    assert "notes.txt is not a readable image" in error(client.post("/predict", files=bad), 415)
    empty = [("files", ("e.png", io.BytesIO(b""), "image/png"))]
    assert "e.png is empty" in error(client.post("/predict", files=empty), 422)
    good = [("files", ("ok.png", io.BytesIO(png_bytes(np.zeros((8, 8, 3), np.uint8))), "image/png"))]
    assert "does not exist" in error(client.post("/predict", files=good, data={"model": f"m{uuid.uuid4().hex}"}), 404)
    assert "top_k" in error(client.post("/predict", files=good, data={"top_k": "0"}), 422)


def test_predict_before_any_model_is_409(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", database_url=f"sqlite:///{tmp_path / 'fresh.db'}", auth="off")
    from app.migrate import upgrade

    upgrade(settings.resolved_database_url())
    with TestClient(create_app(settings, enqueue=lambda _id: None), headers={"Authorization": "Bearer -"}) as client:
        good = [("files", ("ok.png", io.BytesIO(png_bytes(np.zeros((8, 8, 3), np.uint8))), "image/png"))]
        assert "no model has been trained yet" in error(client.post("/predict", files=good), 409)
