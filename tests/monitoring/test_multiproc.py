"""Multiprocess mode without the servers: processes in different launchers' directories (as the API, a worker
and the reaper are) are added up by one scrape; a dead process's live gauges go and its counters stay; a launcher
wipes its own directory and those of launchers gone, never a live one's, and never anything but its own folder's
launcher directories; an unreadable file leaves the rest of a scrape intact; a directory that cannot be locked or
written leaves a launcher with single-process metrics instead of a crash."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from app.config import Settings
from app.monitoring import multiproc
from app.monitoring.multiproc import (
    LOCK_SUFFIX,
    MULTIPROC_ENV,
    MetricsDirError,
    claim,
    ensure_owned,
    mark_dead,
    sweep_stale,
)
from app.monitoring.scrape import ProcessFiles
from launcher.metrics import prepare_metrics_dir
from tests.factories import REPO
from tests.prometheus import parse, series, value

# A process that writes a few metrics as a worker of its launcher would, and prints its pid.
WRITER = """
import os, sys
from app.monitoring.instruments import HTTP_REQUESTS, REAPER_ACTIONS, TRAINING_IMAGES_PER_SECOND
HTTP_REQUESTS.labels("GET", "/health", "200").inc(int(sys.argv[1]))
REAPER_ACTIONS.labels("job", "requeued").inc()
TRAINING_IMAGES_PER_SECOND.labels(sys.argv[2], "cpu").set(float(sys.argv[1]))
print(os.getpid())
"""


def write_metrics(directory: Path, count: int, worker: str) -> int:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(count), worker], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def scrape(root: Path) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProcessFiles(root))
    return parse(generate_latest(registry).decode())


def test_processes_of_several_launchers_are_added_up_and_dead_ones_leave_no_live_gauge(tmp_path):
    root = tmp_path / "metrics"
    owned = ensure_owned(root)
    api, worker = owned / "api-host-1", owned / "worker-host-2"
    for d in (api, worker):
        d.mkdir(parents=True)
        (owned / f"{d.name}{LOCK_SUFFIX}").touch()
    write_metrics(api, 3, "none")
    write_metrics(api, 4, "none")  # a second API process (uvicorn worker)
    pid = write_metrics(worker, 5, "cpu@host")
    samples = scrape(root)
    assert value(samples, "visiontune_http_requests_total", method="GET", route="/health", status="200") == 12
    assert value(samples, "visiontune_reaper_actions_total", kind="job", action="requeued") == 3
    assert value(samples, "visiontune_training_images_per_second", worker="cpu@host", device="cpu") == 5
    assert all("pid" not in labels for labels in series(samples, "visiontune_training_images_per_second"))
    mark_dead(pid, worker)
    samples = scrape(root)
    assert {"worker": "cpu@host", "device": "cpu"} not in series(samples, "visiontune_training_images_per_second")
    assert value(samples, "visiontune_http_requests_total", method="GET", route="/health", status="200") == 12


HOLDER = """
import sys, pathlib
from app.monitoring.multiproc import claim
d = claim(pathlib.Path(sys.argv[1]), "worker")
(d / "counter_1.db").write_bytes(b"")
print(d, flush=True)
sys.stdin.read()  # hold the lock until told to go
"""


def test_a_launcher_wipes_its_directory_and_those_of_launchers_gone_never_a_live_one(tmp_path):
    root = tmp_path / "metrics"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        live = Path(holder.stdout.readline().strip())
        owned = live.parent
        assert owned.parent == root and live.name.startswith("worker-")
        stale = owned / "api-oldhost-7"  # its launcher is gone: the lock file is there, nobody holds it
        stale.mkdir()
        (stale / "counter_9.db").write_bytes(b"")
        (owned / f"{stale.name}{LOCK_SUFFIX}").touch()
        orphan = owned / "run-x-1"  # no lock file at all
        orphan.mkdir()
        mine = claim(root, "api")
        assert mine.parent == owned and mine.is_dir() and list(mine.iterdir()) == []
        assert not stale.exists() and not (owned / f"{stale.name}{LOCK_SUFFIX}").exists() and not orphan.exists()
        assert (live / "counter_1.db").exists()  # its launcher lives
    finally:
        holder.communicate("", timeout=30)
    assert sweep_stale(owned) == [live.name]  # gone now; this process's own lock is held, so its directory stays
    assert mine.is_dir()


def test_a_metrics_root_with_other_contents_loses_nothing(tmp_path):
    """VISIONTUNE_METRICS_DIR pointed at the data directory (or `.`, or /tmp): a launcher works only in its own
    marked folder there, and removes only launcher directories inside it."""
    root = tmp_path / "data"
    keep = [root / "datasets" / "d1", root / "checkpoints", root / ".git", root / "api-host-1", root / "metrics"]
    for d in keep:
        d.mkdir(parents=True)
        (d / "file").write_text("precious")
    keep_files = [root / "foo.lock", root / "api-host-1.lock", root / "visiontune.db"]
    for f in keep_files:
        f.write_text("precious")
    mine = claim(root, "run")
    owned = mine.parent
    assert owned == root / "visiontune-multiproc"
    # Inside its own folder: names that are not a launcher's stay too, locked or not.
    (owned / "notes").mkdir()
    (owned / "notes.lock").touch()
    (owned / "foo.lock").touch()
    (owned / "readme.txt").write_text("x")
    (owned / "api-evil-3").symlink_to(root / "datasets")  # a link of a launcher's name is never followed
    gone = owned / "worker-otherhost-12"
    gone.mkdir()
    assert sweep_stale(owned) == [gone.name]
    assert (owned / "api-evil-3").is_symlink()
    assert all((d / "file").read_text() == "precious" for d in keep)
    assert all(f.read_text() == "precious" for f in keep_files)
    assert (owned / "notes").is_dir() and (owned / "notes.lock").exists() and (owned / "foo.lock").exists()
    assert (owned / "readme.txt").exists() and mine.is_dir()
    names = [p.relative_to(root).parts[0] for p in [*keep, *keep_files]]
    assert sorted(p.name for p in root.iterdir()) == sorted([*names, "visiontune-multiproc"])


def test_a_folder_of_that_name_without_the_marker_is_never_used_nor_swept(tmp_path):
    root = tmp_path / "root"
    foreign = root / "visiontune-multiproc"
    (foreign / "api-host-1").mkdir(parents=True)  # looks like a launcher's, but the folder is not ours
    (foreign / "api-host-1" / "data").write_text("precious")
    with pytest.raises(MetricsDirError):
        claim(root, "api")
    assert sweep_stale(foreign) == []
    assert (foreign / "api-host-1" / "data").read_text() == "precious"


@pytest.fixture
def no_multiproc_env(monkeypatch):
    """prepare_metrics_dir sets these for the launcher's children: restored after the test."""
    for name in (MULTIPROC_ENV, "VISIONTUNE_METRICS_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown puts back what was there
        monkeypatch.delenv(name)


def test_a_directory_that_cannot_be_locked_or_written_means_single_process_metrics(
    tmp_path, monkeypatch, caplog, no_multiproc_env
):
    settings = Settings(data_dir=tmp_path / "data", metrics_dir=tmp_path / "metrics")

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")  # NFS without a lock manager

    with monkeypatch.context() as m:
        m.setattr(fcntl, "flock", no_locks)
        with caplog.at_level(logging.WARNING, "visiontune.metrics"):
            assert prepare_metrics_dir(settings, "api") is None
    assert "single-process metrics" in caplog.text and "No locks available" in caplog.text
    assert MULTIPROC_ENV not in os.environ

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", read_only)
        assert prepare_metrics_dir(Settings(metrics_dir=tmp_path / "ro"), "worker") is None
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert prepare_metrics_dir(Settings(metrics_dir=blocker), "reaper") is None  # not a directory
    with monkeypatch.context() as m:  # another launcher keeps taking the lock file from under us
        m.setattr(multiproc, "_try_lock", lambda path: None)
        m.setattr(multiproc.time, "sleep", lambda s: None)
        assert prepare_metrics_dir(settings, "run") is None
    assert MULTIPROC_ENV not in os.environ

    directory = prepare_metrics_dir(settings, "api")  # and with a usable directory, multiprocess mode
    assert directory is not None and directory.parent == (tmp_path / "metrics" / "visiontune-multiproc").resolve()
    assert os.environ[MULTIPROC_ENV] == str(directory)


def test_the_default_metrics_directory_is_host_local_and_one_per_data_dir(tmp_path):
    a, b = Settings(data_dir=tmp_path / "a"), Settings(data_dir=tmp_path / "b")
    assert a.resolved_metrics_dir() != b.resolved_metrics_dir()
    assert a.resolved_metrics_dir() == Settings(data_dir=tmp_path / "a" / ".").resolved_metrics_dir()
    assert a.resolved_metrics_dir().parent == Path(tempfile.gettempdir()) / f"visiontune-{os.getuid()}"
    assert not a.resolved_metrics_dir().is_relative_to(tmp_path)  # never on the (maybe shared) data volume
    assert Settings(data_dir=tmp_path, metrics_dir=tmp_path / "m").resolved_metrics_dir() == tmp_path / "m"


def test_an_unreadable_file_is_left_out_of_the_scrape(tmp_path, caplog):
    root = tmp_path / "metrics"
    good = claim(root, "api")
    write_metrics(good, 3, "none")
    bad = good.parent / "worker-host-5"
    bad.mkdir()
    (bad / "counter_5.db").write_bytes(b"")  # truncated: its process died as it created it (a full disk)
    key = b'{"not json'  # an entry whose key is not what prometheus_client wrote
    entry = struct.pack("i", len(key)) + key + b"\0" * (-(4 + len(key)) % 8) + struct.pack("dd", 1.0, 0.0)
    (bad / "histogram_5.db").write_bytes(struct.pack("ii", 8 + len(entry), 0) + entry)
    with caplog.at_level(logging.WARNING, "visiontune.metrics"):
        samples = scrape(root)
    assert value(samples, "visiontune_http_requests_total", method="GET", route="/health", status="200") == 3
    assert value(samples, "visiontune_metrics_unreadable_files") == 2
    assert "counter_5.db" in caplog.text and "histogram_5.db" in caplog.text
    (bad / "counter_5.db").unlink()
    (bad / "histogram_5.db").unlink()
    assert value(scrape(root), "visiontune_metrics_unreadable_files") == 0


def test_the_worker_metrics_port_serves_its_directory(tmp_path):
    """`visiontune worker` with VISIONTUNE_WORKER_METRICS_PORT: its processes' metrics over plain HTTP, for a
    Prometheus on another host."""
    import httpx

    from launcher.metrics import serve_metrics
    from tests.processes import free_port

    directory = tmp_path / "worker-host-1"
    directory.mkdir()
    write_metrics(directory, 2, "gpu0@host")
    port = free_port()
    serve_metrics(directory, "127.0.0.1", port)
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    samples = parse(r.text)
    assert value(samples, "visiontune_training_images_per_second", worker="gpu0@host", device="cpu") == 2
    assert value(samples, "visiontune_reaper_actions_total", kind="job", action="requeued") == 1
