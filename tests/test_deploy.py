"""The deployment files: compose validates, GPU workers reserve GPUs, the image runs as non-root; the monitoring
profile scrapes the API with a metrics key and its dashboard queries only metrics the service exports."""

from __future__ import annotations

import json
import os
import re
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


MONITORING = ("prometheus", "grafana")


def test_monitoring_profile_scrapes_the_api_with_a_metrics_key():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():  # the monitoring services start only with the profile
        assert service.get("profiles") == (["monitoring"] if name in MONITORING else None), name
    for name in MONITORING:
        image = services[name]["image"]
        assert re.fullmatch(r"[a-z0-9./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a version, not {image}"
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name
    prometheus = services["prometheus"]
    assert prometheus["secrets"] == ["visiontune_metrics_key"]
    assert compose["secrets"]["visiontune_metrics_key"]["file"].startswith("${VISIONTUNE_METRICS_KEY_FILE:-")
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert {"prometheusdata", "grafanadata"} <= set(compose["volumes"])

    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/visiontune_metrics_key"}
    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert job["static_configs"] == [{"targets": [f"api:{api_port}"]}]
    # The API and the workers write their metrics to a volume of their own (a tmpfs of this host, owned by the
    # image's user), never to the data volume; the API's /metrics adds them up.
    for name in ("api", "worker"):
        assert "data:/data" in services[name]["volumes"] and "metrics:/metrics" in services[name]["volumes"]
        assert services[name]["environment"]["VISIONTUNE_DATA_DIR"] == "/data"
        assert services[name]["environment"]["VISIONTUNE_METRICS_DIR"] == "/metrics"
    metrics = compose["volumes"]["metrics"]
    assert metrics["driver_opts"]["type"] == "tmpfs"
    options = dict(o.split("=", 1) for o in metrics["driver_opts"]["o"].split(","))
    [uid] = re.findall(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert options["uid"] == uid and options["mode"] == "0700"


def test_grafana_dashboard_queries_only_exported_metrics():
    from prometheus_client.metrics import MetricWrapperBase

    from app.monitoring import instruments
    from app.monitoring.collectors import SCRAPE_TIME_METRICS

    exported = {m._name for m in vars(instruments).values() if isinstance(m, MetricWrapperBase)}
    exported |= set(SCRAPE_TIME_METRICS)
    grafana = REPO / "deploy" / "grafana"
    dashboard = json.loads((grafana / "dashboards" / "visiontune.json").read_text())
    [source] = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"]
        for target in panel["targets"]:
            for name in re.findall(r"visiontune_[a-z_]+", target["expr"]):
                used.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    assert used <= exported, used - exported
    for needed in (
        "visiontune_http_request_duration_seconds",
        "visiontune_predict_batch_size_images",
        "visiontune_jobs",
        "visiontune_queue_messages",
        "visiontune_training_images_per_second",
        "visiontune_gpu_memory_allocated_bytes",
    ):
        assert needed in used, needed
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "visiontune.yml").read_text())
    mounted = f"./deploy/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert mounted in compose["services"]["grafana"]["volumes"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_compose_monitoring_profile_is_valid(tmp_path):
    key_file = tmp_path / "metrics_key"
    key_file.write_text(new_key())
    env = {"PATH": os.environ["PATH"], "VISIONTUNE_ADMIN_KEY": new_key(), "VISIONTUNE_METRICS_KEY_FILE": str(key_file)}
    result = subprocess.run(
        ["docker-compose", "--profile", "monitoring", "config"], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert {"prometheus", "grafana", "api", "worker"} <= set(resolved["services"])
    assert resolved["secrets"]["visiontune_metrics_key"]["file"] == str(key_file)
