"""Projects: another project's datasets, jobs, plots and models are 404, and nothing project B does changes what
project A's /predict serves, even under the same model name."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, make_sessionmaker
from tests.factories import color_images_zip, png_bytes, tiny_job
from worker.runner import JobRunner


@pytest.fixture
def runner(settings):
    engine = make_engine(settings.resolved_database_url())
    yield JobRunner(settings, make_sessionmaker(engine), worker_id="test")
    engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def red_image() -> bytes:
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 220
    return png_bytes(img)


def predict(client, headers, model: str) -> dict:
    files = [("files", ("red.png", io.BytesIO(red_image()), "image/png"))]
    r = client.post("/predict", files=files, data={"model": model, "top_k": "2"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def train(client, runner, enqueued, headers, dataset_id: str, **fields) -> dict:
    body = tiny_job(dataset_id, **{"epochs": 2, "batch_size": 12, "val_fraction": 0.25, **fields})
    r = client.post("/jobs", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert runner.run(enqueued[-1]) == "succeeded"
    return client.get(f"/jobs/{r.json()['id']}", headers=headers).json()


def project_key(client, name: str) -> dict[str, str]:
    """A train + predict key of a project of its own (fresh per test: PostgreSQL's database is shared)."""
    r = client.post(
        "/keys", json={"name": name, "scopes": ["train", "predict"], "project": f"{name}-{uuid.uuid4().hex[:8]}"}
    )
    assert r.status_code == 201, r.text
    return bearer(r.json()["key"])


def test_projects_are_isolated(client, runner, enqueued, tmp_path):
    anon = TestClient(client.app, raise_server_exceptions=False)
    admin = project_key(client, "team-a")
    b = project_key(client, "intruder")
    a_zip = color_images_zip(tmp_path / "a.zip", {"red": 12, "green": 12, "blue": 12}, size=16)
    a_data = anon.post("/datasets", files={"file": ("a.zip", a_zip.read_bytes())}, headers=admin).json()
    a_job = train(anon, runner, enqueued, admin, a_data["id"], model_name="shared")
    before = predict(anon, admin, "shared")
    assert before["job_id"] == a_job["id"] and before["version"] == 1

    # Nothing of A is visible to B: lists are empty, ids and names answer 404 (as if they did not exist).
    assert anon.get("/datasets", headers=b).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert anon.get("/jobs", headers=b).json()["items"] == []
    assert anon.get("/models", headers=b).json() == []
    job = a_job["id"]
    for method, path in [
        ("GET", f"/datasets/{a_data['id']}"),
        ("DELETE", f"/datasets/{a_data['id']}"),
        ("GET", f"/jobs/{job}"),
        ("GET", f"/jobs/{job}/metrics"),
        ("GET", f"/jobs/{job}/confusion.png?split=val"),
        ("GET", f"/jobs/{job}/curves.png"),
        ("GET", f"/jobs/{job}/confusion?true=0&predicted=1"),
        ("GET", f"/datasets/{a_data['id']}/samples"),
        ("GET", f"/datasets/{a_data['id']}/images/0"),
        ("POST", f"/jobs/{job}/cancel"),
        ("DELETE", f"/jobs/{job}"),
        ("GET", "/models/shared"),
        ("POST", "/models/shared/versions/1/promote"),
        ("DELETE", "/models/shared/pin"),
    ]:
        r = anon.request(method, path, headers=b)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert a_data["id"] not in r.text or "does not exist" in r.text
    for route in ("/jobs", "/jobs/estimate"):
        r = anon.post(route, json=tiny_job(a_data["id"]), headers=b)
        assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
    # /predict without a model of its own: B has none, A's is not offered.
    files = [("files", ("red.png", io.BytesIO(red_image()), "image/png"))]
    r = anon.post("/predict", files=files, data={"model": "shared"}, headers=b)
    assert r.status_code == 404

    # B trains under A's model name on its own two classes: its own version 1, A's /predict unchanged.
    b_zip = color_images_zip(tmp_path / "b.zip", {"HACKED_red": 12, "HACKED_blue": 12}, size=16)
    b_data = anon.post("/datasets", files={"file": ("b.zip", b_zip.read_bytes())}, headers=b).json()
    b_job = train(anon, runner, enqueued, b, b_data["id"], model_name="shared", epochs=3)
    b_answer = predict(anon, b, "shared")
    assert b_answer["job_id"] == b_job["id"] and b_answer["version"] == 1
    assert {s["label"] for s in b_answer["predictions"][0]["top"]} <= {"HACKED_red", "HACKED_blue"}
    after = predict(anon, admin, "shared")
    assert after["job_id"] == a_job["id"] and after["version"] == 1
    assert not {s["label"] for s in after["predictions"][0]["top"]} & {"HACKED_red", "HACKED_blue"}
    assert [m["name"] for m in anon.get("/models", headers=admin).json()] == ["shared"]
    assert [v["job_id"] for v in anon.get("/models/shared", headers=admin).json()["versions"]] == [a_job["id"]]
    # Lists stay per project, and so do idempotency keys.
    assert [d["id"] for d in anon.get("/datasets", headers=admin).json()["items"]] == [a_data["id"]]
    assert [d["id"] for d in anon.get("/datasets", headers=b).json()["items"]] == [b_data["id"]]
    key = {"Idempotency-Key": "same-key"}
    ra = anon.post("/jobs", json=tiny_job(a_data["id"]), headers={**admin, **key})
    rb = anon.post("/jobs", json=tiny_job(b_data["id"]), headers={**b, **key})
    assert ra.status_code == 202 and rb.status_code == 202 and ra.json()["id"] != rb.json()["id"]
