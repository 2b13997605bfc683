"""The worker's training metrics: an epoch and the pace of one in progress reach the instruments under the worker's
label; a run that ends before its device is set up counts its outcome only; a CPU worker never initialises CUDA;
on a GPU the memory gauges follow the allocator (marked gpu)."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import REGISTRY, generate_latest

from app.ml.engine import EpochStats
from app.ml.trainer import EpochReport
from tests.prometheus import Samples, parse, value
from worker.telemetry import TrainingTelemetry, device_label


def samples() -> Samples:
    return parse(generate_latest(REGISTRY).decode())


def report(epoch: int, images: int, seconds: float) -> EpochReport:
    return EpochReport(epoch, EpochStats(0.5, 0.5, images, seconds), 0.4, 0.6, 0.01, seconds + 1, True)


def test_epochs_and_pace_are_recorded_for_the_worker_without_touching_cuda():
    telemetry = TrainingTelemetry(torch.device("cpu"), worker="test-cpu@here")
    labels = {"worker": "test-cpu@here", "device": "cpu"}
    before = samples()
    telemetry.step(123.0)
    assert value(samples(), "visiontune_training_images_per_second", **labels) == 123.0
    telemetry.epoch(report(1, 64, 2.0))
    telemetry.epoch(report(2, 64, 4.0))
    after = samples()
    moved = lambda name: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert moved("visiontune_training_epoch_duration_seconds_count") == 2
    assert moved("visiontune_training_epoch_duration_seconds_sum") == 3 + 5  # an epoch's wall time
    assert moved("visiontune_training_images_total") == 128
    assert value(after, "visiontune_training_images_per_second", **labels) == 16.0  # the last epoch's pace
    telemetry.finished("succeeded")
    done = samples()
    assert value(done, "visiontune_training_images_per_second", **labels) == 0  # idle
    assert value(done, "visiontune_training_runs_total", worker="test-cpu@here", outcome="succeeded") == 1
    assert not [ls for name, ls in done if name.startswith("visiontune_gpu_") and ("worker", "test-cpu@here") in ls]
    assert not torch.cuda.is_initialized()


def test_device_label_names_the_hosts_gpu(monkeypatch):
    assert device_label(torch.device("cpu")) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert device_label(torch.device("cuda", 0)) == "cuda:3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_label(torch.device("cuda", 0)) == "cuda:0"


@pytest.mark.gpu
def test_gpu_memory_gauges_follow_the_allocator():
    telemetry = TrainingTelemetry(torch.device("cuda", 0), worker="test-gpu@here")
    labels = {"worker": "test-gpu@here", "device": device_label(torch.device("cuda", 0))}
    block = torch.empty(64 * 1024**2, dtype=torch.uint8, device="cuda")
    telemetry.sample_gpu()
    got = samples()
    assert value(got, "visiontune_gpu_memory_allocated_bytes", **labels) >= block.numel()
    assert value(got, "visiontune_gpu_memory_reserved_bytes", **labels) >= block.numel()
    if telemetry.nvml:  # pynvml installed and NVML answering
        assert 0 <= value(got, "visiontune_gpu_utilization_ratio", **labels) <= 1
    del block


def test_a_run_that_ends_before_its_device_is_set_up_counts_its_outcome_only():
    telemetry = TrainingTelemetry(worker="test-early@here")
    telemetry.step(10.0)  # no device yet: nothing to label it with
    telemetry.epoch(report(1, 8, 1.0))
    telemetry.finished("failed")
    got = samples()
    assert value(got, "visiontune_training_runs_total", worker="test-early@here", outcome="failed") == 1
    assert not [ls for name, ls in got if ("worker", "test-early@here") in ls and "runs" not in name]
    telemetry = TrainingTelemetry(worker="test-late@here")
    telemetry.on_device(torch.device("cpu"))
    telemetry.step(7.0)
    assert value(samples(), "visiontune_training_images_per_second", worker="test-late@here", device="cpu") == 7
    telemetry.finished("error")
    assert value(samples(), "visiontune_training_images_per_second", worker="test-late@here", device="cpu") == 0
