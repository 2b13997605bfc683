"""The deployment files: compose validates, GPU workers reserve GPUs, the image runs as non-root."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from app.auth import new_key
from tests.factories import REPO


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_compose_file_is_valid():
    env = {"PATH": os.environ["PATH"], "VISIONTUNE_ADMIN_KEY": new_key()}
    result = subprocess.run(["docker-compose", "config", "-q"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    # Without a first admin key the stack does not start.
    refused = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=REPO, capture_output=True, text=True, env={"PATH": os.environ["PATH"]}
    )
    assert refused.returncode != 0 and "VISIONTUNE_ADMIN_KEY" in refused.stderr


def test_compose_services_wire_up_production():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "migrate", "worker", "redis", "postgres"} <= set(services)
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    assert services["migrate"]["command"] == ["visiontune", "migrate"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["VISIONTUNE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["VISIONTUNE_BROKER_URL"].startswith("redis://redis:")
        assert "data:/data" in services[name]["volumes"]
    assert services["api"]["environment"]["VISIONTUNE_ADMIN_KEY"].startswith("${VISIONTUNE_ADMIN_KEY:?")
    [serving_gpu] = services["api"]["deploy"]["resources"]["reservations"]["devices"]
    assert serving_gpu["capabilities"] == ["gpu"] and serving_gpu["device_ids"] == ["${VISIONTUNE_API_GPU:-0}"]
    assert "VISIONTUNE_WORKER_GPUS" in services["worker"]["environment"]
    assert {"pgdata", "redisdata", "data"} <= set(compose["volumes"])


def test_dockerfile_uses_cuda_pytorch_and_a_non_root_user():
    text = (REPO / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert stages[-1].startswith("FROM pytorch/pytorch:") and "cuda" in stages[-1]  # the image that runs
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
