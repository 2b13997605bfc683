"""prometheus_client's multiprocess mode: where each process writes its metrics, and what /metrics adds up.

The metrics root (Settings.resolved_metrics_dir(): VISIONTUNE_METRICS_DIR, else a host-local folder under the
system's temporary directory) is never written to directly: everything goes into one folder of its own,
`<root>/visiontune-multiproc`, created with a marker file in it. That folder holds one subdirectory per launcher
(`visiontune run`, `api`, `worker`, `reaper`), named `<role>-<host>-<pid>`, and a lock file beside it
(`<name>.lock`) that the launcher holds while it lives. A launcher claims its subdirectory before any metric
exists, wipes it (prometheus_client's advice: a directory starts empty), and hands it to every process it starts
through PROMETHEUS_MULTIPROC_DIR; it also wipes the subdirectories whose launcher is gone (their lock is free).
Only names of that pattern are ever removed, and only inside a folder that carries the marker, so a root pointed
at a directory with other contents (the data directory, `.`, /tmp) loses nothing. Subdirectories keep the
processes of different hosts or containers apart, so their process ids never share a file, and no launcher wipes
another's live files. The API's /metrics merges every subdirectory, so on one host (`visiontune run`, or compose
with the root on a volume of its own shared by the containers) the workers' and the reaper's metrics appear there.

The lock is an flock: the root must be on a local filesystem (a Docker volume of one host is; NFS is not). Metrics
are optional: whatever fails here (no lock support, a read-only or foreign folder) is a MetricsDirError (an
OSError) that the launcher turns into a warning and single-process metrics.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import IO

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OWNED_DIR = "visiontune-multiproc"  # the one folder of the root this code writes to and sweeps
MARKER = ".visiontune-metrics"  # written into OWNED_DIR when it is created; no marker, no sweep
LOCK_SUFFIX = ".lock"
ROLES = ("run", "api", "worker", "reaper")
LAUNCHER_NAME = re.compile(r"^(?:run|api|worker|reaper)-[^/]+-\d+$")  # a launcher's subdirectory
CLAIM_TRIES = 5

log = logging.getLogger("visiontune.metrics")

_held: list[IO[bytes]] = []  # the lock files this process holds (open for its lifetime)


class MetricsDirError(OSError):
    """The metrics directory cannot be used (the launcher falls back to single-process metrics)."""


def multiprocess_dir() -> Path | None:
    """The directory this process writes its metrics to, or None when it keeps them in memory (single process)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def owned_dir(root: Path) -> Path:
    """The folder of root that holds the launchers' subdirectories (the only one this code writes to)."""
    return root / OWNED_DIR


def private_dir(path: Path) -> None:
    """Create path (mode 0700) if missing and check that it is a real directory of this user: for a default root
    under a world-writable temporary directory, where another user could have put a folder or a link first."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise MetricsDirError(errno.EPERM, "not a directory of this user", str(path))


def ensure_owned(root: Path) -> Path:
    """root's OWNED_DIR, created with its marker in one step (a rename) if missing; a folder of that name without
    the marker is someone else's and is refused."""
    owned = owned_dir(root)
    if not owned.exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{OWNED_DIR}.{socket.gethostname()}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / MARKER).write_text("visiontune's Prometheus multiprocess files; safe to delete when stopped\n")
        try:
            staging.rename(owned)  # atomic: the folder appears with its marker, or another launcher's won
        except OSError:
            if not owned.is_dir():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if owned.is_symlink() or not owned.is_dir() or not (owned / MARKER).is_file():
        raise MetricsDirError(errno.EEXIST, f"exists without visiontune's marker file {MARKER}", str(owned))
    return owned


def _try_lock(path: Path) -> IO[bytes] | None:
    """An exclusive flock on path (created if missing) that still names the file locked; None when another
    process holds it. Raises OSError when locking is impossible there (ENOLCK, EOPNOTSUPP, a read-only folder)."""
    f = path.open("ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except BaseException:
        f.close()
        raise
    try:
        same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:  # removed by a sweeper between our open and our lock
        same = False
    if not same:
        f.close()
        return None
    return f


def _launcher_dir(owned: Path, name: str) -> Path | None:
    """owned/name when name is a launcher's subdirectory name (never a link), else None."""
    if not LAUNCHER_NAME.match(name):
        return None
    path = owned / name
    return None if path.is_symlink() else path


def sweep_stale(owned: Path) -> list[str]:
    """Remove the launcher subdirectories of owned (an OWNED_DIR) whose launcher is gone (lock free, or no lock at
    all), and their lock files; their names. Nothing else is touched, and a folder without the marker is left
    alone entirely."""
    removed: list[str] = []
    if not (owned / MARKER).is_file():
        if owned.exists():
            log.warning("metrics: %s has no %s marker; not sweeping it", owned, MARKER)
        return removed
    for entry in sorted(owned.iterdir()):
        if not entry.name.endswith(LOCK_SUFFIX):
            continue
        sub = _launcher_dir(owned, entry.name[: -len(LOCK_SUFFIX)])
        if sub is None or entry.is_symlink() or not entry.is_file():
            continue
        try:
            f = _try_lock(entry)
        except OSError as exc:  # another user's file, or no locks here: leave it (claiming will tell)
            log.debug("metrics: cannot lock %s (%s)", entry, exc)
            continue
        if f is None:
            continue  # a live launcher holds it
        try:
            if sub.is_dir():
                shutil.rmtree(sub, ignore_errors=True)
            entry.unlink(missing_ok=True)
            removed.append(sub.name)
        finally:
            f.close()
    for entry in sorted(owned.iterdir()):
        sub = _launcher_dir(owned, entry.name)
        if sub is None or not sub.is_dir() or (owned / f"{sub.name}{LOCK_SUFFIX}").exists():
            continue
        shutil.rmtree(sub, ignore_errors=True)  # left by a launcher that died before locking (or by hand)
        removed.append(sub.name)
    return removed


def claim(root: Path, role: str) -> Path:
    """A fresh, empty subdirectory of root's OWNED_DIR for this launcher (locked while this process lives); stale
    ones of launchers that are gone are removed first. Raises OSError (MetricsDirError among them) when the
    directory cannot be used: the caller falls back to single-process metrics."""
    if role not in ROLES:
        raise ValueError(f"unknown launcher role {role!r}")
    owned = ensure_owned(root)
    removed = sweep_stale(owned)
    if removed:
        log.info("metrics: removed %s stale metrics director%s", len(removed), "y" if len(removed) == 1 else "ies")
    name = f"{role}-{socket.gethostname()}-{os.getpid()}"
    assert LAUNCHER_NAME.match(name), name
    for attempt in range(CLAIM_TRIES):  # a sweeper elsewhere may remove a lock file just before ours locks it
        lock = _try_lock(owned / f"{name}{LOCK_SUFFIX}")
        if lock is not None:
            break
        if attempt < CLAIM_TRIES - 1:
            time.sleep(0.02 * 2**attempt)
    else:
        raise MetricsDirError(errno.EAGAIN, "cannot lock this launcher's metrics directory", str(owned / name))
    sub = owned / name
    try:
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir()  # FileExistsError when the wipe failed: a stale file of a same-named process could remain
    except BaseException:
        lock.close()
        raise
    _held.append(lock)
    return sub


def mark_dead(pid: int | str, path: Path | None = None) -> None:
    """Forget a process's live gauges (call for a child that exited, or for this process as it exits); its
    counters and histograms stay, as Prometheus expects of a counter."""
    directory = path or multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, str(directory))
    except OSError as exc:  # a file already removed, a folder gone: never fail a supervisor for metrics
        log.warning("metrics: cannot mark process %s dead in %s (%s)", pid, directory, exc)


def metric_files(root: Path | None, own: Path | None = None) -> list[str]:
    """Every metrics file /metrics adds up: those of each launcher's subdirectory of root's OWNED_DIR, and of this
    process's own directory (`own`, default PROMETHEUS_MULTIPROC_DIR) when it lies elsewhere (set by hand). A
    folder that cannot be listed is left out (and logged)."""
    dirs: dict[str, None] = {}
    if root is not None:
        owned = owned_dir(root)
        try:
            entries = sorted(owned.iterdir()) if owned.is_dir() else []
        except OSError as exc:
            log.warning("metrics: cannot list %s (%s)", owned, exc)
            entries = []
        for entry in entries:
            sub = _launcher_dir(owned, entry.name)
            if sub is not None and sub.is_dir():
                dirs[os.path.realpath(sub)] = None
    own = own or multiprocess_dir()
    if own is not None:
        dirs.setdefault(os.path.realpath(own), None)
    return [f for d in dirs for f in sorted(glob.glob(os.path.join(d, "*.db")))]
