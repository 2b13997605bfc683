"""Job lifecycle against real SQL: cancel, claim fencing, versions competing for /predict, pins."""

from __future__ import annotations

import io
import shutil
import threading
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import update

from app import job_state
from app.db import make_engine, make_sessionmaker, session_scope
from app.job_state import LeaseLost
from app.models import Job, utcnow
from tests.factories import only, png_bytes, tiny_job
from worker.reaper import Reaper
from worker.runner import JobRunner


@pytest.fixture
def runner(settings):
    engine = make_engine(settings.resolved_database_url())
    yield JobRunner(settings, make_sessionmaker(engine), worker_id="test")
    engine.dispose()


def job_body(dataset_id: str, **overrides) -> dict:
    return tiny_job(dataset_id, **{"epochs": 2, "batch_size": 12, "val_fraction": 0.25, **overrides})


def test_cancel_a_queued_job_and_the_worker_skips_it(client, runner, enqueued, dataset_id):
    job = client.post("/jobs", json=job_body(dataset_id)).json()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert runner.run(enqueued[0]) == "skipped"
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "canceled"
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "canceled"  # idempotent


def test_cancel_a_running_job_stops_it_within_an_epoch(client, runner, enqueued, dataset_id):
    job = client.post("/jobs", json=job_body(dataset_id, epochs=300)).json()
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run(enqueued[0])))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not client.get(f"/jobs/{job['id']}").json()["epochs"]:
        time.sleep(0.1)
    assert client.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    thread.join(timeout=120)
    assert outcome == ["canceled"]
    final = client.get(f"/jobs/{job['id']}").json()
    assert final["status"] == "canceled" and len(final["epochs"]) < 300
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200  # canceling a canceled job is a no-op


def test_a_finished_job_cannot_be_canceled(client, runner, enqueued, dataset_id):
    job = client.post("/jobs", json=job_body(dataset_id, epochs=1)).json()
    assert runner.run(enqueued[0]) == "succeeded"
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already succeeded" in r.json()["error"]["message"]


def test_claims_are_exclusive_and_stale_attempts_are_fenced(client, runner, settings, dataset_id):
    job_id = uuid.UUID(client.post("/jobs", json=job_body(dataset_id)).json()["id"])
    first = runner.claim(job_id)
    assert first == 1
    assert runner.claim(job_id) is None  # live lease: nobody else may take it
    with session_scope(runner.factory) as s:  # the lease runs out (the worker died)
        s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=Job.created_at))
    assert runner.claim(job_id) is None  # only the reaper puts a dead worker's job back
    sent: list[uuid.UUID] = []
    reaper, later = Reaper(settings, runner.factory, sent.append), utcnow() + timedelta(minutes=1)
    mine = only(job_id)  # on PostgreSQL the sweeps also see other tests' rows
    assert mine(reaper.sweep(now=later).requeued) == [job_id] and mine(sent) == []  # back off before the retry
    assert mine(reaper.sweep(now=later + timedelta(seconds=settings.retry_backoff_seconds)).sent) == [job_id]
    with session_scope(runner.factory) as s:  # (the sweeps ran a minute ahead of the clock)
        s.execute(update(Job).where(Job.id == job_id).values(retry_after=None))
    second = runner.claim(job_id)
    assert second == 2
    assert runner.renew_lease(job_id, second) is True
    assert runner.renew_lease(job_id, first) is False
    with pytest.raises(LeaseLost), session_scope(runner.factory) as s:
        job_state.succeed(s, job_id, first)
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_failed_job_reports_a_readable_error(client, runner, enqueued, dataset_id, settings):
    job = client.post("/jobs", json=job_body(dataset_id)).json()
    shutil.rmtree(settings.datasets_dir / job["dataset_id"])  # the files vanished after the upload
    assert runner.run(enqueued[0]) == "failed"
    final = client.get(f"/jobs/{job['id']}").json()
    assert final["status"] == "failed" and "manifest.json" in final["error"]


def predict_one(client, **form):
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 220
    files = [("files", ("red.png", io.BytesIO(png_bytes(img)), "image/png"))]
    r = client.post("/predict", files=files, data=form)
    assert r.status_code == 200, r.text
    return r.json()


def test_versions_compete_and_operators_can_pin(client, runner, enqueued, dataset_id):
    name = f"m-{uuid.uuid4().hex[:8]}"
    # Version 1 learns; version 2 barely trains (tiny learning rate), so version 1 keeps serving.
    client.post("/jobs", json=job_body(dataset_id, model_name=name, epochs=4, learning_rate=0.01))
    client.post("/jobs", json=job_body(dataset_id, model_name=name, epochs=1, learning_rate=1e-9))
    assert [runner.run(j) for j in enqueued] == ["succeeded", "succeeded"]
    model = client.get(f"/models/{name}").json()
    assert [v["version"] for v in model["versions"]] == [1, 2]
    accs = {v["version"]: v["val_accuracy"] for v in model["versions"]}
    best = max(accs, key=lambda v: (accs[v], v))
    assert model["serving_version"] == best and model["pinned_version"] is None
    assert predict_one(client, model=name)["version"] == best

    other = 1 if best == 2 else 2
    r = client.post(f"/models/{name}/versions/{other}/promote")
    assert r.status_code == 200 and r.json()["serving_version"] == other
    assert predict_one(client, model=name)["version"] == other  # picked up without a restart
    assert predict_one(client, model=name, version=str(best))["version"] == best
    assert client.delete(f"/models/{name}/pin").json()["serving_version"] == best
    assert client.post(f"/models/{name}/versions/9/promote").status_code == 404
    assert name in [m["name"] for m in client.get("/models").json()]
    listed = client.get("/jobs", params={"status": "succeeded", "limit": 500}).json()
    assert listed["total"] >= 2 and all(j["status"] == "succeeded" for j in listed["items"])
