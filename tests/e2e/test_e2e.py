"""End to end with real processes: uvicorn + a Celery worker on the local Redis and PostgreSQL."""

from __future__ import annotations

import re
import socket
import time
import uuid

import httpx
import pytest

from app.auth import new_key
from tests.conftest import REDIS_URL
from tests.factories import cifar_imagefolder_zip
from tests.processes import bearer, free_port, python, start, stop, wait_http, wait_job
from tests.prometheus import Samples, parse, series, value
from visiontune.events import parse_sse

pytestmark = pytest.mark.e2e


def check_service(base: str, tmp_path, logs, key: str) -> None:
    """Upload real CIFAR images, fine-tune, watch the epochs, classify held-out images (with an admin key)."""
    auth = bearer(key)
    data = cifar_imagefolder_zip(tmp_path / "cifar3.zip", train_per_class=50)
    with (tmp_path / "cifar3.zip").open("rb") as f:
        r = httpx.post(
            f"{base}/datasets", files={"file": ("cifar3.zip", f, "application/zip")}, timeout=120, headers=auth
        )
    assert r.status_code == 201, r.text
    dataset = r.json()
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    job = httpx.post(
        f"{base}/jobs",
        json={
            "dataset_id": dataset["id"],
            "model_name": name,
            "arch": "efficientnet_lite0",
            "strategy": "linear",
            "epochs": 3,
            "image_size": 64,
            "batch_size": 16,
            "learning_rate": 0.01,
            "val_fraction": 0.2,
        },
        timeout=30,
        headers=auth,
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    done = wait_job(base, job_id, {"succeeded", "failed", "canceled"}, 300, logs, auth)
    assert done["status"] == "succeeded", done["error"]
    assert [e["epoch"] for e in done["epochs"]] == [1, 2, 3]
    assert done["best_checkpoint"] is not None and done["model_version"] == 1
    # Live events (published by the real worker and API through their Redis): the finished job's stream replays
    # its history and closes.
    with httpx.stream("GET", f"{base}/jobs/{job_id}/events", headers=auth, timeout=30) as r:
        assert r.status_code == 200, r.read()
        replay = list(parse_sse(r.iter_lines()))
    assert [e.data["status"] for e in replay if e.type == "status"] == ["queued", "running", "succeeded"]
    assert [e.data["epoch"] for e in replay if e.type == "epoch"] == [1, 2, 3]
    assert all(e.id for e in replay) and any(e.type == "progress" for e in replay)

    heldout = data["heldout"]
    files = [("files", (f"{i}.png", img, "image/png")) for i, (img, _) in enumerate(heldout)]
    r = httpx.post(f"{base}/predict", files=files, data={"model": name, "top_k": "3"}, timeout=120, headers=auth)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == name and out["version"] == 1 and out["job_id"] == job_id
    assert len(out["predictions"]) == len(heldout)
    for p in out["predictions"]:
        assert len(p["top"]) == 3
        assert abs(sum(s["probability"] for s in p["top"]) - 1.0) < 1e-3  # three classes: all of them
    correct = sum(p["top"][0]["label"] == label for p, (_, label) in zip(out["predictions"], heldout, strict=True))
    assert correct / len(heldout) > 0.6  # chance is 1/3

    models = httpx.get(f"{base}/models/{name}", timeout=10, headers=auth).json()
    assert models["serving_version"] == 1
    check_metrics(base, auth, job_id, predicted_images=len(heldout))


def check_metrics(base: str, auth: dict[str, str], job_id: str, predicted_images: int) -> None:
    """The API's /metrics adds up every process of the host: the worker's training, the reaper's sweeps, the
    API's own requests and /predict batches, and what is counted at scrape time."""

    def scrape() -> Samples:
        r = httpx.get(f"{base}/metrics", headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        return parse(r.text)

    deadline = time.monotonic() + 60
    samples = scrape()
    while value(samples, "visiontune_reaper_sweeps_total", result="ok") < 1:  # every 5 s, in its own process
        assert time.monotonic() < deadline, "no reaper sweep in /metrics"
        time.sleep(0.5)
        samples = scrape()
    # One worker trained the job: `cpu@host`, or `gpu<i>@host` on cuda:<i> where the launcher saw GPUs.
    [worker] = series(samples, "visiontune_training_epoch_duration_seconds_count")
    assert re.fullmatch(rf"(cpu|gpu\d+)@{re.escape(socket.gethostname())}", worker["worker"]), worker
    assert worker["device"] == "cpu" if worker["worker"].startswith("cpu") else worker["device"].startswith("cuda:")
    assert value(samples, "visiontune_training_epoch_duration_seconds_count", **worker) == 3
    assert value(samples, "visiontune_training_epoch_duration_seconds_sum", **worker) > 0
    assert value(samples, "visiontune_training_images_total", **worker) > 0
    assert value(samples, "visiontune_training_runs_total", worker=worker["worker"], outcome="succeeded") == 1
    assert ("visiontune_training_images_per_second", frozenset(worker.items())) in samples  # 0 now: idle
    assert value(samples, "visiontune_predict_batch_size_images_sum") == predicted_images
    assert value(samples, "visiontune_predict_queue_wait_seconds_count") >= 1
    assert value(samples, "visiontune_jobs", status="succeeded") >= 1
    assert ("visiontune_reaper_actions_total", frozenset({"kind": "job", "action": "resent"}.items())) in samples
    assert value(samples, "visiontune_http_requests_total", method="GET", route="/jobs/{job_id}", status="200") >= 1
    assert value(samples, "visiontune_http_requests_total", method="POST", route="/predict", status="200") == 1
    assert value(samples, "visiontune_broker_up") == 1 and value(samples, "visiontune_database_up") == 1
    assert not any(job_id in dict(labels).get("route", "") for _, labels in samples)  # templates, not raw paths


def test_api_and_worker_processes_on_postgres_and_redis(own_pg_database, tmp_path):
    port = free_port()
    env = {
        "VISIONTUNE_DATABASE_URL": own_pg_database,
        "VISIONTUNE_BROKER_URL": f"{REDIS_URL}/0",
        "VISIONTUNE_QUEUE": f"e2e-{uuid.uuid4().hex[:8]}",
        "VISIONTUNE_DATA_DIR": str(tmp_path / "data"),
        "VISIONTUNE_ADMIN_KEY": new_key(),
    }
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    api = start(python("-m", "launcher.cli", "api", "--port", str(port)), env, api_log)
    worker = start(python("-m", "launcher.cli", "worker"), {**env, "CUDA_VISIBLE_DEVICES": ""}, worker_log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", api, api_log)
        check_service(base, tmp_path, [worker_log, api_log], env["VISIONTUNE_ADMIN_KEY"])
    finally:
        assert stop(worker) is not None
        stop(api)
