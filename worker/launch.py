"""`visiontune worker-process`: one Celery worker process, which its launcher (launcher/workers.py) pinned to one
GPU with CUDA_VISIBLE_DEVICES, or to none."""

from __future__ import annotations

from app.config import get_settings
from worker import shutdown
from worker.tasks import worker_app


def run_worker_process(name: str) -> None:
    """One Celery worker process, pinned by its launcher to one GPU (or none), training one job at a time."""
    settings = get_settings()
    shutdown.install_celery_hook()
    worker_app().worker_main(
        [
            "worker",
            "--loglevel=INFO",
            # The worker process trains itself (solo pool): prefork children are daemonic and may not start
            # DataLoader workers. Its launcher never touches CUDA, so CUDA lives only in this process.
            "--pool=solo",
            "--concurrency=1",
            f"--queues={settings.queue}",
            f"--hostname=visiontune-{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
