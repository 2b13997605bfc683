"""POST /jobs/estimate in-process: the job's size, the quota's TFLOPs, and seconds from the project's measured
images/s for the same setup, else from the server's achieved TFLOP/s, else none; validated like POST /jobs."""

from __future__ import annotations

import uuid

import pytest

from app.db import session_scope
from app.models import Epoch, Job
from app.services.quotas import TRAIN_PASSES, forward_tflops
from tests.factories import tiny_job

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def estimate(client, body: dict, **headers: str) -> dict:
    r = client.post("/jobs/estimate", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def measured_job(factory, dataset_id: str, epochs: list[tuple[float, float, float | None]], **fields) -> None:
    """A finished job with epochs of (images/s, seconds, TFLOP/s), as a worker would have recorded them."""
    body = tiny_job(dataset_id, **fields)
    with session_scope(factory) as s:
        job = Job(
            dataset_id=uuid.UUID(dataset_id),
            model_name=body["model_name"],
            arch=body["arch"],
            weights="none",
            strategy=body["strategy"],
            config=body,
            status="succeeded",
        )
        s.add(job)
        s.flush()
        for i, (ips, seconds, tflops) in enumerate(epochs, 1):
            s.add(
                Epoch(
                    job_id=job.id,
                    epoch=i,
                    attempt=1,
                    train_loss=1.0,
                    train_accuracy=0.5,
                    learning_rate=0.01,
                    seconds=seconds,
                    images_per_second=ips,
                    tflops=tflops,
                )
            )


def test_without_history_the_size_is_known_and_the_time_is_not(client, dataset_id):
    got = estimate(client, tiny_job(dataset_id, epochs=3, val_fraction=0.25))
    # 12 images per class, 3 of each held out for validation
    assert got["images_per_epoch"] == 27 and got["epochs"] == 3
    per_image = forward_tflops("resnet18", 32)
    assert got["tflops"] == pytest.approx(3 * 27 * per_image * TRAIN_PASSES)
    assert got["seconds"] is None and got["images_per_second"] is None and got["history_epochs"] == 0
    assert "not measured" in got["basis"]
    assert estimate(client, tiny_job(dataset_id, val_fraction=0))["images_per_epoch"] == 36
    assert client.get("/jobs").json()["total"] == 0  # nothing was submitted


def test_the_same_setup_measured_in_the_project_gives_seconds(client, factory, dataset_id):
    # 100 images/s for 1 s and 400 images/s for 3 s: 1300 images in 4 s
    measured_job(factory, dataset_id, [(100.0, 1.0, 0.5), (400.0, 3.0, 2.0)])
    got = estimate(client, tiny_job(dataset_id, epochs=10, val_fraction=0.25))
    assert got["images_per_second"] == pytest.approx(1300 / 4)
    assert got["seconds"] == pytest.approx(27 * 10 / (1300 / 4))
    assert got["history_epochs"] == 2 and "resnet18" in got["basis"] and "images/s" in got["basis"]


def test_another_setup_falls_back_on_the_servers_achieved_tflops(client, factory, dataset_id):
    measured_job(factory, dataset_id, [(100.0, 2.0, 0.25), (100.0, 2.0, 0.75)], image_size=64)
    got = estimate(client, tiny_job(dataset_id, epochs=2, val_fraction=0.25, strategy="full"))
    work = forward_tflops("resnet18", 32) * 3.0  # full: a forward, a backward and the weights' gradients
    assert got["seconds"] == pytest.approx(2 * 27 * work / 0.5)
    assert got["images_per_second"] == pytest.approx(0.5 / work)
    assert got["history_epochs"] == 2 and "TFLOP/s" in got["basis"]


def test_bad_bodies_answer_what_post_jobs_answers(client, dataset_id):
    for body in (
        tiny_job(uuid.uuid4()),
        tiny_job(dataset_id, epochs=0),
        tiny_job(dataset_id, arch="nosuchnet"),
        {"model_name": "m"},
        tiny_job(dataset_id, epochs=100_000),
    ):
        got = client.post("/jobs/estimate", json=body)
        submitted = client.post("/jobs", json=body)
        assert got.status_code == submitted.status_code == 422, got.text
        assert got.json()["error"]["code"] == submitted.json()["error"]["code"]
    key = client.post("/keys", json={"name": "o", "scopes": ["train"], "project": f"o-{uuid.uuid4().hex[:8]}"})
    other = {"Authorization": f"Bearer {key.json()['key']}"}
    r = client.post("/jobs/estimate", json=tiny_job(dataset_id), headers=other)
    assert r.status_code == 422 and "does not exist" in r.json()["error"]["message"]
