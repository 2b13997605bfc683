"""CUDA paths (AMP, channels_last, pinned memory, device-resident batches, torch.compile); skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.ml.config import TrainConfig
from app.ml.data import DeviceBatches, SampleSet
from app.ml.engine import DeviceSetup
from app.ml.flops import peak_flops
from app.ml.trainer import BaseHooks, batches, fit

pytestmark = pytest.mark.gpu


class Recorder(BaseHooks):
    def __init__(self) -> None:
        self.reports = []

    def on_epoch(self, report, built, state) -> None:
        assert next(built.model.parameters()).device.type == "cuda"
        self.reports.append(report)


def samples(n: int = 64, classes: int = 2, size: int = 32) -> SampleSet:
    rng = np.random.default_rng(0)
    return SampleSet(labels=np.arange(n) % classes, arrays=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))


def tiny_config(**fields) -> TrainConfig:
    base = dict(arch="resnet18", weights="none", strategy="full", epochs=2, batch_size=16, image_size=32)
    return TrainConfig(**(base | fields))


def test_full_finetune_on_cuda_with_amp():
    setup = DeviceSetup.for_device("cuda")
    assert setup.amp_dtype in (torch.bfloat16, torch.float16)
    data = samples()
    hooks = Recorder()
    result = fit(tiny_config(), ["a", "b"], {"train": data, "test": data}, hooks, setup)
    assert [r.epoch for r in hooks.reports] == [1, 2]
    assert all(np.isfinite(r.train.loss) and r.train.images_per_second > 0 for r in hooks.reports)
    assert result.test_metrics is not None and result.test_metrics["count"] == 64
    # Model FLOP utilisation is reported per epoch wherever the card's peak is known.
    if peak_flops(setup.device, True):
        assert all(r.mfu and 0 < r.mfu < 1 for r in hooks.reports)


def test_small_square_datasets_live_on_the_gpu_and_others_stream_through_pinned_memory():
    setup = DeviceSetup.for_device("cuda")
    data = samples()
    resident = batches(data, tiny_config(augmentation="basic"), setup, True, "bilinear")
    assert isinstance(resident, DeviceBatches) and resident.images.device.type == "cuda"
    x, y = next(iter(resident))
    assert x.device.type == "cuda" and x.shape == (16, 3, 32, 32) and y.device.type == "cuda"
    streamed = batches(data, tiny_config(augmentation="randaugment"), setup, True, "bilinear")
    assert isinstance(streamed, torch.utils.data.DataLoader) and streamed.pin_memory
    result = fit(tiny_config(augmentation="randaugment", epochs=1), ["a", "b"], {"train": data}, Recorder(), setup)
    assert result.epochs_run == 1


def test_fp16_autocast_trains_through_the_gradient_scaler():
    setup = DeviceSetup(device=torch.device("cuda"), amp_dtype=torch.float16)
    assert setup.needs_scaler()
    data = samples()
    hooks = Recorder()
    fit(tiny_config(grad_clip=1.0), ["a", "b"], {"train": data, "test": data}, hooks, setup)
    assert all(np.isfinite(r.train.loss) for r in hooks.reports)


def test_linear_caches_features_on_the_gpu_with_shipped_weights():
    setup = DeviceSetup.for_device("cuda")
    data = samples(60, classes=3)
    cfg = TrainConfig(arch="efficientnet_lite0", strategy="linear", epochs=3, batch_size=8, image_size=32)
    result = fit(cfg, ["a", "b", "c"], {"train": data, "test": data}, Recorder(), setup)
    assert result.baseline["status"] == "measured" and result.test_metrics["count"] == 60


def test_torch_compile_trains():
    setup = DeviceSetup.for_device("cuda")
    data = samples()
    hooks = Recorder()
    fit(tiny_config(compile=True, epochs=1), ["a", "b"], {"train": data}, hooks, setup)
    assert len(hooks.reports) == 1 and np.isfinite(hooks.reports[0].train.loss)
