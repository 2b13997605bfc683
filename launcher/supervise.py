"""Process supervision for the launchers: start commands, restart one that dies (with a backoff), stop all."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from app.monitoring.multiproc import mark_dead

log = logging.getLogger("visiontune.launch")

Command = tuple[list[str], dict[str, str]]  # argv and the environment it adds


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


def supervise(commands: list[Command], restart: bool = True) -> int:
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
            mark_dead(proc.pid)  # its live gauges in the metrics directory go with it
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
