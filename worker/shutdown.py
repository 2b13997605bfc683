"""Graceful shutdown: SIGTERM to a worker asks the job it trains to stop at the next step and requeue."""

from __future__ import annotations

import threading

_requested = threading.Event()


def requested() -> bool:
    """Whether this process was asked to shut down (training should checkpoint, release and requeue)."""
    return _requested.is_set()


def request() -> None:
    _requested.set()


def clear() -> None:
    _requested.clear()


def install_celery_hook() -> None:
    """Celery's warm-shutdown handler (SIGTERM, first Ctrl-C) also tells the running job to stop.

    Celery alone would wait for the task to finish, which for a training job can be hours, and a second
    signal or the supervisor's SIGKILL would then lose everything since the last epoch.
    """
    from celery import signals

    signals.worker_shutting_down.connect(lambda **_kw: request(), weak=False)
