"""A small real cluster for failure tests and the chaos benchmark: a private Redis, a fresh PostgreSQL
database, Celery worker processes, the reaper; and the means to break them (SIGKILL, SIGSTOP, SIGTERM,
Redis restarted empty, PostgreSQL backends terminated)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from app.config import Settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.migrate import upgrade
from app.models import Epoch, Export, Job
from app.services.datasets import ingest_upload
from app.services.jobs import submit_job

REPO = Path(__file__).resolve().parents[2]
CHAOS_WORKER = Path(__file__).resolve().parent / "killable_worker.py"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server() -> str:
    from launcher.embedded import redis_server_binary

    return redis_server_binary()


def create_pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new, migrated PostgreSQL database on the local server: (SQLAlchemy URL, drop function)."""
    import psycopg

    name = f"visiontune_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    upgrade(url)

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


class Cluster:
    """Processes sharing one database, one Redis and one data directory; every process logs to a file."""

    def __init__(self, root: Path, database_url: str, lease_seconds: float = 4.0) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.redis_dir = root / "redis"
        self.redis_dir.mkdir(exist_ok=True)
        self.settings = Settings(
            data_dir=root / "data",
            database_url=database_url,
            broker_url=f"redis://127.0.0.1:{self.redis_port}/0",
            queue=f"chaos-{uuid.uuid4().hex[:6]}",
            lease_seconds=lease_seconds,
            reaper_interval_seconds=0.5,
            retry_backoff_seconds=0.5,
            requeue_grace_seconds=3.0,
            torch_threads=1,
            max_active_jobs=1000,  # a dozen jobs are queued at once on purpose
        )
        self.engine = make_engine(database_url)
        self.factory = make_sessionmaker(self.engine)
        self.redis: subprocess.Popen[bytes] | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._celery: Any = None
        self._counter = 0

    # ---------------------------------------------------------------- processes

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTUNE_")}
        s = self.settings
        env.update(
            VISIONTUNE_DATA_DIR=str(s.data_dir),
            VISIONTUNE_DATABASE_URL=str(s.database_url),
            VISIONTUNE_BROKER_URL=s.broker_url,
            VISIONTUNE_QUEUE=s.queue,
            VISIONTUNE_LEASE_SECONDS=str(s.lease_seconds),
            VISIONTUNE_REAPER_INTERVAL_SECONDS=str(s.reaper_interval_seconds),
            VISIONTUNE_RETRY_BACKOFF_SECONDS=str(s.retry_backoff_seconds),
            VISIONTUNE_REQUEUE_GRACE_SECONDS=str(s.requeue_grace_seconds),
            VISIONTUNE_TORCH_THREADS="1",
            CUDA_VISIBLE_DEVICES="",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(REPO),
            **extra,
        )
        return env

    def _start(self, name: str, argv: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env(**extra_env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start_redis(self) -> None:
        """A Redis that keeps nothing on disk: restarting it is Redis losing its queue."""
        self.redis = subprocess.Popen(
            [
                redis_server(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.redis_dir),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        import redis

        client = redis.Redis(port=self.redis_port)
        self.wait(lambda: _pings(client), 20, "redis to start")

    def restart_redis_empty(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait()
        self.start_redis()

    def start_worker(self, name: str | None = None, **chaos_env: str) -> str:
        """A Celery worker process (`visiontune worker-process`); chaos_env switches on killable_worker.py."""
        self._counter += 1
        name = name or f"worker{self._counter}"
        if chaos_env:
            argv = [sys.executable, str(CHAOS_WORKER), name]
        else:
            argv = [sys.executable, "-m", "launcher.cli", "worker-process", "--name", name]
        self._start(name, argv, **chaos_env)
        return name

    def start_reaper(self) -> None:
        self._start("reaper", [sys.executable, "-m", "launcher.cli", "reaper"])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process (SIGKILL, SIGSTOP, SIGCONT: its whole group; SIGTERM: the worker alone)."""
        proc = self.procs[name]
        if proc.poll() is not None:
            return
        if sig == signal.SIGTERM:
            proc.send_signal(sig)
        else:
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait()

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()
        self.engine.dispose()

    # ---------------------------------------------------------------- jobs

    def celery(self) -> Any:
        if self._celery is None:
            from app.queue import make_celery

            self._celery = make_celery(self.settings)
        return self._celery

    def send(self, job_id: uuid.UUID) -> None:
        from app.queue import send_train_task

        send_train_task(self.celery(), self.settings, job_id)

    def add_dataset(self, archive: Path) -> uuid.UUID:
        with session_scope(self.factory) as s, archive.open("rb") as f:
            dataset = ingest_upload(s, self.settings, f, archive.name, archive.stem)
            return dataset.id

    def submit(self, body: dict[str, Any]) -> uuid.UUID:
        from app.auth import cli_actor
        from app.schemas import JobCreate

        with session_scope(self.factory) as s:
            return submit_job(s, self.settings, cli_actor(), JobCreate(**body), self.send).id

    def job(self, job_id: uuid.UUID) -> Job:
        with session_scope(self.factory) as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def exports(self, job_id: uuid.UUID) -> list[Export]:
        """The exports of a job's version."""
        with session_scope(self.factory) as s:
            return list(s.scalars(select(Export).where(Export.job_id == job_id)).all())

    def export(self, export_id: uuid.UUID) -> Export:
        with session_scope(self.factory) as s:
            export = s.get(Export, export_id)
            assert export is not None
            return export

    def epochs(self, job_id: uuid.UUID) -> list[tuple[int, int, float]]:
        """(epoch, attempt, train loss) rows of a job, in epoch order."""
        with session_scope(self.factory) as s:
            rows = s.scalars(select(Epoch).where(Epoch.job_id == job_id).order_by(Epoch.epoch)).all()
            return [(e.epoch, e.attempt, e.train_loss) for e in rows]

    def terminate_backends(self) -> int:
        """What a PostgreSQL restart does to clients: every other connection to the database is cut."""
        with self.engine.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        self.engine.dispose()
        return int(killed or 0)

    def wait(self, predicate: Callable[[], object], deadline_s: float, what: str) -> Any:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                value = predicate()
            except Exception:  # the database or broker is being broken on purpose
                value = None
            if value:
                return value
            time.sleep(0.1)
        tails = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.procs)
        raise AssertionError(f"timed out after {deadline_s}s waiting for {what}\n{tails}")

    def wait_status(self, job_id: uuid.UUID, statuses: set[str], deadline_s: float = 120) -> Job:
        return self.wait(
            lambda: (j := self.job(job_id)).status in statuses and j, deadline_s, f"job {job_id} in {statuses}"
        )

    def queue_length(self) -> int:
        import redis

        from app.queue import redis_queue_keys

        client = redis.Redis(port=self.redis_port)
        return sum(int(client.llen(key)) for key in redis_queue_keys(self.settings.queue))

    def cleanup_data(self) -> None:
        shutil.rmtree(self.settings.data_dir, ignore_errors=True)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
