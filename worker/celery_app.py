"""The Celery application, configured from Settings (no import-time side effects)."""

from __future__ import annotations

import uuid

from celery import Celery

from app.config import Settings

TRAIN_TASK = "visiontune.train_job"
EXPORT_TASK = "visiontune.export_version"

# Priorities on the Redis transport, where the lowest number is served first. A task the reaper or a departing
# worker re-sends (a job resuming from its checkpoint, a retry, a send Redis lost) goes ahead of new submissions:
# an interrupted job does not wait behind the whole queue to continue.
RESENT_PRIORITY = 0
NEW_PRIORITY = 9
PRIORITY_STEPS = [RESENT_PRIORITY, NEW_PRIORITY]
PRIORITY_SEP = "\x06\x16"  # kombu's separator between a queue's name and a priority


def redis_queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps queue's messages in, one per priority step, served in this order."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


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


def send_train_task(celery: Celery, settings: Settings, job_id: uuid.UUID, *, resent: bool = False) -> None:
    """Publish the training task for job_id (the job row must already be committed); `resent` jumps the queue."""
    priority = RESENT_PRIORITY if resent else NEW_PRIORITY
    celery.send_task(TRAIN_TASK, args=[str(job_id)], queue=settings.queue, priority=priority)


def send_export_task(celery: Celery, settings: Settings, export_id: uuid.UUID, *, resent: bool = False) -> None:
    """Publish the export task for export_id (its row must already be committed); `resent` jumps the queue."""
    priority = RESENT_PRIORITY if resent else NEW_PRIORITY
    celery.send_task(EXPORT_TASK, args=[str(export_id)], queue=settings.queue, priority=priority)


def worker_app() -> Celery:
    """The worker's app: settings from the environment, tasks registered."""
    from app.config import get_settings
    from worker.tasks import register_tasks

    celery = make_celery(get_settings())
    register_tasks(celery)
    return celery
