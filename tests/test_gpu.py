"""CUDA paths (AMP, channels_last, pinned memory); skipped on machines without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.ml.data import SampleSet
from app.ml.engine import DeviceSetup
from app.ml.trainer import BaseHooks, TrainConfig, fit

pytestmark = pytest.mark.gpu


class Recorder(BaseHooks):
    def __init__(self) -> None:
        self.reports = []

    def on_epoch(self, report, built, state) -> None:
        assert next(built.model.parameters()).device.type == "cuda"
        self.reports.append(report)


def test_full_finetune_on_cuda_with_amp():
    setup = DeviceSetup.for_device("cuda")
    assert setup.amp_dtype in (torch.bfloat16, torch.float16)
    rng = np.random.default_rng(0)
    samples = SampleSet(labels=np.arange(64) % 2, arrays=rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8))
    cfg = TrainConfig(arch="resnet18", weights="none", strategy="full", epochs=2, batch_size=16, image_size=32)
    hooks = Recorder()
    result = fit(cfg, ["a", "b"], {"train": samples, "test": samples}, hooks, setup)
    assert [r.epoch for r in hooks.reports] == [1, 2]
    assert all(np.isfinite(r.train.loss) for r in hooks.reports)
    assert result.test_metrics is not None and result.test_metrics["count"] == 64
