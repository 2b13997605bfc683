"""The served model, in process and over HTTP.

In process: decode + preprocess + forward, one image per forward against batches of 32, directly and through the
batcher (concurrent single-image requests, as /predict makes them). Over HTTP: a real `visiontune api` process
(SQLite) serving a model trained here for one epoch, single-image requests at several concurrencies; a switch
(promote, then rollback) under load; and the same checkpoint behind LitServe with its batching on, as a peer.

    python benchmarks/serve.py                      # prints tables, writes benchmarks/results/serve.json
    python benchmarks/serve.py --seconds 3 --no-peer
    python benchmarks/serve.py --no-http --arch resnet18 --image-size 160   # in process only, random weights

Over HTTP the images alternate: real 32×32 CIFAR test PNGs, and JPEG photos made from them by upscaling to
640×640; the in-process rows use the same images then. In-process-only runs use random weights and 640×480
JPEGs (speed does not depend on the weights). Client and server share this machine's cores, so the HTTP figures
include the load generator's own cost. The LitServe peer (benchmarks/_litserve_peer.py; `pip install litserve`,
else it is reported as missing) gets the same images as JSON base64: its multipart forms fail there. Sweep errors
(503s past the queue limit) are reported as load shedding; the exit status is 1 only when a request failed
across the switch or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.auth import new_key  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import make_engine, make_sessionmaker, session_scope  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.ml.backbones import build_model  # noqa: E402
from app.ml.predictor import LoadedModel  # noqa: E402
from app.models import Checkpoint, Export  # noqa: E402
from app.services.prediction import ImageUpload, decode_uploads  # noqa: E402
from app.services.registry import resolve_version  # noqa: E402
from app.serving.batcher import Batcher, serving_threads  # noqa: E402
from app.serving.onnx import BACKEND_OF_FORMAT, OnnxPredictor  # noqa: E402
from app.serving.predictor import Predictor, TorchPredictor  # noqa: E402
from tests.factories import cifar_arrays, cifar_imagefolder_zip, png_bytes  # noqa: E402
from tests.processes import bearer, free_port, python, start, stop, wait_http  # noqa: E402
from worker.exporter import run_export  # noqa: E402
from worker.runner import JobRunner  # noqa: E402

MODEL = "bench"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def jpegs(n: int, width: int = 640, height: int = 480) -> list[bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        base = np.stack([(xx + 7 * i) % 256, (yy + 3 * i) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
        noisy = np.clip(base.astype(np.int16) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def cifar_requests(n: int, side: int = 640) -> list[tuple[str, bytes, str]]:
    """(filename, bytes, content type) of n images: CIFAR test PNGs alternating with side×side JPEGs of them."""
    test, _, _ = cifar_arrays("test_batch")
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append((f"{i}.png", png_bytes(test[i]), "image/png"))
        else:
            buf = io.BytesIO()
            Image.fromarray(test[i]).resize((side, side), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
            out.append((f"{i}.jpg", buf.getvalue(), "image/jpeg"))
    return out


def decode(data: list[bytes], side: int) -> list[Image.Image]:
    """As /predict decodes for a model taking side×side inputs (JPEGs at reduced scale where that covers it)."""
    s = Settings()
    uploads = [ImageUpload(f"{i}.jpg", d) for i, d in enumerate(data)]
    return decode_uploads(uploads, len(data), s.max_predict_image_bytes, draft_side=side)


def direct(predictor: TorchPredictor, data: list[bytes], batch: int, each: list[float] | None = None) -> float:
    """Seconds for every image, `batch` per forward, decode and preprocess included (one thread); each, if given,
    collects the seconds of every forward's step."""
    start = time.perf_counter()
    for i in range(0, len(data), batch):
        t = time.perf_counter()
        images = decode(data[i : i + batch], predictor.image_size)
        predictor.predict_batch(torch.stack([predictor.preprocess(img) for img in images]))
        if each is not None:
            each.append(time.perf_counter() - t)
    return time.perf_counter() - start


def batched(predictor: TorchPredictor, data: list[bytes], clients: int, settings: Settings) -> tuple[float, list[int]]:
    """Seconds for every image as single-image requests from `clients` threads through the batcher."""
    sizes: list[int] = []
    forward = predictor.predict_batch

    def counted(x: torch.Tensor) -> torch.Tensor:
        sizes.append(int(x.shape[0]))
        return forward(x)

    predictor.predict_batch = counted  # type: ignore[method-assign]
    batcher = Batcher.from_settings(settings)
    todo = list(range(len(data)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            batcher.submit_images("m", predictor, decode([data[i]], predictor.image_size)).result()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    batcher.close()
    predictor.predict_batch = forward  # type: ignore[method-assign]
    return seconds, sizes


def in_process(predictor: TorchPredictor, data: list[bytes], repeats: int, settings: Settings) -> list[dict]:
    """The rows batch 1, batch 32 and batcher-with-32-clients, each the median of `repeats` runs."""
    direct(predictor, data[:32], 32)  # warm-up: allocator, kernels, for both batch sizes
    direct(predictor, data[:4], 1)
    rows = []
    for label, batch in (("batch 1 (one image per forward)", 1), ("batch 32 (direct)", 32)):
        each: list[float] = []
        seconds = statistics.median(direct(predictor, data, batch, each) for _ in range(repeats))
        rows.append(
            {
                "row": label,
                "batch": batch,
                "seconds": seconds,
                "images_per_second": len(data) / seconds,
                "p50_ms_per_forward": statistics.median(each) * 1000,
            }
        )
    runs = sorted((batched(predictor, data, 32, settings) for _ in range(repeats)), key=lambda r: r[0])
    seconds, sizes = runs[len(runs) // 2]
    rows.append(
        {
            "row": "batcher, 32 concurrent 1-image requests",
            "batch": settings.predict_max_batch,
            "seconds": seconds,
            "images_per_second": len(data) / seconds,
            "forwards": len(sizes),
            "mean_batch": sum(sizes) / len(sizes),
        }
    )
    base = rows[0]["images_per_second"]
    for row in rows:
        row["ratio_vs_batch1"] = row["images_per_second"] / base
        row.setdefault("forwards", math.ceil(len(data) / row["batch"]))
    return rows


# --- over HTTP ---------------------------------------------------------------------------------------------


class Server:
    """A `visiontune api` process on a fresh SQLite database, its admin key, and a runner on the same database."""

    def __init__(self, workdir: Path, train_per_class: int = 100, epochs: int = 3) -> None:
        self.key = new_key()
        self.train_per_class = train_per_class
        self.epochs = epochs
        db = f"sqlite:///{workdir / 'vt.db'}"
        upgrade(db)
        broker = os.environ.get("VISIONTUNE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
        queue = f"bench-{uuid.uuid4().hex[:8]}"  # nobody consumes it: the jobs are trained in this process
        env = {
            "VISIONTUNE_DATA_DIR": str(workdir / "data"),
            "VISIONTUNE_DATABASE_URL": db,
            "VISIONTUNE_ADMIN_KEY": self.key,
            "VISIONTUNE_BROKER_URL": broker,
            "VISIONTUNE_QUEUE": queue,
            "VISIONTUNE_RATE_LIMIT_WRITE": "100000/minute",
            "VISIONTUNE_RATE_LIMIT_PREDICT": "1000000/minute",
        }
        self.settings = Settings(
            data_dir=workdir / "data", database_url=db, admin_key=self.key, broker_url=broker, queue=queue
        )
        self.port = free_port()
        self.log = workdir / "api.log"
        self.proc = start(python("-m", "launcher.cli", "api", "--port", str(self.port)), env, self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = bearer(self.key)
        wait_http(f"{self.base}/health", self.proc, self.log)

    def train_versions(self, workdir: Path, arch: str, image_size: int, count: int) -> list[tuple[Path, str]]:
        """count versions of MODEL (linear probe, one epoch on 3 CIFAR classes); their checkpoints, version 1 first."""
        archive = workdir / "cifar10.zip"
        cifar_imagefolder_zip(archive, classes=CLASSES, train_per_class=self.train_per_class)
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=120) as c:
            r = c.post("/datasets", files={"file": ("cifar10.zip", archive.read_bytes(), "application/zip")})
            r.raise_for_status()
            body = {
                "dataset_id": r.json()["id"],
                "model_name": MODEL,
                "arch": arch,
                "strategy": "linear",
                "epochs": self.epochs,
                "image_size": image_size,
                "batch_size": 32,
                "val_fraction": 0.2,
            }
            engine = make_engine(self.settings.resolved_database_url())
            factory = make_sessionmaker(engine)
            runner = JobRunner(self.settings, factory, worker_id="bench")
            out = []
            try:
                for v in range(1, count + 1):
                    job = c.post("/jobs", json={**body, "learning_rate": 0.01 * v})
                    job.raise_for_status()
                    outcome = runner.run(uuid.UUID(job.json()["id"]))
                    if outcome != "succeeded":
                        raise SystemExit(f"training version {v}: {outcome}")
                    with session_scope(factory) as session:
                        chosen = resolve_version(session, "default", MODEL, v)
                        ck = session.get(Checkpoint, chosen.checkpoint_id)
                        assert ck is not None
                        out.append((Path(ck.path), ck.sha256))
            finally:
                engine.dispose()
        return out

    def make_exports(self, formats: list[str], version: int = 1) -> dict[str, dict]:
        """Ask the API for each export of version, make it here as a worker would (run_export), and return the
        exports as the API lists them, with the file's path."""
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=60) as c:
            ids = {}
            for fmt in formats:
                r = c.post(f"/models/{MODEL}/versions/{version}/exports", json={"format": fmt})
                r.raise_for_status()
                ids[fmt] = uuid.UUID(r.json()["id"])
            engine = make_engine(self.settings.resolved_database_url())
            factory = make_sessionmaker(engine)
            paths = {}
            try:
                for fmt, export_id in ids.items():
                    run_export(self.settings, factory, export_id)
                    with session_scope(factory) as session:
                        row = session.get(Export, export_id)
                        paths[fmt] = row.path if row is not None else None
            finally:
                engine.dispose()
            listed = {e["format"]: e for e in c.get(f"/models/{MODEL}/versions/{version}/exports").json()}
        return {fmt: {**listed[fmt], "path": paths[fmt]} for fmt in formats}

    def alias(self, name: str, version: int, backend: str) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=120) as c:
            r = c.put(f"/models/{MODEL}/aliases/{name}", json={"version": version, "backend": backend})
            r.raise_for_status()


def jpeg_decode_rows(side: int, repeats: int = 5) -> list[dict]:
    """Milliseconds to decode one large JPEG photo for a side×side model: in full (then shrunk to at most 1,024 px),
    at reduced scale (Pillow's draft mode, as /predict does), and with torchvision.io (libjpeg-turbo, full size)."""
    import torchvision.io

    rows = []
    limit = Settings().max_predict_image_bytes
    test, _, _ = cifar_arrays("test_batch")
    rng = np.random.default_rng(0)
    for width, height in ((1920, 1080), (4032, 3024)):
        # a photo-like image: a real CIFAR picture upscaled, with sensor-like noise (a 12 MP phone photo's size)
        big = np.asarray(Image.fromarray(test[3]).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = np.clip(big + rng.integers(-6, 7, big.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        ways = {
            "full decode": lambda d=data: decode_uploads([ImageUpload("p.jpg", d)], 1, limit),
            "reduced-scale decode (served)": lambda d=data: decode([d], side),
            "torchvision.io.decode_jpeg (full)": lambda d=data: torchvision.io.decode_jpeg(
                torch.frombuffer(bytearray(d), dtype=torch.uint8)
            ),
        }
        base = None
        for way, run in ways.items():
            run()
            seconds = []
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - t)
            ms = statistics.median(seconds) * 1000
            base = base or ms
            rows.append(
                {
                    "image": f"{width}x{height} JPEG",
                    "bytes": len(data),
                    "way": way,
                    "ms": ms,
                    "speedup_vs_full": base / ms,
                }
            )
    return rows


def test_set() -> tuple[list[Image.Image], list[str]]:
    """The subset's test batch (1,017 real CIFAR images) as decoded images, and their class names."""
    images, labels, names = cifar_arrays("test_batch")
    return [Image.fromarray(a) for a in images], [names[i] for i in labels]


def accuracy(predictor: Predictor, images: list[Image.Image], names: list[str]) -> tuple[float, np.ndarray]:
    """Top-1 accuracy on images and the predicted classes (batches of 32, the served preprocessing)."""
    labels = np.array([predictor.class_names.index(n) for n in names])
    predicted = []
    for i in range(0, len(images), 32):
        batch = torch.stack([predictor.preprocess(img) for img in images[i : i + 32]])
        predicted.append(predictor.predict_batch(batch).argmax(dim=1).numpy())
    top1 = np.concatenate(predicted)
    return float((top1 == labels).mean()), top1


def backend_rows(
    checkpoint: tuple[Path, str], exports: dict[str, dict], data: list[bytes], repeats: int, threads: int
) -> list[dict]:
    """Per backend, in process: batch 1 and batch 32 images/s (decode + preprocess + forward) and accuracy and
    top-1 agreement with fp32 torch on the test batch; each against fp32 torch measured here."""
    loaded = LoadedModel.from_file(*checkpoint)
    predictors: dict[str, Predictor] = {"torch": TorchPredictor(loaded)}
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        predictors["torch-bf16"] = TorchPredictor(loaded, precision="bf16")  # VISIONTUNE_PREDICT_PRECISION=bf16
    rows: list[dict] = []
    for fmt, export in exports.items():
        backend = BACKEND_OF_FORMAT[fmt]
        if export["status"] != "verified":
            rows.append({"backend": backend, "status": export["status"], "report": export["report"]})
            continue
        predictors[backend] = OnnxPredictor(
            Path(export["path"]), export["meta"], backend, export["sha256"], threads, "cpu"
        )
    images, labels = test_set()
    reference: np.ndarray | None = None
    for backend, predictor in predictors.items():
        direct(predictor, data[:32], 32)  # warm-up
        direct(predictor, data[:4], 1)
        b1 = statistics.median(direct(predictor, data, 1) for _ in range(repeats))
        b32 = statistics.median(direct(predictor, data, 32) for _ in range(repeats))
        acc, top1 = accuracy(predictor, images, labels)
        if reference is None:
            reference = top1
        rows.append(
            {
                "backend": backend,
                "status": "checkpoint" if backend.startswith("torch") else "verified",
                "batch1_images_per_second": len(data) / b1,
                "batch32_images_per_second": len(data) / b32,
                "test_accuracy": acc,
                "agreement_with_torch": float((top1 == reference).mean()),
                "test_images": len(labels),
                "report": exports.get(next((f for f, b in BACKEND_OF_FORMAT.items() if b == backend), ""), {}).get(
                    "report"
                ),
            }
        )
    base = next(r for r in rows if r["backend"] == "torch")
    for row in rows:
        if "batch32_images_per_second" in row:
            row["batch32_vs_torch"] = row["batch32_images_per_second"] / base["batch32_images_per_second"]
            row["accuracy_points_vs_torch"] = 100 * (row["test_accuracy"] - base["test_accuracy"])
    return rows


def print_backends(rows: list[dict]) -> None:
    print(
        f"\n{'backend':8} {'batch 1 img/s':>13} {'batch 32 img/s':>14} {'vs torch':>8} {'test acc':>8} "
        f"{'Δ points':>8} {'agreement':>9}"
    )
    for r in rows:
        if "batch32_images_per_second" not in r:
            print(f"{r['backend']:8} {r['status']}")
            continue
        print(
            f"{r['backend']:8} {r['batch1_images_per_second']:13.1f} {r['batch32_images_per_second']:14.1f} "
            f"{r['batch32_vs_torch']:7.2f}x {100 * r['test_accuracy']:7.1f}% {r['accuracy_points_vs_torch']:+8.2f} "
            f"{100 * r['agreement_with_torch']:8.1f}%"
        )


ERROR_SAMPLES: dict[str, list[str]] = {}  # the first few failures per URL, for the JSON
Switch = Callable[[httpx.AsyncClient, float], Awaitable[list[dict]]]


async def _load(
    url: str,
    images: list[tuple[str, bytes, str]],
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    switch: Switch | None = None,
    stop: asyncio.Event | None = None,
    linger: float = 0.0,
    as_json: bool = False,
) -> tuple[float, list[tuple[float, float, int, int | None]], list[dict]]:
    """`concurrency` clients sending one image per request for `seconds` (or until `linger` seconds after `stop`
    is set): (wall, [(sent, latency, status, version)], switch events); switch, if given, runs beside them with
    its own client."""
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    results: list[tuple[float, float, int, int | None]] = []
    events: list[dict] = []
    samples = ERROR_SAMPLES.setdefault(url, [])
    encoded = [base64.b64encode(data).decode() for _, data, _ in images] if as_json else []
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds

        stopped_at: list[float] = []

        async def watch_stop() -> None:
            if stop is not None:
                await stop.wait()
                stopped_at.append(time.perf_counter())

        def running() -> bool:
            now = time.perf_counter()
            return now < deadline and not (stopped_at and now > stopped_at[0] + linger)

        async def one(i: int) -> None:
            n = i
            while running():
                name, data, ctype = images[n % len(images)]
                sent = time.perf_counter()
                try:
                    if as_json:  # the LitServe peer: see benchmarks/_litserve_peer.py for why not multipart
                        r = await client.post(url, json={"filename": name, "image": encoded[n % len(images)]})
                    else:
                        r = await client.post(url, files={"files": (name, data, ctype)}, data=form)
                    status = r.status_code
                    version = r.json().get("version") if status == 200 else None
                    if status != 200 and len(samples) < 3:
                        samples.append(f"{status} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    status, version = 0, None
                    if len(samples) < 3:
                        samples.append(repr(exc)[:200])
                results.append((sent - t0, time.perf_counter() - sent, status, version))
                n += concurrency

        tasks = [one(i) for i in range(concurrency)]
        watcher = asyncio.ensure_future(watch_stop())
        if switch is not None:

            async def run_switch() -> None:
                events.extend(await switch(client, t0))

            tasks.append(run_switch())
        await asyncio.gather(*tasks)
        watcher.cancel()
        wall = time.perf_counter() - t0
    return wall, results, events


def summarize(label: str, concurrency: int, wall: float, results: list) -> dict:
    ok = sorted(lat for _, lat, status, _ in results if status == 200)
    errors = Counter(str(status) for _, _, status, _ in results if status != 200)

    def pct(q: float) -> float | None:
        return ok[min(len(ok) - 1, int(q * len(ok)))] * 1000 if ok else None

    return {
        "server": label,
        "concurrency": concurrency,
        "seconds": round(wall, 2),
        "requests": len(results),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_status": dict(errors),
        "requests_per_second": len(ok) / wall,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def sweep(label: str, url: str, images, levels, seconds, headers=None, form=None, as_json=False) -> list[dict]:
    asyncio.run(_load(url, images, 8, 1.0, headers, form, as_json=as_json))  # warm-up: model load, connections
    rows = []
    for c in levels:
        row = summarize(label, c, *asyncio.run(_load(url, images, c, seconds, headers, form, as_json=as_json))[:2])
        rows.append(row)
        print(
            f"  {label:10} c={c:<3} {row['requests_per_second']:7.1f} req/s  p50 {row['p50_ms'] or 0:7.1f} ms  "
            f"p99 {row['p99_ms'] or 0:7.1f} ms  errors {row['errors']}",
            flush=True,
        )
    return rows


def switch_under_load(server: Server, images, concurrency: int, phase: float, other: int) -> dict:
    """Promote `other` after `phase` seconds of load, roll back `phase` seconds after the promotion returned, and
    keep the load on for `phase` seconds after that, while clients send /predict."""

    async def switch(c: httpx.AsyncClient, t0: float) -> list[dict]:
        events = []
        for label, path in (
            ("promote", f"/models/{MODEL}/versions/{other}/promote"),
            ("rollback", f"/models/{MODEL}/rollback"),
        ):
            await asyncio.sleep(phase)
            began = time.perf_counter() - t0
            r = await c.post(f"{server.base}{path}")
            events.append(
                {"switch": label, "status": r.status_code, "began_s": began, "done_s": time.perf_counter() - t0}
            )
        stop.set()
        return events

    stop = asyncio.Event()
    url = f"{server.base}/predict"
    # The load runs until `phase` after the rollback returned (a switch warms the new target first: seconds).
    wall, results, events = asyncio.run(
        _load(url, images, concurrency, 3 * phase + 60, server.headers, {"model": MODEL}, switch, stop, phase)
    )
    row = summarize("visiontune", concurrency, wall, results)
    # Which version answered in each window between switches (requests sent while one was in flight excluded).
    bounds = [0.0] + [t for e in events for t in (e["began_s"], e["done_s"])] + [math.inf]
    windows = []
    for i, label in enumerate(["before", *(f"after {e['switch']}" for e in events)]):
        lo, hi = bounds[2 * i], bounds[2 * i + 1]
        seen = Counter(v for sent, _, s, v in results if s == 200 and lo < sent < hi)
        windows.append({"window": label, "versions": {str(k): n for k, n in sorted(seen.items())}})
    return {**row, "switches": events, "windows": windows, "failed": row["errors"]}


def peer(checkpoint: Path, images, levels, seconds, workdir: Path) -> dict:
    """The same checkpoint behind LitServe (batching on), at the same concurrencies, or why not."""
    if importlib.util.find_spec("litserve") is None:
        return {"available": False, "why": "litserve is not installed (pip install litserve)", "rows": []}
    port, log = free_port(), workdir / "litserve.log"
    proc = start(
        python(str(REPO / "benchmarks" / "_litserve_peer.py"), "--checkpoint", str(checkpoint), "--port", str(port)),
        {},
        log,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, log, deadline_s=120)
        rows = sweep("litserve", f"http://127.0.0.1:{port}/predict", images, levels, seconds, as_json=True)
    finally:
        stop(proc)
    import litserve

    return {
        "available": True,
        "version": litserve.__version__,
        "max_batch_size": 32,
        "batch_timeout_s": 0.005,
        "transport": "fast_queue (ZeroMQ); its default queues took ~1.4 s per lone request here",
        "rows": rows,
    }


def print_in_process(rows: list[dict]) -> None:
    print(f"{'in process':42}  {'images/s':>9}  {'vs batch 1':>10}  {'forwards':>8}")
    for row in rows:
        print(f"{row['row']:42}  {row['images_per_second']:9.1f}  {row['ratio_vs_batch1']:9.2f}x  {row['forwards']:8}")


def print_http(rows: list[dict]) -> None:
    print(f"\n{'over HTTP':12} {'conc.':>5}  {'req/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'requests':>8}  errors")
    for r in rows:
        print(
            f"{r['server']:12} {r['concurrency']:5}  {r['requests_per_second']:8.1f}  {r['p50_ms'] or math.nan:8.1f}  "
            f"{r['p99_ms'] or math.nan:8.1f}  {r['requests']:8}  {r['errors']} {r['errors_by_status'] or ''}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=10, help="in-process-only runs (--no-http)")
    parser.add_argument("--images", type=int, default=128, help="images per in-process row (a multiple of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per in-process row; the median is reported")
    parser.add_argument("--device", default="cpu", help="as VISIONTUNE_PREDICT_DEVICE (in process)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per concurrency level over HTTP")
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated client counts")
    parser.add_argument("--no-http", action="store_true", help="in process only (random weights)")
    parser.add_argument("--no-peer", action="store_true", help="skip the LitServe peer")
    parser.add_argument("--no-switch", action="store_true", help="skip the promote/rollback under load")
    parser.add_argument("--formats", default="onnx,onnx-int8", help="exports measured against torch ('' for none)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    settings = Settings()
    threads = serving_threads(settings)
    torch.set_num_threads(threads)
    env = {
        "arch": args.arch,
        "image_size": args.image_size,
        "images": args.images,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
    }
    result: dict = {"config": env}
    if args.no_http:
        built = build_model(args.arch, args.classes, "none")
        meta = {
            "arch": args.arch,
            "class_names": [f"c{i}" for i in range(args.classes)],
            "image_size": args.image_size,
            "preprocessing": built.preprocessing.as_dict(),
        }
        predictor = TorchPredictor(LoadedModel(built.model.state_dict(), meta, args.device))
        rows = in_process(predictor, jpegs(args.images), args.repeats, settings)
        print(
            f"{args.arch} at {args.image_size} px on {args.device}, {args.images} JPEGs 640x480, random weights, "
            f"{torch.get_num_threads()} threads, median of {args.repeats}"
        )
        print_in_process(rows)
        result["rows"] = rows
        return write(args.out, result)

    images = cifar_requests(args.images)
    env.update(
        {
            "images_kind": "alternating 32x32 CIFAR test PNGs and 640x640 JPEGs upscaled from them",
            "seconds_per_level": args.seconds,
            "concurrency": levels,
        }
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = Server(tmp)
        try:
            t = time.perf_counter()
            checkpoints = server.train_versions(tmp, args.arch, args.image_size, 1 if args.no_switch else 2)
            env["training_seconds"] = round(time.perf_counter() - t, 1)
            print(
                f"trained {len(checkpoints)} version(s) of {MODEL} ({args.arch} linear, {server.epochs} epochs, "
                f"{args.image_size} px) in {env['training_seconds']} s",
                flush=True,
            )

            predictor = TorchPredictor(LoadedModel.from_file(*checkpoints[0], device=args.device))
            rows = in_process(predictor, [d for _, d, _ in images], args.repeats, settings)
            del predictor
            print(
                f"{args.arch} at {args.image_size} px on {args.device}, {args.images} images ({env['images_kind']}), "
                f"{torch.get_num_threads()} threads, median of {args.repeats}"
            )
            print_in_process(rows)
            result["rows"] = rows

            result["jpeg_decode"] = jpeg_decode_rows(args.image_size)
            print(f"\n{'large JPEG':18} {'decode':36} {'ms':>7} {'vs full':>8}")
            for r in result["jpeg_decode"]:
                print(f"{r['image']:18} {r['way']:36} {r['ms']:7.1f} {r['speedup_vs_full']:7.2f}x")

            formats = [f for f in args.formats.split(",") if f]
            exports = server.make_exports(formats) if formats else {}
            result["backends"] = backend_rows(checkpoints[0], exports, [d for _, d, _ in images], args.repeats, threads)
            print_backends(result["backends"])

            print("\nover HTTP:", flush=True)
            with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as c:
                serving = c.get(f"/models/{MODEL}").json()["serving_version"]
            http = sweep(
                "visiontune", f"{server.base}/predict", images, levels, args.seconds, server.headers, {"model": MODEL}
            )
            for row in result["backends"]:
                if row["status"] != "verified":
                    continue
                server.alias(row["backend"], 1, row["backend"])  # bench@int8 serves version 1 on int8
                http += sweep(
                    f"vt {row['backend']}",
                    f"{server.base}/predict",
                    images,
                    levels,
                    args.seconds,
                    server.headers,
                    {"model": f"{MODEL}@{row['backend']}"},
                )
            result["http"] = http
            if not args.no_switch:
                other = 2 if serving == 1 else 1
                sw = switch_under_load(server, images, 32, max(2.0, args.seconds / 2), other)
                result["switch"] = sw
                print(
                    f"  switch at c=32 (promote v{other}, then roll back): {sw['requests']} requests, "
                    f"{sw['failed']} failed; versions per window: "
                    + "; ".join(f"{w['window']} {w['versions']}" for w in sw["windows"]),
                    flush=True,
                )
            alive = server.proc.poll() is None
        finally:
            stop(server.proc)
        result["server_alive_after"] = alive
        result["peer"] = (
            {"available": False, "why": "skipped (--no-peer)", "rows": []}
            if args.no_peer
            else peer(checkpoints[0][0], images, levels, args.seconds, tmp)
        )
        if not result["peer"]["available"]:
            print(f"\nLitServe peer: {result['peer']['why']}")

    print_http(http + result["peer"]["rows"])
    by_c = {r["concurrency"]: r for r in http if r["server"] == "visiontune"}
    # The batch-1 latency is the median of its single-image steps: less hurt by a neighbour's burst than the mean.
    ceiling, batch1 = rows[1]["images_per_second"], rows[0]["p50_ms_per_forward"]
    ratios: dict = {"in_process_batch32_images_per_second": ceiling, "in_process_batch1_p50_ms": batch1}
    if 32 in by_c:
        ratios["http_c32_vs_batch32_ceiling"] = by_c[32]["requests_per_second"] / ceiling
    if 1 in by_c and by_c[1]["p50_ms"] is not None:
        ratios["http_c1_p50_minus_batch1_ms"] = by_c[1]["p50_ms"] - batch1
    peer_c = {r["concurrency"]: r for r in result["peer"]["rows"]}
    for c, row in by_c.items():
        if c in peer_c and peer_c[c]["requests_per_second"]:
            ratios[f"visiontune_vs_litserve_c{c}_throughput"] = (
                row["requests_per_second"] / peer_c[c]["requests_per_second"]
            )
    for row in result.get("backends", []):
        if row["backend"] != "torch" and "batch32_vs_torch" in row and row["status"] == "verified":
            ratios[f"{row['backend']}_vs_torch_batch32_ceiling"] = row["batch32_vs_torch"]
            ratios[f"{row['backend']}_accuracy_points_vs_torch"] = row["accuracy_points_vs_torch"]
            over_http = [r for r in http if r["server"] == f"vt {row['backend']}" and r["concurrency"] == 32]
            if over_http:
                ratios[f"{row['backend']}_http_c32_vs_its_ceiling"] = (
                    over_http[0]["requests_per_second"] / row["batch32_images_per_second"]
                )
    result["ratios"] = ratios
    result["error_samples"] = {url: found for url, found in ERROR_SAMPLES.items() if found}
    for url, found in result["error_samples"].items():
        print(f"first errors from {url}: {found}")
    print("\n" + "\n".join(f"{k:42} {v:8.2f}" for k, v in ratios.items()))
    code = write(args.out, result)
    # Errors in the sweep (503s past the queue limit) are load shedding, reported; a failed switch is a bug.
    return 1 if result.get("switch", {}).get("failed", 0) or not alive else code


def write(out: Path, result: dict) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
