"""The task queue: task names, priorities, the Celery app's configuration, sending, and what the broker holds.

The API, the reaper and the workers all go through here, and the service depends on nothing above it (the
workers register the tasks under these names, in worker/tasks.py). A task carries one id; the row it names is
committed before its task is sent, and a send that is lost is made good by the reaper, which asks
`broker_probe` which ids the broker still holds.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis
from celery import Celery

from app.config import Settings

log = logging.getLogger("visiontune.queue")

TRAIN_TASK = "visiontune.train_job"
EXPORT_TASK = "visiontune.export_version"

# Priorities on the Redis transport, where the lowest number is served first. A task the reaper or a departing
# worker re-sends (a job resuming from its checkpoint, a retry, a send Redis lost) goes ahead of new submissions:
# an interrupted job does not wait behind the whole queue to continue.
RESENT_PRIORITY = 0
NEW_PRIORITY = 9
PRIORITY_STEPS = [RESENT_PRIORITY, NEW_PRIORITY]
PRIORITY_SEP = "\x06\x16"  # kombu's separator between a queue's name and a priority

Send = Callable[[uuid.UUID], None]
# The ids of the tasks the broker holds (queued, or delivered moments ago and not yet acknowledged); None when
# it cannot tell.
BrokerProbe = Callable[[], set[str] | None]


def make_celery(settings: Settings) -> Celery:
    """Celery on settings.broker_url: late acks, one message at a time, training queue routing."""
    celery = Celery("visiontune", broker=settings.broker_url)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_routes={TRAIN_TASK: {"queue": settings.queue}, EXPORT_TASK: {"queue": settings.queue}},
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis re-delivers an unacknowledged message only after this long. Recovery does not wait for it:
        # the reaper puts back a dead worker's job once its lease (seconds) runs out. Keeping it far longer
        # than any lease means Redis never hands a live worker's message to a second worker.
        broker_transport_options={
            "visibility_timeout": 12 * 3600,
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEP,
        },
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


# ---------------------------------------------------------------- sending


def send_train_task(celery: Celery, settings: Settings, job_id: uuid.UUID, *, resent: bool = False) -> None:
    """Publish the training task for job_id (the job row must already be committed); `resent` jumps the queue."""
    _send(celery, settings, TRAIN_TASK, job_id, resent)


def send_export_task(celery: Celery, settings: Settings, export_id: uuid.UUID, *, resent: bool = False) -> None:
    """Publish the export task for export_id (its row must already be committed); `resent` jumps the queue."""
    _send(celery, settings, EXPORT_TASK, export_id, resent)


def _send(celery: Celery, settings: Settings, task: str, row_id: uuid.UUID, resent: bool) -> None:
    priority = RESENT_PRIORITY if resent else NEW_PRIORITY
    celery.send_task(task, args=[str(row_id)], queue=settings.queue, priority=priority)


def api_senders(settings: Settings) -> tuple[Send, Send]:
    """(training, export) senders for the API: a send that fails is logged, never raised. The row stays queued in
    SQL: the reaper sends a job's task later; asking for the export again re-sends it."""
    celery = make_celery(settings)

    def train(job_id: uuid.UUID) -> None:
        try:
            send_train_task(celery, settings, job_id)
        except Exception:  # the job stays queued in SQL and the reaper sends it later; logged, not lost
            log.exception("could not enqueue job %s", job_id)

    def export(export_id: uuid.UUID) -> None:
        try:
            send_export_task(celery, settings, export_id)
        except Exception:  # the export stays queued; asking for it again re-sends it
            log.exception("could not enqueue export %s", export_id)

    return train, export


# ---------------------------------------------------------------- what the broker holds (kombu's Redis layout)


def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps queue's messages in, one per priority step, served in this order."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


UNACKED_INDEX = "unacked_index"  # kombu: sorted set of delivery tags by delivery time
UNACKED = "unacked"  # kombu: hash of delivery tag -> [message, exchange, routing key]


def broker_probe(settings: Settings) -> BrokerProbe | None:
    """The probe for the configured broker, or None where it cannot be asked (only Redis can)."""
    url = settings.broker_redis_url()
    return redis_probe(url, settings.queue, settings.requeue_grace_seconds) if url else None


def redis_probe(broker_url: str, queue: str, delivered_within: float) -> BrokerProbe:
    """Ids of the tasks in the Redis queue, or delivered less than `delivered_within` seconds ago and not yet
    acknowledged.

    A worker claims its row as soon as a message is delivered. A message delivered longer ago whose row is still
    queued went to a worker that died before claiming it: Redis would hand it out again only after the
    visibility timeout (hours), so it does not count as held, and the reaper sends the task again. A duplicate
    message is harmless: whichever worker claims second finds the row no longer queued.
    """
    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    keys = redis_queue_keys(queue)

    def held() -> set[str] | None:
        try:
            raw = [item for key in keys for item in cast(list[bytes], client.lrange(key, 0, -1))]
            recent = cast(list[bytes], client.zrangebyscore(UNACKED_INDEX, time.time() - delivered_within, "+inf"))
            if recent:
                unacked = cast(list[bytes | None], client.hmget(UNACKED, recent))
                raw += [item for item in unacked if item is not None]
        except redis.RedisError:
            log.warning("cannot read the broker's queue; not re-sending anything this sweep", exc_info=True)
            return None
        return {row_id for item in raw for row_id in _task_ids(item)}

    return held


def _task_ids(item: bytes) -> list[str]:
    """The ids a kombu message (or an unacked entry: [message, exchange, routing key]) carries as arguments."""
    try:
        message: Any = json.loads(item)
        if isinstance(message, list):
            message = message[0]
        argsrepr = str(message.get("headers", {}).get("argsrepr", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return []
    return [part.strip("()[]'\", ") for part in argsrepr.split(",")]


def queue_lengths(client: redis.Redis, queue: str) -> dict[int, int]:
    """Messages waiting in queue, per priority step (kombu's Redis layout), read in one round trip."""
    pipe = client.pipeline(transaction=False)
    for key in redis_queue_keys(queue):
        pipe.llen(key)
    lengths = cast(list[int], pipe.execute())
    return dict(zip(PRIORITY_STEPS, lengths, strict=True))


def unacked_count(client: redis.Redis) -> int:
    """Messages delivered to workers and not yet acknowledged (on this broker's database, every queue)."""
    return int(cast(int, client.hlen(UNACKED)))
