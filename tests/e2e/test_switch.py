"""A switch under load: while clients keep sending /predict to a real uvicorn process, the served version is
promoted, rolled back and an alias moved; no request fails, and every answer sent after a switch returned comes
from the version that switch chose."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from tests.conftest import REDIS_URL
from tests.factories import color_images_zip, png_bytes, tiny_job
from tests.processes import api_server, bearer, local_api
from worker.runner import JobRunner

pytestmark = pytest.mark.e2e

CLIENTS = 8
PHASE_S = 1.5  # load after each switch (and before the first)


def red_png() -> bytes:
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0] = 220
    return png_bytes(img)


def train_two_versions(base: str, auth: dict, settings: Settings, tmp_path: Path, name: str) -> None:
    """Versions 1 and 2 of model name: jobs submitted over HTTP, trained here by a JobRunner on the same database."""
    archive = color_images_zip(tmp_path / "rgb.zip", {"red": 12, "green": 12, "blue": 12}, size=16)
    r = httpx.post(f"{base}/datasets", files={"file": ("rgb.zip", archive.read_bytes())}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    engine = make_engine(settings.resolved_database_url())
    try:
        runner = JobRunner(settings, make_sessionmaker(engine), worker_id="test-switch")
        for _ in range(2):
            body = tiny_job(r.json()["id"], model_name=name, epochs=1, batch_size=12, val_fraction=0.25)
            job = httpx.post(f"{base}/jobs", json=body, headers=auth, timeout=30)
            assert job.status_code == 202, job.text
            assert runner.run(uuid.UUID(job.json()["id"])) == "succeeded"
    finally:
        engine.dispose()


class Load:
    """CLIENTS threads sending one-image /predict requests (half to `name`, half to `name@production`)."""

    def __init__(self, base: str, auth: dict, name: str) -> None:
        self.base, self.auth, self.name = base, auth, name
        self.results: list[tuple[float, str, int, int | None, str]] = []  # (sent at, model, status, version, text)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.image = red_png()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def client(self, i: int) -> None:
        model = self.name if i % 2 == 0 else f"{self.name}@production"
        with httpx.Client(base_url=self.base, headers=self.auth, timeout=30) as c:
            while not self.stopping.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/predict", files={"files": ("red.png", self.image, "image/png")}, data={"model": model})
                    status, text = r.status_code, r.text[:300]
                    version = r.json().get("version") if status == 200 else None
                except httpx.HTTPError as exc:
                    status, version, text = 0, None, repr(exc)
                with self.lock:
                    self.results.append((sent, model, status, version, text))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)

    def wait_for(self, count: int, after: float, deadline_s: float = 30) -> None:
        """Until count answers to requests sent after `after` (monotonic) are in, or fail."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            with self.lock:
                if sum(sent > after for sent, *_ in self.results) >= count:
                    return
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} answers within {deadline_s}s after a switch")


def test_promote_rollback_and_alias_move_under_load(tmp_path):
    local = local_api(tmp_path, f"switch-{uuid.uuid4().hex[:8]}", REDIS_URL)  # the jobs are trained here
    env, settings, key = local.env, local.settings, local.key
    with api_server(tmp_path, env) as api:
        base, auth, name = api.url, bearer(key), "switch"
        train_two_versions(base, auth, settings, tmp_path, name)
        c = httpx.Client(base_url=base, headers=auth, timeout=30)
        best = c.get(f"/models/{name}").json()["serving_version"]
        other = 3 - best
        assert c.put(f"/models/{name}/aliases/production", json={"version": 2}).status_code == 200

        # (switch, the version `name` serves after it, the version `name@production` serves after it)
        switches = [
            ("start", lambda: None, best, 2),
            ("promote", lambda: c.post(f"/models/{name}/versions/{other}/promote"), other, 2),
            ("rollback", lambda: c.post(f"/models/{name}/rollback"), best, 2),
            ("alias move", lambda: c.put(f"/models/{name}/aliases/production", json={"version": 1}), best, 1),
        ]
        phases: list[tuple[str, float, float, int, int]] = []  # (switch, from, to, plain, alias) by send time
        with Load(base, auth, name) as load:
            for label, switch, plain, aliased in switches:
                began = time.monotonic()
                r = switch()
                assert r is None or r.status_code == 200, (label, r.text)
                returned = time.monotonic()
                if phases:  # requests sent while the switch was in flight may see either side: not checked
                    phases[-1] = (*phases[-1][:2], began, *phases[-1][3:])
                phases.append((label, returned, float("inf"), plain, aliased))
                load.wait_for(4 * CLIENTS, returned)
                time.sleep(PHASE_S)
        c.close()

        results = load.results
        failed = [(m, s, t) for _, m, s, _, t in results if s != 200]
        assert not failed, f"{len(failed)} of {len(results)} requests failed, first: {failed[:3]}"
        for label, since, until, plain, aliased in phases:
            seen = [(m, v) for sent, m, _, v, _ in results if since < sent < until]
            assert seen, label
            wrong = [(m, v) for m, v in seen if v != (aliased if m.endswith("@production") else plain)]
            assert not wrong, f"after {label}: {len(wrong)} of {len(seen)} answers from the wrong version {wrong[:5]}"
        assert api.proc.poll() is None, api.log.read_text()[-3000:]
