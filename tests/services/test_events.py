"""Job events (app/events.py) on the real Redis: the publisher and the reader, and a job trained in-process whose
stream holds its statuses, progress and epochs in order."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis

from app import events
from app.config import Settings
from app.events import Publisher, Reader, stream_key
from tests.conftest import REDIS_URL
from tests.factories import tiny_job
from worker.runner import JobRunner


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    yield client
    client.close()


@pytest.fixture
def publisher(redis_client: redis.Redis) -> Iterator[Publisher]:
    """The process-wide publisher on the test Redis, every progress event kept (no rate limit)."""
    pub = Publisher(redis_client, max_len=1000, ttl_seconds=600, progress_interval=0.0)
    events.set_publisher(pub)
    yield pub
    events.set_publisher(None)


def entries(client: redis.Redis, job_id: object) -> list[events.Event]:
    return [events.decode(i, f) for i, f in client.xrange(stream_key(job_id))]


def test_publish_and_read_back_in_order(redis_client):
    job_id = uuid.uuid4()
    pub = Publisher(redis_client, ttl_seconds=600, progress_interval=0.0)
    ids = [pub.publish(job_id, "progress", {"step": i}) for i in range(5)]
    ids.append(pub.publish(job_id, "status", {"status": "succeeded", "error": None, "attempt": 1}))
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert 0 < redis_client.ttl(stream_key(job_id)) <= 600

    async def read() -> tuple[list[events.Event], list[events.Event], list[events.Event]]:
        reader = Reader.from_url(f"{REDIS_URL}/0")
        try:
            await reader.check()
            everything = await reader.history(job_id)
            after_third = await reader.history(job_id, ids[2])
            waited = await reader.wait(job_id, ids[3], block_ms=100)
            return everything, after_third, waited
        finally:
            await reader.close()

    everything, after_third, waited = asyncio.run(read())
    assert [e.id for e in everything] == ids
    assert [e.data.get("step") for e in everything[:5]] == [0, 1, 2, 3, 4]
    assert everything[-1].is_terminal and not everything[0].is_terminal
    assert [e.id for e in after_third] == ids[3:]
    assert [e.id for e in waited] == ids[4:]


def test_progress_is_rate_limited_per_job(redis_client):
    now = [0.0]
    pub = Publisher(redis_client, progress_interval=1.0, clock=lambda: now[0])
    a, b = uuid.uuid4(), uuid.uuid4()
    assert pub.progress_due(a) and pub.progress_due(b)
    assert not pub.progress_due(a)
    now[0] = 0.99
    assert not pub.progress_due(a)
    now[0] = 1.0
    assert pub.progress_due(a) and not pub.progress_due(a)


def test_a_redis_that_does_not_answer_never_raises():
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    pub = Publisher(dead)
    assert pub.publish(uuid.uuid4(), "status", {"status": "running"}) is None
    assert pub.publish(uuid.uuid4(), "status", {"status": "running"}) is None  # paused: no second timeout


def test_unconfigured_publishing_does_nothing():
    events.set_publisher(None)
    assert events.publish(uuid.uuid4(), "status", {"status": "queued"}) is None


def test_events_url_falls_back_to_a_redis_broker(tmp_path):
    assert events.events_url(Settings(data_dir=tmp_path, broker_url="redis://h:1/0")) == "redis://h:1/0"
    assert events.events_url(Settings(data_dir=tmp_path, broker_url="amqp://h//")) is None
    named = Settings(data_dir=tmp_path, broker_url="amqp://h//", events_url="redis://e:2/3")
    assert events.events_url(named) == "redis://e:2/3"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_trained_job_publishes_statuses_progress_and_epochs_in_order(
    client, settings, factory, enqueued, dataset_id, publisher, redis_client
):
    r = client.post("/jobs", json=tiny_job(dataset_id, epochs=2, batch_size=8, val_fraction=0.25))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert JobRunner(settings, factory, worker_id="events-test").run(uuid.UUID(job_id)) == "succeeded"

    stream = entries(redis_client, job_id)
    kinds = [(e.type, e.data.get("status") or e.data.get("epoch")) for e in stream]
    statuses = [e.data["status"] for e in stream if e.type == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert (
        kinds[0] == ("status", "queued") and kinds[1] == ("status", "running") and kinds[-1] == ("status", "succeeded")
    )
    epochs = [e for e in stream if e.type == "epoch"]
    assert [e.data["epoch"] for e in epochs] == [1, 2]
    assert set(epochs[0].data) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "seconds",
        "images_per_second",
    }
    progress = [e for e in stream if e.type == "progress"]
    assert progress, kinds
    # each epoch's progress comes before that epoch's epoch event, and its steps count up
    for epoch in (1, 2):
        steps = [e.data["step"] for e in progress if e.data["epoch"] == epoch]
        assert steps == sorted(steps) and steps[-1] == progress[0].data["steps"]
        last_step = max(i for i, e in enumerate(stream) if e.type == "progress" and e.data["epoch"] == epoch)
        assert last_step < stream.index(epochs[epoch - 1])
    sample = progress[-1].data
    assert set(sample) == {"epoch", "epochs", "step", "steps", "loss", "images_per_second", "eta_seconds"}
    assert sample["epochs"] == 2 and sample["loss"] > 0
    assert sample["eta_seconds"] is not None and sample["eta_seconds"] >= 0
