"""What a Prometheus scrape costs: GET /metrics on a real `visiontune api --workers 2` (multiprocess mode: the
answering process merges every process's files and counts the jobs in SQL and the queue in Redis), against GET
/health on the same server as the same-run baseline.

    python benchmarks/metrics.py            # prints a table, writes benchmarks/results/metrics.json

The server first answers a workload that creates the label sets a busy server has (several routes and statuses),
then each route is timed sequentially from one client (median and p95 of the requests).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import REDIS_URL  # noqa: E402
from tests.processes import api_server, bearer, local_api  # noqa: E402
from tests.prometheus import parse  # noqa: E402

WORKLOAD = 600
TIMED = 200


def timed(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 2)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = local_api(Path(tmp), f"bench-metrics-{uuid.uuid4().hex[:8]}", REDIS_URL)
        with api_server(Path(tmp), local.env, "--workers", "2") as api:
            base = api.url
            with httpx.Client(base_url=base, headers=bearer(local.key), timeout=30) as client:
                paths = ["/health", "/jobs", "/datasets", "/models", f"/jobs/{uuid.uuid4()}", "/no/such/path"]
                for i in range(WORKLOAD):
                    client.get(paths[i % len(paths)])
                health = timed(client, "/health", TIMED)
                scrape = timed(client, "/metrics", TIMED)
                body = client.get("/metrics").text
            files = len(list((Path(tmp) / "data" / "metrics").glob("*/*.db")))
    samples = parse(body)
    result = {
        "server": "visiontune api --workers 2, SQLite, local Redis",
        "health": summary(health),
        "metrics": summary(scrape),
        "metrics_over_health_median": round(statistics.median(scrape) / statistics.median(health), 2),
        "exposition_bytes": len(body.encode()),
        "samples": len(samples),
        "metric_files": files,
    }
    print(f"{'route':10} {'median ms':>10} {'p95 ms':>8}")
    for route in ("health", "metrics"):
        print(f"{route:10} {result[route]['median_ms']:>10} {result[route]['p95_ms']:>8}")
    print(f"/metrics: {result['samples']} samples, {result['exposition_bytes']} bytes; "
          f"{result['metrics_over_health_median']}x /health's median")  # fmt: skip
    out = REPO / "benchmarks" / "results" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
