"""Schemathesis against the real server's /openapi.json, with an admin key and with a predict-only key: no 5xx,
no response outside the documented statuses and schemas, bounded in time (VISIONTUNE_FUZZ_SECONDS each)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.auth import new_key
from app.migrate import upgrade
from tests.conftest import REDIS_URL
from tests.processes import bearer, free_port, python, start, stop, wait_http

pytestmark = pytest.mark.e2e

SECONDS = int(os.environ.get("VISIONTUNE_FUZZ_SECONDS", "75"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
        "missing_required_header",
    ]
)


def schemathesis() -> list[str]:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "schemathesis.cli"]


def fuzz(base: str, key: str, workdir: Path, seconds: int) -> dict:
    report = workdir / "report.json"
    cmd = [
        *schemathesis(),
        "run",
        f"{base}/openapi.json",
        "-H",
        f"Authorization: Bearer {key}",
        "--checks",
        CHECKS,
        # No stateful phase: it would find the key it runs with in GET /keys and revoke it.
        "--phases",
        "examples,coverage,fuzzing",
        "--max-time",
        str(seconds),
        "--workers",
        "1",
        "--seed",
        "20261201",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=seconds + 240)
    assert report.exists(), out.stdout[-4000:] + out.stderr[-2000:]
    result = json.loads(report.read_text())
    result["stdout"] = out.stdout
    return result


def test_fuzz_with_admin_and_predict_keys(tmp_path):
    admin = new_key()
    db = f"sqlite:///{tmp_path / 'vt.db'}"
    upgrade(db)
    (tmp_path / "server-datasets").mkdir()
    env = {
        "VISIONTUNE_DATA_DIR": str(tmp_path / "data"),
        "VISIONTUNE_DATABASE_URL": db,
        "VISIONTUNE_BROKER_URL": f"{REDIS_URL}/0",
        "VISIONTUNE_QUEUE": f"fuzz-{os.getpid()}",
        "VISIONTUNE_ADMIN_KEY": admin,
        "VISIONTUNE_DATASET_ROOT": str(tmp_path / "server-datasets"),
        "VISIONTUNE_RATE_LIMIT_WRITE": "1000000/minute",
        "VISIONTUNE_RATE_LIMIT_PREDICT": "1000000/minute",
    }
    port = free_port()
    log = tmp_path / "api.log"
    api = start(python("-m", "launcher.cli", "api", "--port", str(port)), env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", api, log)
        made = httpx.post(f"{base}/keys", json={"name": "fuzz-predict", "scopes": ["predict"]}, headers=bearer(admin))
        assert made.status_code == 201, made.text
        runs = {}
        for label, key, seconds in [("admin", admin, SECONDS), ("predict", made.json()["key"], SECONDS // 2)]:
            workdir = tmp_path / label
            workdir.mkdir()
            runs[label] = fuzz(base, key, workdir, seconds)
        assert api.poll() is None, "the API died under fuzzing"
    finally:
        stop(api)
    for label, run in runs.items():
        assert run["failures"] == [], f"{label}: {json.dumps(run['failures'], indent=1)}\n{run['stdout'][-6000:]}"
        assert run["errors"] == [], f"{label}: {run['errors']}"
    total = sum(run["test_cases"]["generated"] for run in runs.values())
    assert total >= 1000, {label: run["test_cases"] for label, run in runs.items()}
    server_log = log.read_text()
    assert " 500 " not in server_log and "Traceback" not in server_log, server_log[-4000:]
