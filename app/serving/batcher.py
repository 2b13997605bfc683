"""Dynamic batching: concurrent /predict requests for one model version coalesced into one forward.

Request threads decode and preprocess their images in parallel, then `submit` the stacked tensor and block on
the returned future. One inference thread (using torch's intra-op threads, so the cores are not oversubscribed
by several forwards at once) takes the oldest waiting request and every other one waiting for the same model,
up to `max_batch` images, and runs one forward. A request that finds nothing else waiting is dispatched at once;
when several are waiting and the batch is not full, it waits at most `max_wait_s` after the oldest arrived for
more. The queue is bounded: a request that would exceed `queue_limit` images, or that could not be answered
within `latency_budget_s` (queue length times the moving average of a batch's time), is refused at once with a
503 and Retry-After. Each API process has its own batcher (made in the lifespan).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from PIL import Image

from app.config import Settings
from app.errors import ServiceUnavailable
from app.monitoring.instruments import PREDICT_BATCH_SIZE, PREDICT_FORWARD, PREDICT_QUEUE_WAIT
from app.serving.predictor import Predictor

EMA_WEIGHT = 0.2  # weight of the newest batch in the moving average of batch seconds


class _Request:
    """One submission: its parts' rows, joined in order once every part has run (touched by one thread only)."""

    def __init__(self, parts: int) -> None:
        self.future: Future[torch.Tensor] = Future()
        self.rows: list[torch.Tensor | None] = [None] * parts
        self.left = parts

    def deliver(self, index: int, rows: torch.Tensor) -> None:
        self.rows[index] = rows
        self.left -= 1
        if self.left == 0 and not self.future.done():
            parts = [r for r in self.rows if r is not None]
            self.future.set_result(parts[0] if len(parts) == 1 else torch.cat(parts))

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class Part:
    """Up to max_batch images of one request, waiting for a forward."""

    key: str
    predictor: Predictor
    images: torch.Tensor
    arrived: float
    request: _Request = field(repr=False)
    index: int = 0

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


def plan_batch(pending: Sequence[Part], now: float, max_batch: int, max_wait_s: float) -> list[Part] | float | None:
    """The parts to run now, else how long to wait (seconds; None: until something arrives).

    The batch is the oldest part and the parts after it for the same model, in order, up to max_batch images. It
    runs now when it is full, when nothing else is waiting for that model, or when its oldest part has waited
    max_wait_s; otherwise the wait is what is left of max_wait_s.
    """
    if not pending:
        return None
    head = pending[0]
    group: list[Part] = []
    size = 0
    full = False
    for part in pending:
        if part.key != head.key:
            continue
        if size + part.size > max_batch:
            full = True
            break
        group.append(part)
        size += part.size
    left = head.arrived + max_wait_s - now
    if full or size >= max_batch or len(group) == 1 or left <= 0:
        return group
    return left


def serving_threads(settings: Settings) -> int:
    """Intra-op threads of the inference thread: predict_threads, else torch_threads, else the usable cores."""
    if settings.predict_threads:
        return settings.predict_threads
    if settings.torch_threads:
        return settings.torch_threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Batcher:
    """Coalesces submissions per model key into forwards on one inference thread; see the module docstring."""

    def __init__(
        self,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        queue_limit: int = 256,
        latency_budget_s: float = 2.0,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_limit = queue_limit
        self.latency_budget_s = latency_budget_s
        self.threads = threads
        self.batch_seconds: float | None = None  # moving average, None before the first batch
        self._cond = threading.Condition()
        self._pending: deque[Part] = deque()
        self._queued = 0  # images waiting
        self._running = 0  # images in the forward now running
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="visiontune-inference", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> Batcher:
        return cls(
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_max_wait_ms / 1000,
            queue_limit=settings.predict_queue_limit,
            latency_budget_s=settings.predict_latency_budget_ms / 1000,
            threads=serving_threads(settings),
        )

    # ---- request side

    def submit(self, key: str, predictor: Predictor, images: torch.Tensor) -> Future[torch.Tensor]:
        """Queue images (N×C×H×W from predictor.preprocess) for the model `key`; the future holds N rows of
        probabilities. Raises ServiceUnavailable (503) at once when the request cannot be served in time."""
        n = int(images.shape[0])
        if n < 1:
            raise ValueError("submit at least one image")
        chunks = images.split(self.max_batch)
        request = _Request(len(chunks))
        now = time.monotonic()
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("the server is shutting down; try again", retry_after=1)
            self._admit(n)
            for i, chunk in enumerate(chunks):
                self._pending.append(Part(key, predictor, chunk, now, request, i))
            self._queued += n
            self._cond.notify()
        return request.future

    def submit_images(self, key: str, predictor: Predictor, images: Sequence[Image.Image]) -> Future[torch.Tensor]:
        """Preprocess images in the calling thread (in parallel with inference), then submit them."""
        return self.submit(key, predictor, torch.stack([predictor.preprocess(img) for img in images]))

    def _seconds_for(self, images: int) -> float | None:
        """Estimated seconds until `images` more would be answered, behind what is queued and running."""
        if self.batch_seconds is None:
            return None
        batches = math.ceil((self._queued + images) / self.max_batch) + (1 if self._running else 0)
        return batches * self.batch_seconds

    def _admit(self, n: int) -> None:
        if not self._queued and not self._running:
            return  # an idle server serves any request it was sent
        if self._queued + n > self.queue_limit:
            wait = self._seconds_for(0) or 1.0
            raise ServiceUnavailable(
                f"the prediction queue is full ({self._queued} images waiting, at most {self.queue_limit}); "
                "try again shortly",
                retry_after=math.ceil(wait),
            )
        estimate = self._seconds_for(n)
        if estimate is not None and estimate > self.latency_budget_s:
            raise ServiceUnavailable(
                f"the server is overloaded: this request would be answered in about {estimate:.1f} s, past the "
                f"latency budget of {self.latency_budget_s:g} s; try again shortly",
                retry_after=math.ceil(self._seconds_for(0) or 1.0),
            )

    @property
    def queued_images(self) -> int:
        with self._cond:
            return self._queued

    # ---- inference side

    def _next_batch(self) -> list[Part] | None:
        with self._cond:
            while True:
                if self._closed and not self._pending:
                    return None
                plan = plan_batch(self._pending, time.monotonic(), self.max_batch, self.max_wait_s)
                if isinstance(plan, list):
                    taken = {id(p) for p in plan}
                    self._pending = deque(p for p in self._pending if id(p) not in taken)
                    size = sum(p.size for p in plan)
                    self._queued -= size
                    self._running = size
                    return plan
                self._cond.wait(timeout=plan)

    def _run(self) -> None:
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        while (batch := self._next_batch()) is not None:
            start = time.monotonic()
            for part in batch:
                PREDICT_QUEUE_WAIT.observe(start - part.arrived)
            PREDICT_BATCH_SIZE.observe(sum(p.size for p in batch))
            try:
                x = batch[0].images if len(batch) == 1 else torch.cat([p.images for p in batch])
                probs = batch[0].predictor.predict_batch(x)
            except BaseException as exc:  # handed to every caller of the batch, whose request fails with it
                for part in batch:
                    part.request.fail(exc)
            else:
                offset = 0
                for part in batch:
                    part.request.deliver(part.index, probs[offset : offset + part.size])
                    offset += part.size
            elapsed = time.monotonic() - start
            PREDICT_FORWARD.observe(elapsed)
            with self._cond:
                self._running = 0
                previous = self.batch_seconds
                self.batch_seconds = elapsed if previous is None else previous + EMA_WEIGHT * (elapsed - previous)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, answer those queued, stop the thread; parts left after timeout fail (503)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(self.latency_budget_s if timeout is None else timeout)
        with self._cond:
            left, self._pending = list(self._pending), deque()
            self._queued = 0
        for part in left:
            part.request.fail(ServiceUnavailable("the server is shutting down; try again", retry_after=1))
