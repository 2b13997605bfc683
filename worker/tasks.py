"""Thin Celery tasks: take a job id, hand it to the runner."""

from __future__ import annotations

import uuid

from celery import Celery

from worker.celery_app import TRAIN_TASK


def register_tasks(celery: Celery) -> None:
    """Attach the training task to celery."""

    @celery.task(name=TRAIN_TASK)
    def train_job(job_id: str) -> str:
        from app.config import get_settings
        from worker.celery_app import send_train_task
        from worker.runner import get_runner

        settings = get_settings()
        runner = get_runner(enqueue=lambda jid: send_train_task(celery, settings, jid, resent=True))
        return runner.run(uuid.UUID(job_id))
