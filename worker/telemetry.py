"""A training worker's Prometheus metrics: throughput while an epoch runs, epoch times, images trained and, on a
CUDA device, memory and utilisation. Only the worker process that trains samples the GPU (it alone touches CUDA);
importing this module loads no torch (the worker's launcher names the process's `worker` label through it)."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from app.monitoring.instruments import (
    EPOCH_DURATION,
    GPU_MEMORY_ALLOCATED,
    GPU_MEMORY_RESERVED,
    GPU_UTILIZATION,
    TRAINING_IMAGES,
    TRAINING_IMAGES_PER_SECOND,
    TRAINING_RUNS,
)

if TYPE_CHECKING:
    import torch

    from app.ml.trainer import EpochReport

log = logging.getLogger("visiontune.metrics")

SAMPLE_INTERVAL_S = 1.0  # least time between two samples of the throughput gauge and the GPU

_worker_name: str | None = None


def set_worker_name(name: str) -> None:
    """This process's `worker` label: its launcher's name for it (cpu, gpu0, ...) at this host."""
    global _worker_name
    _worker_name = f"{name}@{socket.gethostname()}"


def worker_name() -> str:
    return _worker_name or socket.gethostname()


def device_label(device: torch.device) -> str:
    """cpu, or cuda:<the GPU's index on the host> when CUDA_VISIBLE_DEVICES pins this process to one GPU."""
    if device.type != "cuda":
        return device.type
    visible = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    index = device.index or 0
    return f"cuda:{visible[index]}" if index < len(visible) else f"cuda:{index}"


class TrainingTelemetry:
    """Updates the worker's instruments for one training run on `device`: given here, or once the run has set
    its device up (on_device; a run that ends before, skipped or failed, counts its outcome only)."""

    def __init__(self, device: torch.device | None = None, worker: str | None = None) -> None:
        self.worker = worker or worker_name()
        self.device: torch.device | None = None
        self.labels: tuple[str, str] | None = None
        self.cuda = False
        self.nvml = False
        self.next_sample = 0.0
        if device is not None:
            self.on_device(device)

    def on_device(self, device: torch.device) -> None:
        """The run trains on device (its set-up succeeded)."""
        self.device = device
        self.labels = (self.worker, device_label(device))
        self.cuda = device.type == "cuda"
        self.nvml = self.cuda and importlib.util.find_spec("pynvml") is not None

    def step(self, images_per_second: float | None) -> None:
        """A training step ended: the epoch's pace so far (None before two steps), sampled about once a second."""
        now = time.monotonic()
        if self.labels is None or now < self.next_sample:
            return
        self.next_sample = now + SAMPLE_INTERVAL_S
        if images_per_second is not None:
            TRAINING_IMAGES_PER_SECOND.labels(*self.labels).set(images_per_second)
        self.sample_gpu()

    def epoch(self, report: EpochReport) -> None:
        if self.labels is None:
            return
        EPOCH_DURATION.labels(*self.labels).observe(report.seconds)
        TRAINING_IMAGES.labels(*self.labels).inc(report.train.images)
        TRAINING_IMAGES_PER_SECOND.labels(*self.labels).set(report.train.images_per_second)
        self.sample_gpu()

    def finished(self, outcome: str) -> None:
        """The run ended (outcome as JobRunner.run returns it, or `error` when it raised): the worker is idle."""
        TRAINING_RUNS.labels(self.worker, outcome).inc()
        if self.labels is None:
            return
        TRAINING_IMAGES_PER_SECOND.labels(*self.labels).set(0)
        try:
            self.sample_gpu()
        except Exception as exc:  # a broken CUDA context must not hide how the run ended
            log.warning("metrics: cannot sample the GPU (%s: %s)", exc.__class__.__name__, exc)

    def sample_gpu(self) -> None:
        if not self.cuda or self.labels is None or self.device is None:
            return
        import torch  # loaded already: this process trains on self.device

        GPU_MEMORY_ALLOCATED.labels(*self.labels).set(torch.cuda.memory_allocated(self.device))
        GPU_MEMORY_RESERVED.labels(*self.labels).set(torch.cuda.memory_reserved(self.device))
        if self.nvml:
            try:
                GPU_UTILIZATION.labels(*self.labels).set(torch.cuda.utilization(self.device) / 100)
            except Exception as exc:  # NVML missing in the container, or no permission: stop asking
                log.info("metrics: no GPU utilisation (%s: %s)", exc.__class__.__name__, exc)
                self.nvml = False
