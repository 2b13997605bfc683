"""Live events through a real `visiontune api` process: a client reads a job's events while it trains (here, in
this process), is cut off mid-job, reconnects with Last-Event-ID, and has received exactly the events the worker
published, in order, none twice; the stream closes after the terminal status."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
import redis

from app import events
from app.db import make_engine, make_sessionmaker
from app.events import Publisher, stream_key
from tests.conftest import REDIS_URL
from tests.factories import color_images_zip, tiny_job
from tests.processes import api_server, bearer, local_api
from visiontune.events import JobEvent, parse_sse
from worker.runner import JobRunner

pytestmark = pytest.mark.e2e


def read_events(client: httpx.Client, job_id: str, last_event_id: str | None, stop_after: int | None) -> list[JobEvent]:
    """Events of one connection: stop_after of them (then the connection is dropped), or all until it closes."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got: list[JobEvent] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200, r.read()
        for event in parse_sse(r.iter_lines()):
            got.append(event)
            if stop_after is not None and len(got) == stop_after:
                break  # leaving the block closes the connection mid-stream
    return got


def wait_for_entries(client: redis.Redis, key: str, count: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while client.xlen(key) < count:
        assert time.monotonic() < deadline, f"{key} never held {count} events"
        time.sleep(0.05)


def test_reconnect_with_last_event_id_loses_and_repeats_nothing(tmp_path):
    local = local_api(tmp_path, f"events-{uuid.uuid4().hex[:8]}", REDIS_URL)
    with api_server(tmp_path, local.env) as api:
        store = redis.Redis.from_url(f"{REDIS_URL}/0")
        events.set_publisher(Publisher(store, ttl_seconds=600, progress_interval=0.05))
        engine = make_engine(local.settings.resolved_database_url())
        try:
            client = httpx.Client(base_url=api.url, headers=bearer(local.key), timeout=30)
            archive = color_images_zip(tmp_path / "rgb.zip", {"red": 16, "green": 16, "blue": 16}, size=16)
            r = client.post("/datasets", files={"file": ("rgb.zip", archive.read_bytes())}, timeout=60)
            assert r.status_code == 201, r.text
            r = client.post("/jobs", json=tiny_job(r.json()["id"], epochs=3, batch_size=4, val_fraction=0.25))
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            key = stream_key(job_id)

            runner = JobRunner(local.settings, make_sessionmaker(engine), worker_id="test-events")
            outcome: list[str] = []
            trainer = threading.Thread(target=lambda: outcome.append(runner.run(uuid.UUID(job_id))), daemon=True)
            first = read_events(client, job_id, None, stop_after=1)  # the queued status, before training starts
            trainer.start()
            first += read_events(client, job_id, first[-1].id, stop_after=3)  # running and progress, live
            # cut off: the worker goes on publishing while nobody listens
            wait_for_entries(store, key, len(first) + 5)
            second = read_events(client, job_id, first[-1].id, stop_after=None)  # until the stream closes
            trainer.join(timeout=120)
            assert outcome == ["succeeded"]

            published = [events.decode(i, f) for i, f in store.xrange(key)]
            received = first + second
            assert [e.id for e in received] == [e.id for e in published]
            assert [(e.type, e.data) for e in received] == [(e.type, e.data) for e in published]
            assert received[0].data["status"] == "queued" and received[-1].data["status"] == "succeeded"
            assert [e.data["epoch"] for e in received if e.type == "epoch"] == [1, 2, 3]
            assert sum(e.type == "progress" for e in received) >= 3
            client.close()
        finally:
            events.set_publisher(None)
            engine.dispose()
            store.close()
