"""`visiontune run`: SQLite, an embedded Redis, one worker and the API from one command; Ctrl-C stops all."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import time

import httpx
import psutil
import pytest

from tests.e2e.test_e2e import check_service
from tests.factories import color_images_zip, tiny_job
from tests.processes import free_port, python, start, stop, wait_http

pytestmark = pytest.mark.e2e


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ctrl_c(proc, log) -> None:
    """Ctrl-C on the launcher only (not its group): it must stop every child itself and exit 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
    assert code == 0, log.read_text()[-3000:]


def test_embedded_default_end_to_end(tmp_path):
    port, redis_port = free_port(), free_port()
    log = tmp_path / "run.log"
    proc = start(
        python("-m", "launcher.cli", "run", "--port", str(port), "--redis-port", str(redis_port)),
        {"VISIONTUNE_DATA_DIR": str(tmp_path / "var")},
        log,
    )
    children: list[psutil.Process] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", proc, log)
        assert port_open(redis_port)
        assert (tmp_path / "var" / "visiontune.db").exists()
        children = psutil.Process(proc.pid).children(recursive=True)
        # First start: the launcher made an admin key and left it in the data directory, for this user only.
        key_file = tmp_path / "var" / "admin_key"
        assert key_file.stat().st_mode & 0o077 == 0
        key = key_file.read_text().strip()
        assert key in log.read_text()  # printed once, on the console
        check_service(base, tmp_path, [log], key)
    finally:
        ctrl_c(proc, log)
    assert not port_open(port) and not port_open(redis_port)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"children still alive: {alive}"


def test_supervise_restarts_a_dead_child_with_a_doubling_delay_and_stops_on_sigterm(tmp_path):
    """A child that keeps dying is restarted after 1 s, then 2 s; the one beside it runs on; SIGTERM stops all."""
    code = (
        "import logging, sys; from launcher.supervise import supervise; logging.basicConfig(level=logging.INFO); "
        "sys.exit(supervise([([sys.executable, '-c', 'import sys; sys.exit(3)'], {}), "
        "([sys.executable, '-c', 'import time; time.sleep(600)'], {})]))"
    )
    log = tmp_path / "supervise.log"
    proc = start(python("-c", code), {}, log)
    try:
        deadline = time.monotonic() + 30
        while "restarting in 2s" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        [sleeper] = [p for p in psutil.Process(proc.pid).children() if "sleep" in " ".join(p.cmdline())]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    text = log.read_text()
    assert re.search(r"python\S* exited with 3; restarting in 1s", text), text
    assert re.search(r"python\S* exited with 3; restarting in 2s", text), text
    assert not sleeper.is_running()


@pytest.mark.timeout(200)
def test_embedded_restarts_a_killed_worker_the_api_stays_up_and_the_job_resumes(tmp_path):
    """SIGKILL of the training worker (as the OOM killer does): the API answers throughout, the supervisor
    restarts the worker, the reaper re-queues the job once its lease expires, and it succeeds with every epoch
    recorded once."""
    deadline = time.monotonic() + 170
    port, redis_port = free_port(), free_port()
    key = "vt_" + secrets.token_urlsafe(32)
    log = tmp_path / "run.log"
    proc = start(
        python("-m", "launcher.cli", "run", "--port", str(port), "--redis-port", str(redis_port)),
        {
            "VISIONTUNE_DATA_DIR": str(tmp_path / "var"),
            "VISIONTUNE_AUTH": "off",
            "VISIONTUNE_ADMIN_KEY": key,
            "VISIONTUNE_LEASE_SECONDS": "6",
            "VISIONTUNE_REAPER_INTERVAL_SECONDS": "1",
            "VISIONTUNE_RETRY_BACKOFF_SECONDS": "0.5",
        },
        log,
    )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def job_when(job_id: str, done) -> dict:
        """Poll /health and the job until done(job); every answer must be a 200."""
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-4000:]
            health = api.get("/health")
            assert health.status_code == 200, health.text
            r = api.get(f"/jobs/{job_id}")
            assert r.status_code == 200, r.text
            if done(job := r.json()):
                return job
            time.sleep(0.25)
        raise AssertionError(f"job {job_id} still {job['status']}:\n{log.read_text()[-4000:]}")

    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log)
        archive = color_images_zip(tmp_path / "rgb.zip", {"red": 16, "green": 16, "blue": 16}, size=16)
        r = api.post("/datasets", files={"file": ("rgb.zip", archive.read_bytes(), "application/zip")})
        assert r.status_code == 201, r.text
        body = tiny_job(r.json()["id"], epochs=4, batch_size=8, val_fraction=0.2, num_workers=0, baseline=False)
        r = api.post("/jobs", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        job_when(job_id, lambda j: j["status"] == "running" and len(j["epochs"]) >= 1)

        [worker] = [p for p in psutil.Process(proc.pid).children(recursive=True) if "worker-process" in p.cmdline()]
        worker.kill()
        done = job_when(job_id, lambda j: j["status"] in ("succeeded", "failed", "canceled"))
        assert done["status"] == "succeeded", done["error"]
        assert [e["epoch"] for e in done["epochs"]] == [1, 2, 3, 4]
        assert done["attempt"] >= 2 and done["failures"] == 1
        assert re.search(r"worker cpu exited with -9; restarting in 1s", log.read_text()), log.read_text()[-4000:]
        [new_worker] = [p for p in psutil.Process(proc.pid).children(recursive=True) if "worker-process" in p.cmdline()]
        assert new_worker.pid != worker.pid
        assert api.get("/health").status_code == 200
    finally:
        api.close()
        ctrl_c(proc, log)
    assert not port_open(port) and not port_open(redis_port)
