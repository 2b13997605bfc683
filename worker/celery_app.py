"""The Celery application, configured from Settings (no import-time side effects)."""

from __future__ import annotations

from celery import Celery

from app.config import Settings

TRAIN_TASK = "visiontune.train_job"


def make_celery(settings: Settings) -> Celery:
    """Celery on settings.broker_url: late acks, one message at a time, training queue routing."""
    celery = Celery("visiontune", broker=settings.broker_url)
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_routes={TRAIN_TASK: {"queue": settings.queue}},
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Longer than any training run we expect to keep unacked; the database owns job state anyway.
        broker_transport_options={"visibility_timeout": 12 * 3600},
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


def worker_app() -> Celery:
    """The worker's app: settings from the environment, tasks registered."""
    from app.config import get_settings
    from worker.tasks import register_tasks

    celery = make_celery(get_settings())
    register_tasks(celery)
    return celery
