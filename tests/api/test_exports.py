"""Exports through the API and a worker: queued by the API, made and verified by worker.exporter, files checked
by sha256, per project; a job's `exports` are queued when it succeeds; an export whose worker died is made again
once the reaper finds its lease expired."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.db import make_engine, make_sessionmaker, session_scope
from app.main import create_app
from app.models import Export, utcnow
from tests.factories import cifar_imagefolder_zip, tiny_job
from worker.exporter import run_export
from worker.reaper import Reaper
from worker.runner import JobRunner

pytest.importorskip("onnxruntime")


@pytest.fixture
def service(settings, enqueued, tmp_path):
    """(client of a fresh project, settings, session factory, runner, queued exports) on the test database."""
    exports: list[uuid.UUID] = []
    app = create_app(settings, enqueue=enqueued.append, enqueue_export=exports.append)
    admin = {"Authorization": f"Bearer {settings.admin_key}"}
    with TestClient(app, raise_server_exceptions=False, headers=admin) as c:
        project = f"exp-{uuid.uuid4().hex[:8]}"
        key = c.post("/keys", json={"name": "t", "scopes": ["train", "predict"], "project": project}).json()["key"]
        client = TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {key}"})
        engine = make_engine(settings.resolved_database_url())
        factory = make_sessionmaker(engine)
        runner = JobRunner(settings, factory, worker_id="test")
        runner.enqueue_export = exports.append
        yield client, settings, factory, runner, exports, enqueued
        engine.dispose()


def trained_version(client, runner, enqueued, tmp_path, **fields) -> dict:
    cifar_imagefolder_zip(tmp_path / "ds.zip", train_per_class=30, test_per_class=10)
    ds = client.post("/datasets", files={"file": ("ds.zip", (tmp_path / "ds.zip").read_bytes())}).json()
    body = tiny_job(ds["id"], epochs=2, batch_size=16, val_fraction=0.2, **fields)
    job = client.post("/jobs", json=body)
    assert job.status_code == 202, job.text
    assert runner.run(enqueued[-1]) == "succeeded"
    return client.get(f"/jobs/{job.json()['id']}").json()


def test_export_queued_made_verified_and_downloaded(service, tmp_path):
    client, settings, factory, runner, exports, enqueued = service
    job = trained_version(client, runner, enqueued, tmp_path)
    base = f"/models/{job['model_name']}/versions/1/exports"
    r = client.post(base, json={"format": "onnx"})
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    assert client.post(base, json={"format": "onnx"}).status_code == 200  # asked twice: the same export
    assert exports == [uuid.UUID(r.json()["id"])]
    assert client.get(f"{base}/onnx").status_code == 409  # not made yet
    assert run_export(settings, factory, exports[0]) == "verified"
    assert run_export(settings, factory, exports[0]) == "skipped"  # a duplicate task does nothing
    [made] = client.get(base).json()
    assert made["status"] == "verified" and made["report"]["val"]["passed"] and made["report"]["test"]["passed"]
    assert made["report"]["val"]["top1_agreement"] >= 0.99
    assert made["meta"]["class_names"] == ["airplane", "automobile", "frog"] and made["meta"]["image_size"] == 32
    file = client.get(f"{base}/onnx")
    assert file.status_code == 200 and "attachment" in file.headers["content-disposition"]
    assert hashlib.sha256(file.content).hexdigest() == made["sha256"] == file.headers["x-checksum-sha256"]
    assert len(file.content) == made["size_bytes"]
    # int8: calibrated on training images; its verdict follows its own report.
    r = client.post(base, json={"format": "onnx-int8"})
    status = run_export(settings, factory, uuid.UUID(r.json()["id"]))
    int8 = next(e for e in client.get(base).json() if e["format"] == "onnx-int8")
    assert status == int8["status"] and status in ("verified", "rejected")
    assert (status == "verified") == all(s["passed"] for s in int8["report"].values())
    assert int8["size_bytes"] < made["size_bytes"]
    # Another project sees none of it.
    other = TestClient(
        client.app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {settings.admin_key}"}
    )
    assert other.get(base).status_code == 404 and other.get(f"{base}/onnx").status_code == 404
    assert client.post(base, json={"format": "tensorrt"}).status_code == 422


def test_job_exports_redelivery_and_failure(service, tmp_path):
    client, settings, factory, runner, exports, enqueued = service
    job = trained_version(client, runner, enqueued, tmp_path, exports=["onnx"])
    assert len(exports) == 1  # queued by the runner when the job succeeded
    # A worker that died mid-export left it running: a re-delivered task leaves it be (it may still be alive),
    # until its lease has run out and the reaper puts it back and sends it again.
    with session_scope(factory) as s:
        s.execute(
            update(Export)
            .where(Export.id == exports[0])
            .values(status="running", attempt=1, lease_expires_at=utcnow() + timedelta(seconds=30))
        )
    assert run_export(settings, factory, exports[0]) == "skipped"
    resent: list[uuid.UUID] = []
    reaper = Reaper(settings, factory, lambda _id: None, send_export=resent.append)
    later = utcnow() + timedelta(seconds=31)
    assert exports[0] in reaper.sweep(now=later).exports_requeued and exports[0] in resent
    assert run_export(settings, factory, exports[0]) == "verified"
    with session_scope(factory) as s:
        remade = s.get(Export, exports[0])
        assert remade.attempt == 2 and remade.failures == 1 and remade.error is None
    # Without its dataset an export cannot be calibrated or verified: it fails with the reason, and may be retried.
    assert client.delete(f"/datasets/{job['dataset_id']}").status_code == 204
    base = f"/models/{job['model_name']}/versions/1/exports"
    r = client.post(base, json={"format": "onnx-int8"})
    assert run_export(settings, factory, uuid.UUID(r.json()["id"])) == "failed"
    failed = next(e for e in client.get(base).json() if e["format"] == "onnx-int8")
    assert "dataset was deleted" in failed["error"]
    assert client.get(f"{base}/onnx-int8").status_code == 409
    again = client.post(base, json={"format": "onnx-int8"})
    assert again.status_code == 202 and again.json()["status"] == "queued"


def test_a_verified_export_serves_and_a_rejected_one_never_does(service, tmp_path):
    client, settings, factory, runner, exports, enqueued = service
    job = trained_version(client, runner, enqueued, tmp_path)
    name = job["model_name"]
    export_id = uuid.UUID(client.post(f"/models/{name}/versions/1/exports", json={"format": "onnx"}).json()["id"])
    assert run_export(settings, factory, export_id) == "verified"
    data = cifar_imagefolder_zip(tmp_path / "probe.zip", train_per_class=1)["heldout"][:6]
    files = [("files", (f"{i}.png", img, "image/png")) for i, (img, _) in enumerate(data)]

    def answer(backend: str, model: str = name) -> dict:
        app = create_app(settings.model_copy(update={"predict_backend": backend}), enqueue=lambda _id: None)
        with TestClient(app, raise_server_exceptions=False, headers=client.headers) as c:
            out = c.post("/predict", files=files, data={"model": model})
            assert out.status_code == 200, out.text
            return out.json()

    torch_answer, onnx_answer = answer("torch"), answer("onnx")
    assert torch_answer["backend"] == "torch" and onnx_answer["backend"] == "onnx"
    for a, b in zip(torch_answer["predictions"], onnx_answer["predictions"], strict=True):
        assert a["top"][0]["label"] == b["top"][0]["label"]
        assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 1e-3
    assert answer("int8")["backend"] == "torch"  # no int8 export: torch answers
    # A pin or an alias may name its backend, whatever the server's default.
    r = client.post(f"/models/{name}/versions/1/promote", json={"backend": "onnx"})
    assert r.status_code == 200 and r.json()["pinned_backend"] == "onnx", r.text
    assert answer("torch")["backend"] == "onnx"
    r = client.put(f"/models/{name}/aliases/fast", json={"version": 1, "backend": "onnx"})
    assert r.json()["alias_backends"] == {"fast": "onnx"}
    assert client.put(f"/models/{name}/aliases/plain", json={"version": 1}).json()["alias_backends"] == {"fast": "onnx"}
    assert answer("torch", f"{name}@fast")["backend"] == "onnx"
    assert answer("torch", f"{name}@plain")["backend"] == "torch"
    assert client.delete(f"/models/{name}/pin").json()["pinned_backend"] is None
    assert client.post(f"/models/{name}/versions/1/promote", json={"backend": "tensorrt"}).status_code == 422
    # A rejected export is never served, whatever is asked for.
    with session_scope(factory) as s:
        s.execute(update(Export).where(Export.id == export_id).values(status="rejected"))
    assert answer("onnx")["backend"] == "torch" and answer("auto")["backend"] == "torch"
