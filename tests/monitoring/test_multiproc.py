"""Multiprocess mode without the servers: processes in different launchers' directories (as the API, a worker
and the reaper are) are added up by one scrape; a dead process's live gauges go and its counters stay; a launcher
wipes its own directory and those of launchers gone, never a live one's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from app.monitoring.multiproc import LOCK_SUFFIX, claim, mark_dead, sweep_stale
from app.monitoring.scrape import ProcessFiles
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
    api, worker = root / "api-host-1", root / "worker-host-2"
    for d in (api, worker):
        d.mkdir(parents=True)
        (root / f"{d.name}{LOCK_SUFFIX}").touch()
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
        assert live.parent == root and live.name.startswith("worker-")
        stale = root / "api-oldhost-7"  # its launcher is gone: the lock file is there, nobody holds it
        stale.mkdir()
        (stale / "counter_9.db").write_bytes(b"")
        (root / f"{stale.name}{LOCK_SUFFIX}").touch()
        orphan = root / "run-x-1"  # no lock file at all
        orphan.mkdir()
        mine = claim(root, "api")
        assert mine.is_dir() and list(mine.iterdir()) == []
        assert not stale.exists() and not (root / f"{stale.name}{LOCK_SUFFIX}").exists() and not orphan.exists()
        assert (live / "counter_1.db").exists()  # its launcher lives
    finally:
        holder.communicate("", timeout=30)
    assert sweep_stale(root) == [live.name]  # gone now; this process's own lock is held, so its directory stays
    assert mine.is_dir()


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
