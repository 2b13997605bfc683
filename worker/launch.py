"""`visiontune worker-process`: one Celery worker process, which its launcher (launcher/workers.py) pinned to one
GPU with CUDA_VISIBLE_DEVICES, or to none."""

from __future__ import annotations

import os

from app.config import get_settings
from app.monitoring.multiproc import mark_dead
from worker import shutdown, telemetry
from worker.tasks import worker_app


def run_worker_process(name: str) -> None:
    """One Celery worker process, pinned by its launcher to one GPU (or none), training one job at a time."""
    settings = get_settings()
    shutdown.install_celery_hook()
    telemetry.set_worker_name(name)
    try:
        _worker_main(settings.queue, name)
    finally:
        mark_dead(os.getpid())  # its live gauges (throughput, GPU memory) leave with it


def _worker_main(queue: str, name: str) -> None:
    worker_app().worker_main(
        [
            "worker",
            "--loglevel=INFO",
            # The worker process trains itself (solo pool): prefork children are daemonic and may not start
            # DataLoader workers. Its launcher never touches CUDA, so CUDA lives only in this process.
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queue}",
            f"--hostname=visiontune-{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
