"""Per-project quotas and budgets, checked before the work, and deletes that remove their files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.db import make_engine, make_sessionmaker
from app.main import create_app
from tests.factories import color_images_zip, png_bytes, tiny_job
from worker.runner import JobRunner


@pytest.fixture
def make_client(settings, enqueued, tmp_path):
    """A client on the test database with some limits changed, sending the settings' admin key."""
    clients = []

    def make(**limits: object) -> TestClient:
        app = create_app(settings.model_copy(update=limits), enqueue=enqueued.append)
        client = TestClient(
            app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {settings.admin_key}"}
        )
        clients.append(client.__enter__())
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def project_client(client: TestClient, name: str) -> TestClient:
    """The same app with a train + predict key of a fresh project (PostgreSQL's database is shared)."""
    import uuid

    project = f"{name}-{uuid.uuid4().hex[:8]}"
    r = client.post("/keys", json={"name": name, "scopes": ["train", "predict"], "project": project})
    assert r.status_code == 201, r.text
    return TestClient(client.app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {r.json()['key']}"})


def upload(client: TestClient, path: Path) -> dict:
    r = client.post("/datasets", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()


def message(r, status: int) -> str:
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


def test_active_jobs_cap_and_training_budget(make_client, tmp_path):
    c = project_client(make_client(max_active_jobs=2, max_job_epochs=50, max_job_tera_flops=100.0), "budget")
    ds = upload(c, color_images_zip(tmp_path / "d.zip", {"a": 10, "b": 10}, size=16))
    body = tiny_job(ds["id"])
    assert c.post("/jobs", json=body).status_code == 202
    second = c.post("/jobs", json=body)
    assert second.status_code == 202
    third = c.post("/jobs", json=body)
    assert "VISIONTUNE_MAX_ACTIVE_JOBS" in message(third, 429) and "2" in message(third, 429)
    assert int(third.headers["retry-after"]) > 0
    assert c.post(f"/jobs/{second.json()['id']}/cancel").status_code == 200
    assert c.post("/jobs", json=body).status_code == 202  # a canceled job frees its place
    c.post(f"/jobs/{second.json()['id']}/cancel")
    for job in c.get("/jobs", params={"status": "queued"}).json()["items"]:
        c.post(f"/jobs/{job['id']}/cancel")
    # The budget: epochs, pixels per batch, and the model's FLOPs × images × epochs, each naming its limit.
    assert "VISIONTUNE_MAX_JOB_EPOCHS" in message(c.post("/jobs", json={**body, "epochs": 51}), 422)
    huge = {**body, "epochs": 1000, "image_size": 1024, "batch_size": 4096}
    assert "epochs" in message(c.post("/jobs", json=huge), 422)
    wide = {**body, "image_size": 1024, "batch_size": 4096}
    assert "VISIONTUNE_MAX_BATCH_PIXELS" in message(c.post("/jobs", json=wide), 422)
    costly = {**body, "arch": "resnet50", "image_size": 512, "epochs": 50}
    assert "VISIONTUNE_MAX_JOB_TERA_FLOPS" in message(c.post("/jobs", json=costly), 422)
    assert message(c.post("/jobs", json={**body, "epochs": True}), 422)  # a boolean is not a number


def test_storage_quota_counts_datasets(make_client, tmp_path):
    first_zip = color_images_zip(tmp_path / "a.zip", {"a": 10, "b": 10}, size=16)
    c = project_client(make_client(storage_quota_bytes=30_000), "storage")
    first = upload(c, first_zip)
    assert 0 < first["size_bytes"] <= 30_000
    # The second one would unpack past what is left: refused while unpacking, nothing kept.
    big = color_images_zip(tmp_path / "b.zip", {"a": 40, "b": 40}, size=16)
    refused = message(c.post("/datasets", files={"file": ("b.zip", big.read_bytes())}), 413)
    assert "unpacks to more than" in refused and "VISIONTUNE_STORAGE_QUOTA_BYTES" in refused
    listed = c.get("/datasets").json()
    assert [d["id"] for d in listed["items"]] == [first["id"]]
    # Deleting frees the quota.
    assert c.delete(f"/datasets/{first['id']}").status_code == 204
    assert upload(c, first_zip)["size_bytes"] == first["size_bytes"]


def test_deletes_remove_files_and_refuse_work_in_progress(client, settings, enqueued, tmp_path):
    c = project_client(client, "deletes")
    ds = upload(c, color_images_zip(tmp_path / "d.zip", {"red": 12, "blue": 12}, size=16))
    folder = settings.datasets_dir / ds["id"]
    assert folder.is_dir()
    queued = c.post("/jobs", json=tiny_job(ds["id"], epochs=1)).json()
    assert "queued or running" in message(c.delete(f"/datasets/{ds['id']}"), 409)
    assert "cancel it first" in message(c.delete(f"/jobs/{queued['id']}"), 409)
    # A finished job: trained, served, pinned; deleting it removes its files and its version, lifts the pin.
    engine = make_engine(settings.resolved_database_url())
    runner = JobRunner(settings, make_sessionmaker(engine), worker_id="test")
    assert runner.run(enqueued[-1]) == "succeeded"
    engine.dispose()
    done = c.get(f"/jobs/{queued['id']}").json()
    name = done["model_name"]
    assert c.post(f"/models/{name}/versions/1/promote").json()["pinned_version"] == 1
    checkpoint_dir = settings.checkpoints_dir / queued["id"]
    assert any(checkpoint_dir.iterdir())
    img = np.zeros((16, 16, 3), np.uint8)
    files = [("files", ("x.png", io.BytesIO(png_bytes(img)), "image/png"))]
    assert c.post("/predict", files=files, data={"model": name}).status_code == 200
    assert c.delete(f"/jobs/{queued['id']}").status_code == 204
    assert not checkpoint_dir.exists()
    assert c.get(f"/jobs/{queued['id']}").status_code == 404
    model = c.get(f"/models/{name}").json()
    assert model["versions"] == [] and model["pinned_version"] is None
    files = [("files", ("x.png", io.BytesIO(png_bytes(img)), "image/png"))]
    assert c.post("/predict", files=files, data={"model": name}).status_code == 409
    # The dataset, no longer in use, goes with its files.
    assert c.delete(f"/datasets/{ds['id']}").status_code == 204
    assert not folder.exists() and c.get(f"/datasets/{ds['id']}").status_code == 404
    assert c.delete(f"/datasets/{ds['id']}").status_code == 404
    actions = [e["action"] for e in client.get("/audit", params={"limit": 500}).json()["items"]]
    assert {"job.delete", "dataset.delete", "model.unpin"} <= set(actions)
