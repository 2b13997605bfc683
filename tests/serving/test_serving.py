"""Serving: the batcher coalesces concurrent requests into few forwards with the same answers, respects its
batch size and wait, refuses overload at once (503 + Retry-After); /predict holds no database session during
inference, says which backend answered, and takes one raw image as the body."""

from __future__ import annotations

import io
import threading
import time
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from app.db import make_engine, make_sessionmaker
from app.errors import ServiceUnavailable
from app.ml.backbones import build_model
from app.ml.predictor import LoadedModel
from app.serving.batcher import Batcher, Part, plan_batch
from app.serving.predictor import Predictor, TorchPredictor
from tests.factories import tiny_job
from tests.processes import wait_for
from worker.runner import JobRunner

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny() -> TorchPredictor:
    """A resnet18 with 2 classes at 32 px (random weights, eval mode)."""
    torch.manual_seed(0)
    built = build_model("resnet18", 2, "none")
    meta = {
        "arch": "resnet18",
        "class_names": ["a", "b"],
        "image_size": 32,
        "preprocessing": built.preprocessing.as_dict(),
    }
    return TorchPredictor(LoadedModel(built.model.state_dict(), meta))


class Counting:
    """A predictor that records the size of every batch it runs, optionally held at a gate on its first call."""

    backend = "counting"

    def __init__(self, inner: Predictor, gate: threading.Event | None = None) -> None:
        self.inner = inner
        self.class_names = inner.class_names
        self.preprocessing = inner.preprocessing
        self.sizes: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.inner.preprocess(image)

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(batch.shape[0]))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return self.inner.predict_batch(batch)


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + i % 7, 40, 3), dtype=np.uint8)) for i in range(n)]


def submit_concurrently(batcher: Batcher, predictor: Predictor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every tensor submitted from its own thread, all released at once; each caller's answer, in order."""
    barrier = threading.Barrier(len(tensors))
    out: list[torch.Tensor | None] = [None] * len(tensors)

    def one(i: int) -> None:
        barrier.wait()
        out[i] = batcher.submit("m", predictor, tensors[i]).result(timeout=60)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(tensors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]


def test_concurrent_requests_are_coalesced_with_the_unbatched_answers(tiny):
    counting = Counting(tiny)
    tensors = [tiny.preprocess(img)[None] for img in images(32)]
    expected = [tiny.predict_batch(t) for t in tensors]
    batcher = Batcher(max_batch=32, max_wait_s=0.05)
    try:
        got = submit_concurrently(batcher, counting, tensors)
    finally:
        batcher.close()
    assert len(counting.sizes) <= 4 and sum(counting.sizes) == 32, counting.sizes
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (1, 2) and torch.allclose(g, e, atol=TOL, rtol=0)


def test_batches_never_exceed_max_batch_and_a_large_request_is_split_in_order(tiny):
    counting = Counting(tiny)
    tensors = [tiny.preprocess(img)[None] for img in images(10)]
    tensors.append(torch.stack([tiny.preprocess(img) for img in images(9, seed=1)]))
    expected = [tiny.predict_batch(t) for t in tensors]
    batcher = Batcher(max_batch=4, max_wait_s=0.02)
    before = batch_metrics()
    try:
        got = submit_concurrently(batcher, counting, tensors)
    finally:
        batcher.close()
    assert max(counting.sizes) <= 4 and sum(counting.sizes) == 19, counting.sizes
    # The metrics saw every forward: its size, its time, and the wait of each part (11 requests, one in 3 parts).
    after = batch_metrics()
    assert after["batches"] - before["batches"] == len(counting.sizes)
    assert after["images"] - before["images"] == 19
    assert after["forwards"] - before["forwards"] == len(counting.sizes)
    assert after["waits"] - before["waits"] == 13
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape and torch.allclose(g, e, atol=TOL, rtol=0)


def batch_metrics(client=None) -> dict[str, float]:
    """The batcher's histograms as GET /metrics shows them (with a client), else as this process's registry does."""
    from prometheus_client import REGISTRY, generate_latest

    from tests.prometheus import parse, value

    samples = parse(client.get("/metrics").text if client is not None else generate_latest(REGISTRY).decode())
    return {
        "batches": value(samples, "visiontune_predict_batch_size_images_count"),
        "images": value(samples, "visiontune_predict_batch_size_images_sum"),
        "forwards": value(samples, "visiontune_predict_forward_seconds_count"),
        "waits": value(samples, "visiontune_predict_queue_wait_seconds_count"),
    }


def part(key: str, size: int, arrived: float) -> Part:
    return Part(key=key, predictor=None, images=torch.zeros(size, 3, 1, 1), arrived=arrived, request=None)  # type: ignore[arg-type]


def test_plan_dispatches_a_lone_request_at_once_and_waits_at_most_max_wait():
    assert plan_batch([], 0.0, 8, 0.01) is None  # nothing pending: sleep until something arrives
    lone = [part("m", 1, arrived=10.0)]
    assert plan_batch(lone, 10.0, 8, 5.0) == lone  # nothing else waiting: no wait at all
    two = [part("m", 1, 10.0), part("m", 2, 10.001)]
    assert plan_batch(two, 10.002, 8, 0.01) == pytest.approx(0.008)  # more may come: wait what is left
    assert plan_batch(two, 10.010, 8, 0.01) == two  # the oldest waited max_wait: go
    full = [part("m", 4, 10.0), part("m", 4, 10.0), part("m", 1, 10.0)]
    assert plan_batch(full, 10.0, 8, 1.0) == full[:2]  # full: go, the rest waits for the next batch
    mixed = [part("m", 1, 10.0), part("other", 1, 10.0), part("m", 1, 10.0)]
    assert plan_batch(mixed, 10.0, 8, 0.0) == [mixed[0], mixed[2]]  # one model per forward, oldest first


def test_a_single_request_is_not_held_for_the_max_wait(tiny):
    batcher = Batcher(max_batch=32, max_wait_s=10.0)
    try:
        x = tiny.preprocess(images(1)[0])[None]
        batcher.submit("m", tiny, x).result(timeout=60)  # warm up
        start = time.monotonic()
        batcher.submit("m", tiny, x).result(timeout=60)
        assert time.monotonic() - start < 2.0
    finally:
        batcher.close()


def test_overload_is_refused_at_once_with_retry_after(tiny):
    gate = threading.Event()
    held = Counting(tiny, gate)
    x = tiny.preprocess(images(1)[0])[None]
    batcher = Batcher(max_batch=2, max_wait_s=0.0, queue_limit=4, latency_budget_s=1.0)
    try:
        running = batcher.submit("m", held, x)
        assert held.entered.wait(30)  # the first forward is running (held at the gate)
        queued = batcher.submit("m", held, x.repeat(4, 1, 1, 1))  # fills the queue to its limit
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable) as refused:
            batcher.submit("m", held, x)
        assert time.monotonic() - start < 0.5
        assert refused.value.status_code == 503 and int(refused.value.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.value.message
        gate.set()
        assert running.result(timeout=60).shape == (1, 2) and queued.result(timeout=60).shape == (4, 2)
        wait_for(lambda: batcher.queued_images == 0, "an empty queue")
        gate.clear()
        held.entered.clear()
        running = batcher.submit("m", held, x)
        assert held.entered.wait(30)
        batcher.batch_seconds = 5.0  # batches have been taking 5 s: one more batch is past the 1 s budget
        with pytest.raises(ServiceUnavailable, match="latency budget") as refused:
            batcher.submit("m", held, x)
        assert int(refused.value.headers["Retry-After"]) >= 5
        gate.set()
        running.result(timeout=60)
    finally:
        gate.set()
        batcher.close()


# ---------------------------------------------------------------- the route


@pytest.fixture
def runner(settings):
    engine = make_engine(settings.resolved_database_url())
    yield JobRunner(settings, make_sessionmaker(engine), worker_id="test")
    engine.dispose()


def encoded(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_predict_route_batches_without_a_session_and_takes_raw_images(
    client, runner, enqueued, dataset_id, settings, monkeypatch
):
    name = f"m-{uuid.uuid4().hex[:8]}"
    r = client.post("/jobs", json=tiny_job(dataset_id, model_name=name, epochs=1, batch_size=12, val_fraction=0.25))
    assert r.status_code == 202, r.text
    assert runner.run(enqueued[-1]) == "succeeded"

    # No database connection is checked out while the forward runs.
    pool = client.app.state.engine.pool
    checked_out: list[int] = []
    forward = TorchPredictor.predict_batch

    def watched(self, batch):
        checked_out.append(pool.checkedout())
        return forward(self, batch)

    monkeypatch.setattr(TorchPredictor, "predict_batch", watched)
    png = encoded("PNG")
    before = batch_metrics(client)
    r = client.post("/predict", files=[("files", ("x.png", png, "image/png"))], data={"model": name, "top_k": "2"})
    assert r.status_code == 200, r.text
    after = batch_metrics(client)  # one /predict of one image
    assert after["batches"] - before["batches"] == 1 and after["images"] - before["images"] == 1
    assert after["waits"] - before["waits"] == 1
    form_answer = r.json()
    assert form_answer["backend"] == "torch" and form_answer["model_name"] == name and checked_out == [0]

    # One image as the whole body, the fields in the query.
    r = client.post("/predict", params={"model": name, "top_k": 2}, content=png, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    raw_answer = r.json()
    assert raw_answer["backend"] == "torch" and raw_answer["predictions"][0]["filename"] is None
    for a, b in zip(raw_answer["predictions"][0]["top"], form_answer["predictions"][0]["top"], strict=True):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < TOL
    r = client.post(
        "/predict", params={"model": name, "top_k": 1}, content=encoded("JPEG"), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1 and len(r.json()["predictions"][0]["top"]) == 1

    # Errors: unsupported types 415, bad query 422, oversize 413 (declared or streamed).
    for kind in ("image/gif", "text/plain"):
        assert client.post("/predict", content=png, headers={"content-type": kind}).status_code == 415
    assert client.post("/predict?top_k=0", content=png, headers={"content-type": "image/png"}).status_code == 422
    assert client.post("/predict?nope=1", content=png, headers={"content-type": "image/png"}).status_code == 422
    assert client.post("/predict", content=b"junk", headers={"content-type": "image/png"}).status_code == 415
    settings.max_predict_image_bytes = len(png) - 1
    r = client.post("/predict", params={"model": name}, content=png, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    streamed = (png[i : i + 100] for i in range(0, len(png), 100))
    r = client.post("/predict", params={"model": name}, content=streamed, headers={"content-type": "image/png"})
    assert r.status_code == 413

    # Overload: another model's forward holds the inference thread and the queue is full.
    settings.max_predict_image_bytes = 20 * 1024**2
    batcher = client.app.state.batcher
    gate = threading.Event()
    held = Counting(_FakePredictor(), gate)
    blocker = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    limit, batcher.queue_limit = batcher.queue_limit, 1
    try:
        first = batcher.submit("blocker", held, blocker)
        assert held.entered.wait(30)
        second = batcher.submit("blocker", held, blocker)
        r = client.post("/predict", params={"model": name}, content=png, headers={"content-type": "image/png"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert r.json()["error"]["code"] == "service_unavailable"
    finally:
        batcher.queue_limit = limit
        gate.set()
    first.result(timeout=60)
    second.result(timeout=60)


class _FakePredictor:
    backend = "fake"
    class_names = ["a", "b"]
    preprocessing = None

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full((batch.shape[0], 2), 0.5)


def test_openapi_documents_raw_image_bodies(client):
    body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    content = body["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "image/webp"} <= set(content)
    assert {p["name"] for p in body["parameters"]} == {"model", "version", "top_k"}
    assert "503" in body["responses"]
