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
    """GPU ids for training: VISIONTUNE_WORKER_GPUS (e.g. "1,2,3", leaving GPU 0 to serving) when set, else
    CUDA_VISIBLE_DEVICES, else nvidia-smi; never initialises CUDA in this process."""
    chosen = os.environ.get("VISIONTUNE_WORKER_GPUS", "").strip()
    if chosen:
        return [g.strip() for g in chosen.split(",") if g.strip()]
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
    from worker.tasks import worker_app

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


RESTART_DELAY_FIRST = 1.0  # seconds before restarting a child that died; doubles per death, up to the maximum
RESTART_DELAY_MAX = 60.0
STABLE_AFTER = 60.0  # a child that ran this long before dying is restarted after the first delay again


def child_name(argv: list[str]) -> str:
    """What a supervised command is, for the log: `worker cpu`, `reaper`, `api` or the program's name."""
    if "worker-process" in argv:
        return f"worker {argv[argv.index('--name') + 1]}" if "--name" in argv[:-1] else "worker"
    if "reaper" in argv:
        return "reaper"
    if "uvicorn" in argv:
        return "api"
    return os.path.basename(argv[0])


def supervise(commands: list[tuple[list[str], dict[str, str]]], restart: bool = True) -> int:
    """Start every command and keep it running; stop all on SIGINT/SIGTERM and return 0.

    A child that dies (a crash, SIGKILL, the OOM killer) is restarted after a delay that doubles from 1 s to
    60 s per death and starts over once the child ran 60 s; the others keep running meanwhile, so a dead
    worker never takes the API down (its job comes back when the reaper finds the lease expired). With
    restart=False the first death stops everything instead (returns 1).
    """
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def start(argv: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env={**os.environ, **extra})

    names = [child_name(argv) for argv, _ in commands]
    procs = [start(argv, extra) for argv, extra in commands]
    started = [time.monotonic()] * len(procs)
    delay = [RESTART_DELAY_FIRST] * len(procs)
    restart_at: list[float | None] = [None] * len(procs)
    code = 0
    while not stopping:
        now = time.monotonic()
        for i, proc in enumerate(procs):
            if stopping:
                break
            due = restart_at[i]
            if due is not None:
                if now >= due:
                    log.info("restarting %s", names[i])
                    procs[i], started[i], restart_at[i] = start(*commands[i]), now, None
                continue
            exited = proc.poll()
            if exited is None:
                continue
            if not restart:
                log.error("%s exited with %s; stopping everything", names[i], exited)
                stopping, code = True, 1
                break
            if now - started[i] >= STABLE_AFTER:
                delay[i] = RESTART_DELAY_FIRST
            log.warning("%s exited with %s; restarting in %.0fs", names[i], exited, delay[i])
            restart_at[i] = now + delay[i]
            delay[i] = min(delay[i] * 2, RESTART_DELAY_MAX)
        time.sleep(0.2)
    terminate_all(procs)
    return code


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
