"""prometheus_client's multiprocess mode: where each process writes its metrics, and what /metrics adds up.

The metrics root (Settings.resolved_metrics_dir(): VISIONTUNE_METRICS_DIR, else data_dir/metrics) holds one
subdirectory per launcher (`visiontune run`, `api`, `worker`, `reaper`), named after its role, host and process
id, and a lock file beside it that the launcher holds while it lives. A launcher claims its subdirectory before any
metric exists, wipes it (prometheus_client's advice: a directory starts empty), and hands it to every process it
starts through PROMETHEUS_MULTIPROC_DIR; it also wipes the subdirectories whose launcher is gone (their lock is
free). Subdirectories keep the processes of different hosts or containers apart, so their process ids never share
a file, and no launcher wipes another's live files. The API's /metrics merges every subdirectory, so on one host
(`visiontune run`, or compose with the root on a shared volume) the workers' and the reaper's metrics appear there.

The lock is an flock: the root must be on a local filesystem (a Docker volume shared by containers of one host is).
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import IO

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOCK_SUFFIX = ".lock"

log = logging.getLogger("visiontune.metrics")

_held: list[IO[bytes]] = []  # the lock files this process holds (open for its lifetime)


def multiprocess_dir() -> Path | None:
    """The directory this process writes its metrics to, or None when it keeps them in memory (single process)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def _try_lock(path: Path) -> IO[bytes] | None:
    """An exclusive flock on path (created if missing) that still names the file locked, else None."""
    f = path.open("ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    try:
        same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:  # removed by a sweeper between our open and our lock
        same = False
    if not same:
        f.close()
        return None
    return f


def sweep_stale(root: Path) -> list[str]:
    """Remove the subdirectories of root whose launcher is gone (lock free, or no lock at all); their names."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for lock_path in root.glob(f"*{LOCK_SUFFIX}"):
        f = _try_lock(lock_path)
        if f is None:
            continue  # a live launcher holds it
        try:
            name = lock_path.name[: -len(LOCK_SUFFIX)]
            shutil.rmtree(root / name, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed.append(name)
        finally:
            f.close()
    for sub in root.iterdir():
        if sub.is_dir() and not (root / f"{sub.name}{LOCK_SUFFIX}").exists():
            shutil.rmtree(sub, ignore_errors=True)  # left by a launcher that died before locking (or by hand)
            removed.append(sub.name)
    return removed


def claim(root: Path, role: str) -> Path:
    """A fresh, empty subdirectory of root for this launcher (locked while this process lives); stale ones of
    launchers that are gone are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    removed = sweep_stale(root)
    if removed:
        log.info("metrics: removed %s stale metrics director%s", len(removed), "y" if len(removed) == 1 else "ies")
    name = f"{role}-{socket.gethostname()}-{os.getpid()}"
    for _ in range(5):  # a sweeper elsewhere may take and remove a lock file in the moment before ours locks it
        lock = _try_lock(root / f"{name}{LOCK_SUFFIX}")
        if lock is not None:
            break
    else:
        raise RuntimeError(f"cannot lock the metrics directory {root / name}")
    _held.append(lock)
    sub = root / name
    shutil.rmtree(sub, ignore_errors=True)
    sub.mkdir()
    return sub


def mark_dead(pid: int | str, path: Path | None = None) -> None:
    """Forget a process's live gauges (call for a child that exited, or for this process as it exits); its
    counters and histograms stay, as Prometheus expects of a counter."""
    directory = path or multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))


def metric_files(root: Path | None) -> list[str]:
    """Every metrics file /metrics adds up: those of each launcher's subdirectory of root, and of this process's
    own directory when it lies elsewhere (PROMETHEUS_MULTIPROC_DIR set by hand)."""
    dirs: dict[str, None] = {}
    if root is not None and root.is_dir():
        for sub in sorted(root.iterdir()):
            if sub.is_dir():
                dirs[os.path.realpath(sub)] = None
    own = multiprocess_dir()
    if own is not None:
        dirs.setdefault(os.path.realpath(own), None)
    return [f for d in dirs for f in sorted(glob.glob(os.path.join(d, "*.db")))]
