"""`visiontune run`: SQLite, an embedded Redis, one worker and the API from one command; Ctrl-C stops all."""

from __future__ import annotations

import signal
import socket

import psutil
import pytest

from tests.processes import free_port, python, start, stop, wait_http
from tests.test_e2e import check_service

pytestmark = pytest.mark.e2e


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_default_end_to_end(tmp_path):
    port, redis_port = free_port(), free_port()
    log = tmp_path / "run.log"
    proc = start(
        python("-m", "app.cli", "run", "--port", str(port), "--redis-port", str(redis_port)),
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
        check_service(base, tmp_path, [log])
    finally:
        # Ctrl-C on the launcher only (not its group): it must stop every child itself.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        finally:
            stop(proc)
    assert code == 0, log.read_text()[-3000:]
    assert not port_open(port) and not port_open(redis_port)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"children still alive: {alive}"
