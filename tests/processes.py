"""Real processes for end-to-end tests: start, wait for HTTP, poll jobs with deadlines, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.auth import new_key
from app.config import Settings
from app.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]


@dataclass
class LocalApi:
    """What a real `visiontune api` process on a fresh SQLite database needs: its environment, the same settings
    for code that works on that database in this process (training jobs here), and its admin key."""

    env: dict[str, str]
    settings: Settings
    key: str


def local_api(tmp_path: Path, queue: str, redis_url: str) -> LocalApi:
    """A migrated SQLite database under tmp_path, an admin key, rate limits out of the way, and `queue` on
    redis_url (nobody consumes it unless the test starts a worker)."""
    db = f"sqlite:///{tmp_path / 'vt.db'}"
    upgrade(db)
    key = new_key()
    env = {
        "VISIONTUNE_DATABASE_URL": db,
        "VISIONTUNE_DATA_DIR": str(tmp_path / "data"),
        "VISIONTUNE_METRICS_DIR": str(tmp_path / "metrics"),
        "VISIONTUNE_BROKER_URL": f"{redis_url}/0",
        "VISIONTUNE_QUEUE": queue,
        "VISIONTUNE_ADMIN_KEY": key,
        "VISIONTUNE_RATE_LIMIT_PREDICT": "1000000/minute",
        "VISIONTUNE_RATE_LIMIT_WRITE": "100000/minute",
    }
    settings = Settings(
        database_url=db, data_dir=tmp_path / "data", broker_url=f"{redis_url}/0", queue=queue, admin_key=key
    )
    return LocalApi(env, settings, key)


@contextmanager
def embedded_server(tmp: Path, env: dict[str, str]) -> Iterator[str]:
    """A real `visiontune run` (SQLite, its own Redis, a worker, the API) with its data under tmp; yields its URL
    once /health answers and stops the whole process tree afterwards. Its log is tmp/run.log."""
    port, redis_port = free_port(), free_port()
    log = tmp / "run.log"
    argv = python("-m", "launcher.cli", "run", "--port", str(port), "--redis-port", str(redis_port))
    own = {"VISIONTUNE_DATA_DIR": str(tmp / "var"), "VISIONTUNE_METRICS_DIR": str(tmp / "metrics")}
    proc = start(argv, {**own, **env}, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def api_server(tmp: Path, env: dict[str, str], *extra_args: str) -> Iterator[ApiServer]:
    """A real `visiontune api` (extra_args added to its command line) with env, output to tmp/api.log; yields it
    once /health answers and stops its process tree afterwards."""
    port, log = free_port(), tmp / "api.log"
    proc = start(python("-m", "launcher.cli", "api", "--port", str(port), *extra_args), env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        yield ApiServer(url, proc, log)
    finally:
        stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start argv in its own process group (so the whole tree can be stopped), output to log."""
    # Nor the multiprocess metrics directory a launcher run in this process may have set: each process tree
    # claims its own.
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("VISIONTUNE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    full_env.update(env)
    full_env["PYTHONUNBUFFERED"] = "1"
    out = log.open("wb")
    return subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {deadline_s}s:\n{log.read_text()[-4000:]}")


def wait_for(condition: Callable[[], object], what: str = "a condition", deadline_s: float = 30) -> None:
    """Poll condition() until it is true, or fail after deadline_s."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_job(
    base: str, job_id: str, statuses: set[str], deadline_s: float, logs: list[Path], headers: dict | None = None
) -> dict:
    """Poll GET /jobs/{id} until its status is in statuses (or fail with the workers' logs)."""
    deadline = time.monotonic() + deadline_s
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/jobs/{job_id}", timeout=10, headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.25)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"job {job_id} still {job.get('status')} after {deadline_s}s\n{tails}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 30) -> int:
    """Signal the process group, wait, then kill what is left; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode
