"""Thin Celery tasks: take a job id, hand it to the runner."""

from __future__ import annotations

import uuid

from celery import Celery

from worker.celery_app import EXPORT_TASK, TRAIN_TASK


def register_tasks(celery: Celery) -> None:
    """Attach the training and export tasks to celery."""

    @celery.task(name=TRAIN_TASK)
    def train_job(job_id: str) -> str:
        from app.config import get_settings
        from worker.celery_app import send_export_task, send_train_task
        from worker.runner import get_runner

        settings = get_settings()
        runner = get_runner(enqueue=lambda jid: send_train_task(celery, settings, jid, resent=True))
        runner.enqueue_export = lambda export_id: send_export_task(celery, settings, export_id)
        return runner.run(uuid.UUID(job_id))

    @celery.task(name=EXPORT_TASK)
    def export_version(export_id: str) -> str:
        from app.config import get_settings
        from worker.exporter import run_export
        from worker.runner import get_runner

        runner = get_runner()
        return run_export(get_settings(), runner.factory, uuid.UUID(export_id), owner=runner.worker_id)
