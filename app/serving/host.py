"""Inference in a process of its own: the model host.

An API process decodes and preprocesses images in its request threads; the forward runs in a child process (one
per API process, started on the first prediction) so that it never competes with those threads for the GIL.
An eager PyTorch forward re-takes the GIL for every operator, and with request threads busy in Python (HTTP and
multipart parsing, the key check, decoding) each of those waits can last the interpreter's switch interval:
measured here, an EfficientNet-Lite0 forward went from 20 ms to over a second beside two busy Python threads.
In the child it only shares the cores. This is the split TorchServe, Triton and LitServe make too.

The child holds the loaded models (torch, or ONNX Runtime for exports), keyed like the API's model cache; the
API process holds `HostedPredictor`s, which carry the labels and preprocessing and send each batch (uint8
N×C×H×W) over a pipe, receiving N×classes probabilities. Loads run on a thread of the child, so a model being
loaded and warmed for a switch never stops the one serving. When the child dies (killed, out of memory, a crash
in a native library), a new child is started and reloads what it needs; the batches it was answering are sent
once more (a forward has no side effect), and fail with 503 only when the replacement dies too. The API process
itself never goes down with it.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.errors import ServiceUnavailable
from app.ml.architectures.base import Preprocessing
from app.ml.checkpoint import CheckpointError
from app.ml.transforms import eval_transform, image_to_tensor
from app.serving.predictor import Predictor

log = logging.getLogger("visiontune.serving")

START_TIMEOUT_S = 120.0  # spawning the child and importing torch (seconds on a busy machine)
LOAD_TIMEOUT_S = 600.0  # reading, checking and building a model, first forward included
PREDICT_TIMEOUT_S = 300.0  # one batch; past it the child is taken for hung and replaced
ATTEMPTS = 2  # a batch whose child dies is sent once more, to its replacement


@dataclass(frozen=True)
class ModelSpec:
    """What to load (picklable, sent to the child): a checkpoint for torch, a verified export for onnx/int8."""

    key: str
    backend: str
    path: str
    sha256: str | None
    device: str
    threads: int | None = None
    export_meta: dict[str, Any] | None = None
    precision: str = "auto"  # torch: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16
    compile: bool = False  # torch: through torch.compile


def load_local(spec: ModelSpec) -> Predictor:
    """The predictor for spec in this process (the child calls it; so does predict_isolation=thread)."""
    from app.ml.predictor import LoadedModel
    from app.serving.onnx import OnnxPredictor
    from app.serving.predictor import TorchPredictor

    if spec.backend == "torch" or spec.export_meta is None:
        loaded = LoadedModel.from_file(Path(spec.path), spec.sha256, spec.device)
        predictor = TorchPredictor(loaded, spec.precision, spec.compile)
        if spec.compile:
            try:  # compiled here, on a first forward, so that a compiler failure falls back to eager
                size = predictor.image_size
                predictor.predict_batch(torch.zeros(2, 3, size, size, dtype=torch.uint8))
            except Exception:
                log.exception("torch.compile failed for %s; serving it eagerly", spec.key)
                predictor = TorchPredictor(loaded, spec.precision)
        return predictor
    return OnnxPredictor(Path(spec.path), spec.export_meta, spec.backend, spec.sha256, spec.threads, spec.device)


def describe(predictor: Predictor) -> dict[str, Any]:
    """What the API process needs of a loaded predictor to preprocess for it and name its answers."""
    return {
        "backend": predictor.backend,
        "class_names": list(predictor.class_names),
        "preprocessing": predictor.preprocessing.as_dict(),
        "image_size": int(predictor.image_size),
    }


class HostDied(ServiceUnavailable):
    """The inference process stopped while answering; the next request starts another."""

    def __init__(self) -> None:
        super().__init__("the inference process restarted while answering; try again", retry_after=1)


class RemoteError(RuntimeError):
    """An exception raised in the child, by name and message (its traceback is logged there)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# ---- the child


def _host_main(conn: Connection, threads: int | None) -> None:
    """The child's loop: predicts run on this (main) thread in arrival order, loads on a thread of their own."""
    if threads:
        torch.set_num_threads(threads)
    models: dict[str, Predictor] = {}
    send_lock = threading.Lock()
    work: list[tuple] = []
    cond = threading.Condition()

    def reply(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    def load(call_id: int, spec: ModelSpec) -> None:
        try:
            predictor = models.get(spec.key) or load_local(spec)
            size = predictor.image_size
            predictor.predict_batch(torch.zeros(1, 3, size, size, dtype=torch.uint8))  # warm-up
            models[spec.key] = predictor
            reply((call_id, "ok", describe(predictor)))
        except Exception as exc:
            log.exception("could not load %s", spec.key)
            reply((call_id, "error", type(exc).__name__, str(exc)))

    def read() -> None:  # the pipe's reader: predicts queued for the main thread, loads on threads
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the API process is gone
                message = (None, "close")
            call_id, op = message[0], message[1]
            if op == "load":
                threading.Thread(target=load, args=(call_id, message[2]), daemon=True).start()
                continue
            if op == "drop":
                models.pop(message[2], None)
                continue
            with cond:
                work.append(message)
                cond.notify()
            if op == "close":
                return

    threading.Thread(target=read, name="host-reader", daemon=True).start()
    while True:
        with cond:
            while not work:
                cond.wait()
            message = work.pop(0)
        if message[1] == "close":
            return
        call_id, _, key, batch = message
        predictor = models.get(key)
        if predictor is None:
            reply((call_id, "missing"))
            continue
        try:
            probs = predictor.predict_batch(torch.from_numpy(batch))
            reply((call_id, "ok", probs.numpy()))
        except Exception as exc:
            log.exception("prediction failed for %s", key)
            reply((call_id, "error", type(exc).__name__, str(exc)))


# ---- the API process's side


class _Child:
    """One running child: its process, its pipe, the calls waiting for an answer, the models it has loaded."""

    def __init__(self, threads: int | None) -> None:
        ctx = multiprocessing.get_context("spawn")  # CUDA and threads forbid fork
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_host_main, args=(child_conn, threads), name="visiontune-model-host", daemon=True
        )
        self.process.start()
        child_conn.close()
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.waiting: dict[int, Future] = {}
        self.loaded: set[str] = set()
        self.dead = False
        self.ids = itertools.count()
        threading.Thread(target=self._read, name="model-host-reader", daemon=True).start()

    def call(self, *message: Any) -> Future:
        future: Future = Future()
        with self.lock:
            if self.dead:
                raise HostDied()
            call_id = next(self.ids)
            self.waiting[call_id] = future
        try:
            with self.send_lock:
                self.conn.send((call_id, *message))
        except (OSError, ValueError):  # the pipe broke: the child is gone
            self._died()
        return future

    def send(self, *message: Any) -> None:
        """A message without an answer (drop)."""
        try:
            with self.send_lock:
                self.conn.send((None, *message))
        except (OSError, ValueError):
            self._died()

    def _read(self) -> None:
        while True:
            try:
                call_id, *answer = self.conn.recv()
            except (EOFError, OSError):
                self._died()
                return
            with self.lock:
                future = self.waiting.pop(call_id, None)
            if future is not None and not future.done():
                future.set_result(answer)

    def _died(self) -> None:
        with self.lock:
            if self.dead:
                return
            self.dead = True
            waiting, self.waiting = list(self.waiting.values()), {}
        for future in waiting:
            if not future.done():
                future.set_exception(HostDied())

    def stop(self, timeout: float = 5.0) -> None:
        try:
            with self.send_lock:
                self.conn.send((None, "close"))
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self._died()
        self.conn.close()


class ModelHost:
    """The API process's handle on its inference child, started on first use and restarted when it dies."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self._specs: dict[str, ModelSpec] = {}
        self.restarts = 0

    def _current(self) -> _Child:
        with self._lock:
            child = self._child
            if child is None or child.dead or not child.process.is_alive():
                if child is not None:
                    self.restarts += 1
                    log.warning(
                        "the model host process stopped (exit code %s); starting another", child.process.exitcode
                    )
                    child.stop(timeout=1.0)
                child = self._child = _Child(self.threads)
            return child

    def load(self, spec: ModelSpec) -> HostedPredictor:
        """Load (and warm) spec in the child; the predictor the API process serves it with."""
        self._specs[spec.key] = spec
        info = self._load_in(self._current(), spec)
        return HostedPredictor(self, spec.key, info)

    def _load_in(self, child: _Child, spec: ModelSpec) -> dict[str, Any]:
        answer = self._wait(child, child.call("load", spec), LOAD_TIMEOUT_S)
        child.loaded.add(spec.key)
        return answer[1]

    def predict(self, key: str, batch: torch.Tensor) -> torch.Tensor:
        """N×classes probabilities for a uint8 batch from the model loaded as key (reloaded in a new child)."""
        array = np.ascontiguousarray(batch.numpy())
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            child = self._current()
            try:
                if key not in child.loaded:
                    spec = self._specs.get(key)
                    if spec is None:
                        raise KeyError(f"model {key} was never loaded")
                    self._load_in(child, spec)
                answer = self._wait(child, child.call("predict", key, array), PREDICT_TIMEOUT_S)
            except HostDied:  # a forward has no side effect: a new child answers it, once
                if last:
                    raise
                continue
            if answer[0] == "missing":  # the child lost it (dropped meanwhile): load again
                child.loaded.discard(key)
                if last:
                    break
                continue
            return torch.from_numpy(answer[1])
        raise ServiceUnavailable("the model could not be loaded for inference; try again", retry_after=1)

    def drop(self, key: str) -> None:
        """Free a model the API no longer serves (evicted from its cache)."""
        self._specs.pop(key, None)
        with self._lock:
            child = self._child
        if child is not None and not child.dead:
            child.loaded.discard(key)
            child.send("drop", key)

    def _wait(self, child: _Child, future: Future, timeout: float) -> list:
        """The child's answer to a call; its errors raised here, a hung child replaced."""
        try:
            answer = future.result(timeout)
        except FutureTimeout:
            log.error("the model host did not answer within %.0f s; replacing it", timeout)
            child.stop(timeout=1.0)
            raise ServiceUnavailable("inference took too long; try again", retry_after=1) from None
        if answer[0] == "error":
            kind, message = answer[1], answer[2]
            if kind == "CheckpointError":
                raise CheckpointError(message)
            raise RemoteError(kind, message)
        return answer  # ["ok", payload] or ["missing"]

    @property
    def alive(self) -> bool:
        """Whether a child is running now (False before the first use and once it has died)."""
        child = self._child
        return child is not None and not child.dead and child.process.is_alive()

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None and not child.dead else None

    def close(self) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.stop()


class HostedPredictor:
    """A Predictor whose forward runs in the model host; preprocessing stays in the API process."""

    def __init__(self, host: ModelHost, key: str, info: dict[str, Any]) -> None:
        self.host = host
        self.key = key
        self.backend: str = info["backend"]
        self.class_names: list[str] = list(info["class_names"])
        self.preprocessing = Preprocessing.from_dict(info["preprocessing"])
        self.image_size = int(info["image_size"])
        self.transform = eval_transform(self.image_size, self.preprocessing.interpolation)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(image, self.transform)

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.host.predict(self.key, batch)
