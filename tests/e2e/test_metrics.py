"""/metrics through a real `visiontune api --workers 2`: whichever uvicorn worker answers a scrape, it adds up the
requests both served (multiprocess mode over the launcher's directory); the launcher wiped the directory of a
launcher that is gone and claimed its own in its marked folder of VISIONTUNE_METRICS_DIR, leaving the rest of that
directory alone."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from app.monitoring.multiproc import LOCK_SUFFIX, ensure_owned
from tests.conftest import REDIS_URL
from tests.processes import api_server, bearer, local_api
from tests.prometheus import parse, value

pytestmark = pytest.mark.e2e


def test_two_api_workers_report_the_same_aggregated_counts(tmp_path):
    local = local_api(tmp_path, f"metrics-{uuid.uuid4().hex[:8]}", REDIS_URL)
    root = tmp_path / "data"  # the metrics root may even be the data directory: nothing else there is touched
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "keep.txt").write_text("precious")
    owned = ensure_owned(root)
    stale = owned / "api-gone-1"  # left by a launcher that died: nobody holds its lock
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"")
    (owned / f"{stale.name}{LOCK_SUFFIX}").touch()
    env = {**local.env, "VISIONTUNE_METRICS_DIR": str(root)}
    with api_server(tmp_path, env, "--workers", "2") as api:  # one /health answered 200
        base = api.url
        r = httpx.post(f"{base}/keys", json={"name": "prom", "scopes": ["metrics"]}, headers=bearer(local.key))
        assert r.status_code == 201, r.text
        scraper = bearer(r.json()["key"])
        for _ in range(20):  # a new connection each: the two workers share them
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        missing = str(uuid.uuid4())
        assert httpx.get(f"{base}/jobs/{missing}", headers=bearer(local.key), timeout=10).status_code == 404
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        assert httpx.get(f"{base}/metrics", headers=bearer(local.key), timeout=10).status_code == 200  # admin
        for scrape in range(1, 9):
            r = httpx.get(f"{base}/metrics", headers=scraper, timeout=10)
            assert r.status_code == 200, r.text
            samples = parse(r.text)
            get = {"method": "GET"}
            assert value(samples, "visiontune_http_requests_total", **get, route="/health", status="200") == 21
            assert value(samples, "visiontune_http_requests_total", **get, route="/jobs/{job_id}", status="404") == 1
            assert value(samples, "visiontune_http_requests_total", **get, route="/metrics", status="401") == 1
            # every scrape before this one, through whichever worker, plus the admin's
            assert value(samples, "visiontune_http_requests_total", **get, route="/metrics", status="200") == scrape
            assert value(samples, "visiontune_http_requests_total", method="POST", route="/keys", status="201") == 1
            assert value(samples, "visiontune_jobs", status="queued") == 0
        [mine] = [d for d in owned.iterdir() if d.is_dir()]
        assert not stale.exists() and mine.name.startswith(f"api-{socket.gethostname()}-")
        assert (root / "datasets" / "keep.txt").read_text() == "precious"
        pids = {f.stem.rsplit("_", 1)[1] for f in mine.glob("histogram_*.db")}
        # both uvicorn workers write there (more pids when uvicorn replaced a worker it found unresponsive on a
        # loaded machine: the counts above add up all of them either way)
        assert len(pids) >= 2, pids
