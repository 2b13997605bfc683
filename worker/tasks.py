"""The worker's Celery app: the queue's configuration (app.queue) with the tasks registered; thin tasks that take
an id and hand it to the runner or the exporter."""

from __future__ import annotations

import uuid

from celery import Celery

from app.config import get_settings
from app.queue import EXPORT_TASK, TRAIN_TASK, make_celery, send_export_task, send_train_task


def register_tasks(celery: Celery) -> None:
    """Attach the training and export tasks to celery."""

    # The runner and the exporter are imported when a task runs, not here: they import torch, which only the
    # worker process that trains may load (never a parent that forks, nor the launcher).
    @celery.task(name=TRAIN_TASK)
    def train_job(job_id: str) -> str:
        from worker.runner import get_runner

        settings = get_settings()
        runner = get_runner(enqueue=lambda jid: send_train_task(celery, settings, jid, resent=True))
        runner.enqueue_export = lambda export_id: send_export_task(celery, settings, export_id)
        return runner.run(uuid.UUID(job_id))

    @celery.task(name=EXPORT_TASK)
    def export_version(export_id: str) -> str:
        from worker.exporter import run_export
        from worker.runner import get_runner

        runner = get_runner()
        return run_export(get_settings(), runner.factory, uuid.UUID(export_id), owner=runner.worker_id)


def worker_app() -> Celery:
    """The worker's app: settings from the environment, tasks registered."""
    celery = make_celery(get_settings())
    register_tasks(celery)
    return celery
