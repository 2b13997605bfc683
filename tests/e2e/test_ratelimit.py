"""Rate limits per key hold across API processes: the counters live in the shared Redis."""

from __future__ import annotations

import uuid

import httpx
import pytest

from app.auth import new_key
from app.migrate import upgrade
from tests.conftest import REDIS_URL
from tests.processes import bearer, free_port, python, start, stop, wait_http

pytestmark = pytest.mark.e2e


def test_429_with_retry_after_across_two_api_processes(tmp_path):
    admin = new_key()
    db = f"sqlite:///{tmp_path / 'vt.db'}"
    upgrade(db)
    env = {
        "VISIONTUNE_DATA_DIR": str(tmp_path / "data"),
        "VISIONTUNE_DATABASE_URL": db,
        "VISIONTUNE_BROKER_URL": f"{REDIS_URL}/0",
        "VISIONTUNE_ADMIN_KEY": admin,
        "VISIONTUNE_RATE_LIMIT_WRITE": "6/minute",
        "VISIONTUNE_RATE_LIMIT_PREDICT": "3/minute",
    }
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"api{i}.log" for i in range(2)]
    procs = [
        start(python("-m", "launcher.cli", "api", "--port", str(p)), env, log)
        for p, log in zip(ports, logs, strict=True)
    ]
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        for base, proc, log in zip(bases, procs, logs, strict=True):
            wait_http(f"{base}/health", proc, log)
        # A second key to show the limit is per key (made with one write of the admin's budget).
        other = httpx.post(
            f"{bases[0]}/keys", json={"name": "other", "scopes": ["train", "predict"]}, headers=bearer(admin)
        )
        assert other.status_code == 201, other.text
        statuses = []
        for i in range(5):  # 1 + 5 = the admin key's 6 writes, alternating between the processes
            r = httpx.post(f"{bases[i % 2]}/jobs/{uuid.uuid4()}/cancel", headers=bearer(admin))
            statuses.append(r.status_code)
        assert statuses == [404] * 5
        for base in bases:  # the 7th and 8th writes, on either process
            r = httpx.post(f"{base}/jobs/{uuid.uuid4()}/cancel", headers=bearer(admin))
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert "VISIONTUNE_RATE_LIMIT_WRITE" in r.json()["error"]["message"]
        # Reads are not limited; another key has its own budget.
        assert httpx.get(f"{bases[1]}/jobs", headers=bearer(admin)).status_code == 200
        key = other.json()["key"]
        assert httpx.post(f"{bases[1]}/jobs/{uuid.uuid4()}/cancel", headers=bearer(key)).status_code == 404
        # /predict has its own limit.
        predict = []
        for i in range(4):
            r = httpx.post(f"{bases[i % 2]}/predict", files={"files": ("x.png", b"not an image")}, headers=bearer(key))
            predict.append(r.status_code)
        assert predict[:3] != [429] * 3 and 429 not in predict[:3] and predict[3] == 429, predict
    finally:
        for proc in procs:
            stop(proc)
