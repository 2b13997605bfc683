"""`visiontune worker`: one Celery worker process per visible GPU, each pinned with CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time

log = logging.getLogger("visiontune.launch")


def visible_gpus() -> list[str]:
    """GPU ids from CUDA_VISIBLE_DEVICES or nvidia-smi, without initialising CUDA in this process."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def worker_commands(gpus: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, extra env) for each worker process: one per GPU, or a single CPU worker."""
    base = [sys.executable, "-m", "app.cli", "worker-process"]
    if not gpus:
        return [(base + ["--name", "cpu"], {"CUDA_VISIBLE_DEVICES": ""})]
    return [(base + ["--name", f"gpu{g}"], {"CUDA_VISIBLE_DEVICES": g}) for g in gpus]


def reaper_command() -> tuple[list[str], dict[str, str]]:
    """The reaper next to the workers: puts back jobs of dead workers, re-sends tasks the broker lost."""
    return [sys.executable, "-m", "app.cli", "reaper"], {"CUDA_VISIBLE_DEVICES": ""}


def run_worker_process(name: str) -> None:
    """One Celery worker process, pinned by its launcher to one GPU (or none), training one job at a time."""
    from app.config import get_settings
    from worker import shutdown
    from worker.celery_app import worker_app

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


def supervise(commands: list[tuple[list[str], dict[str, str]]], restart: bool = True) -> int:
    """Start every command, restart one that dies unexpectedly, stop all on SIGINT/SIGTERM."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start(argv: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env={**os.environ, **extra})

    procs = [start(argv, extra) for argv, extra in commands]
    backoff = [1.0] * len(procs)
    while not stopping:
        for i, proc in enumerate(procs):
            code = proc.poll()
            if code is None or stopping:
                continue
            if not restart:
                stopping = True
                break
            log.warning("worker %s exited with %s; restarting in %.0fs", i, code, backoff[i])
            time.sleep(backoff[i])
            backoff[i] = min(backoff[i] * 2, 60.0)
            procs[i] = start(*commands[i])
        time.sleep(0.2)
    terminate_all(procs)
    return 0


def terminate_all(procs: list[subprocess.Popen[bytes]], grace: float = 20.0) -> None:
    """SIGTERM every live process, wait up to grace seconds, then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
