"""Live events: the latency from the worker's publisher appending an event to a client of a real `visiontune api`
process receiving it over GET /jobs/{id}/events (Server-Sent Events).

    python benchmarks/events.py             # prints a table, writes benchmarks/results/events.json

The publisher is app.events' (the one the worker uses) and runs in this process beside the SSE client, so both
ends read the same clock; Redis is the local one (VISIONTUNE_TEST_REDIS_URL or 127.0.0.1:6379). Two runs: events
paced 10 ms apart (one job's progress is 1/s: each event finds the reader waiting) and a burst of events published
back to back (the reader drains them in batches).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.events import Publisher  # noqa: E402
from tests.conftest import REDIS_URL  # noqa: E402
from tests.factories import color_images_zip, tiny_job  # noqa: E402
from tests.processes import api_server, bearer, local_api  # noqa: E402
from visiontune.events import parse_sse  # noqa: E402


def measure(base: str, key: str, publisher: Publisher, job_id: str, after: str, count: int, gap_s: float) -> dict:
    """Publish count progress events gap_s apart (then a terminal status) while a client reads the stream."""
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    ready = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=base, headers=bearer(key), timeout=60) as c:
            with c.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": after}) as r:
                assert r.status_code == 200, r.read()
                ready.set()
                for event in parse_sse(r.iter_lines()):
                    if event.type == "progress":
                        received[event.data["seq"]] = time.perf_counter()

    reader = threading.Thread(target=client, daemon=True)
    reader.start()
    ready.wait(30)
    time.sleep(0.2)  # the route is past its checks and blocked in XREAD
    for seq in range(count):
        sent[seq] = time.perf_counter()
        assert publisher.publish(job_id, "progress", {"seq": seq, "step": seq, "steps": count}) is not None
        if gap_s:
            time.sleep(gap_s)
    publisher.publish(job_id, "status", {"status": "succeeded", "error": None, "attempt": 1})
    reader.join(60)
    missing = count - len(received)
    latencies = sorted((received[s] - sent[s]) * 1000 for s in received)
    return {
        "events": count,
        "gap_ms": gap_s * 1000,
        "lost": missing,
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
        "max_ms": latencies[-1],
        "mean_ms": statistics.fmean(latencies),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        local = local_api(tmp_path, f"bench-events-{uuid.uuid4().hex[:8]}", REDIS_URL)
        rows = []
        with redis.Redis.from_url(f"{REDIS_URL}/0") as store, api_server(tmp_path, local.env) as api:
            publisher = Publisher(store, ttl_seconds=600, progress_interval=0.0)
            base = api.url
            c = httpx.Client(base_url=base, headers=bearer(local.key), timeout=60)
            archive = color_images_zip(tmp_path / "rgb.zip", {"red": 4, "green": 4}, size=16)
            ds = c.post("/datasets", files={"file": ("rgb.zip", archive.read_bytes())}).json()
            for count, gap in ((300, 0.01), (1000, 0.0)):
                job = c.post("/jobs", json=tiny_job(ds["id"], epochs=1, val_fraction=0.0)).json()
                queued = store.xrange(f"visiontune:events:job:{job['id']}")[-1][0].decode()
                rows.append(measure(base, local.key, publisher, job["id"], queued, count, gap))
                c.post(f"/jobs/{job['id']}/cancel")
            c.close()

    print(f"{'run':<28}{'events':>8}{'lost':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'mean ms':>9}")
    for row in rows:
        label = f"paced, {row['gap_ms']:g} ms apart" if row["gap_ms"] else "burst, back to back"
        print(
            f"{label:<28}{row['events']:>8}{row['lost']:>6}{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}"
            f"{row['max_ms']:>9.2f}{row['mean_ms']:>9.2f}"
        )
    out = REPO / "benchmarks" / "results" / "events.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
