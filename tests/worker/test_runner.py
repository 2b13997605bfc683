"""The runner trains a real job in-process against real SQL and serves it through /predict; a device that cannot be
set up, or a training that raises, fails the job with its message and leaves the worker's gauges idle."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from app.db import make_engine, make_sessionmaker
from app.ml.engine import DeviceSetup
from app.models import Checkpoint, Epoch
from tests.factories import cifar_imagefolder_zip, tiny_job
from tests.prometheus import Samples, parse, value
from worker import runner as runner_module
from worker.runner import JobRunner
from worker.telemetry import worker_name


def upload(client: TestClient, path: Path, **form: str) -> dict:
    with path.open("rb") as f:
        r = client.post("/datasets", files={"file": (path.name, f, "application/zip")}, data=form)
    assert r.status_code == 201, r.text
    return r.json()


def metric_samples() -> Samples:
    return parse(generate_latest(REGISTRY).decode())


def run_enqueued(settings, enqueued) -> list[str]:
    engine = make_engine(settings.resolved_database_url())
    runner = JobRunner(settings, make_sessionmaker(engine), worker_id="test")
    outcomes = [runner.run(job_id) for job_id in enqueued]
    enqueued.clear()
    engine.dispose()
    return outcomes


def test_job_trains_records_epochs_and_serves_best(client, settings, enqueued, tmp_path):
    extra = cifar_imagefolder_zip(tmp_path / "ds.zip", train_per_class=40, test_per_class=15)
    ds = upload(client, tmp_path / "ds.zip", name="three-classes")
    assert ds["split_counts"]["test"] == {"airplane": 15, "automobile": 15, "frog": 15}
    name = f"m-{uuid.uuid4().hex[:6]}"
    body = {
        "dataset_id": ds["id"],
        "model_name": name,
        "arch": "efficientnet_lite0",
        "strategy": "linear",
        "epochs": 3,
        "image_size": 64,
        "batch_size": 16,
        "learning_rate": 0.01,
        "val_fraction": 0.25,
    }
    r = client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and enqueued == [uuid.UUID(job["id"])]

    assert run_enqueued(settings, enqueued) == ["succeeded"]
    job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    assert [e["epoch"] for e in job["epochs"]] == [1, 2, 3]
    assert job["best_checkpoint"]["epoch"] == job["best_epoch"]
    assert job["test_metrics"]["count"] == 45
    assert job["test_metrics"]["accuracy"] > 0.5
    assert len(job["test_metrics"]["confusion_matrix"]) == 3
    assert job["model_version"] == 1

    engine = make_engine(settings.resolved_database_url())
    with make_sessionmaker(engine)() as s:
        ckpts = s.query(Checkpoint).filter_by(job_id=uuid.UUID(job["id"])).all()
        assert len(ckpts) == 3 and sum(c.is_best for c in ckpts) == 1
        kept = [c for c in ckpts if not c.pruned]
        assert all(Path(c.path).exists() for c in kept)
        assert all(not Path(c.path).exists() for c in ckpts if c.pruned)
        assert s.query(Epoch).filter_by(job_id=uuid.UUID(job["id"])).count() == 3
    engine.dispose()

    images = extra["heldout"][:30]
    files = [("files", (f"img{i}.png", io.BytesIO(data), "image/png")) for i, (data, _) in enumerate(images)]
    r = client.post("/predict", files=files, data={"model": name, "top_k": "2"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == 1 and out["model_name"] == name
    assert all(len(p["top"]) == 2 for p in out["predictions"])
    correct = sum(p["top"][0]["label"] == label for p, (_, label) in zip(out["predictions"], images, strict=True))
    assert correct / len(images) > 0.5  # three classes: chance is a third


def test_metrics_history_and_plots(client, settings, enqueued, tmp_path):
    cifar_imagefolder_zip(tmp_path / "ds.zip", train_per_class=20, test_per_class=8)
    ds = upload(client, tmp_path / "ds.zip")
    body = {
        "dataset_id": ds["id"],
        "model_name": f"m-{uuid.uuid4().hex[:6]}",
        "arch": "efficientnet_lite0",
        "strategy": "linear",
        "epochs": 2,
        "image_size": 32,
        "batch_size": 16,
        "val_fraction": 0.25,
    }
    job = client.post("/jobs", json=body).json()
    assert client.get(f"/jobs/{job['id']}/curves.png").status_code == 409  # no epoch yet
    assert client.get(f"/jobs/{job['id']}/confusion.png").status_code == 409
    assert run_enqueued(settings, enqueued) == ["succeeded"]
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["test"]["count"] == 24 and metrics["val"]["count"] == 15
    before = metrics["before_finetuning"]
    assert before["status"] == "measured" and before["test"]["count"] == 24
    for png in ("confusion.png", "curves.png"):
        r = client.get(f"/jobs/{job['id']}/{png}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG\r\n\x1a\n") and len(r.content) > 2000
    assert client.get(f"/jobs/{job['id']}/confusion.png", params={"split": "val"}).status_code == 200
    detail = client.get(f"/jobs/{job['id']}").json()
    assert detail["baseline_metrics"]["status"] == "measured"


def test_a_device_that_cannot_be_set_up_fails_the_job_with_its_message(
    client, settings, enqueued, dataset_id, monkeypatch
):
    """DeviceSetup runs after the claim, inside the runner's handlers: a CUDA init error fails the job with its
    message (it does not raise out of the task, leaving the job queued and its message re-sent forever)."""

    def broken(cls: type[DeviceSetup], name: str | None = None) -> DeviceSetup:
        raise RuntimeError("CUDA error: initialization error")

    monkeypatch.setattr(DeviceSetup, "for_device", classmethod(broken))
    r = client.post("/jobs", json=tiny_job(dataset_id, epochs=1))
    assert r.status_code == 202, r.text
    before = metric_samples()
    assert run_enqueued(settings, enqueued) == ["failed"]
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["status"] == "failed" and job["error"] == "RuntimeError: CUDA error: initialization error"
    runs = {"worker": worker_name(), "outcome": "failed"}
    assert value(metric_samples(), "visiontune_training_runs_total", **runs) == (
        value(before, "visiontune_training_runs_total", **runs) + 1
    )


def test_the_throughput_gauge_returns_to_zero_after_a_run_that_raises(
    client, settings, enqueued, dataset_id, monkeypatch
):
    seen: dict[str, object] = {}

    def failing_fit(config, class_names, splits, hooks, setup):  # an epoch under way, then an error
        hooks.telemetry.step(50.0)
        seen["labels"] = dict(zip(("worker", "device"), hooks.telemetry.labels, strict=True))
        seen["during"] = value(metric_samples(), "visiontune_training_images_per_second", **seen["labels"])
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner_module, "fit", failing_fit)
    r = client.post("/jobs", json=tiny_job(dataset_id, epochs=1))
    assert r.status_code == 202, r.text
    assert run_enqueued(settings, enqueued) == ["failed"]
    assert seen["during"] == 50.0
    assert value(metric_samples(), "visiontune_training_images_per_second", **seen["labels"]) == 0
    assert client.get(f"/jobs/{r.json()['id']}").json()["error"] == "RuntimeError: out of memory"
