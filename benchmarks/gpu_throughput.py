"""Benchmark: training images/s of resnet50 at 224 px on CUDA — visiontune's engine against a plain fp32 loop.

Both sides train the same torchvision resnet50 (all layers, SGD, batch 256 by default) on the same synthetic
uint8 images resident on the GPU, measured in the same run:

* plain fp32 loop: NCHW float32, no autocast, the loop a tutorial writes;
* visiontune engine: `app.ml.engine.train_one_epoch` with the worker's DeviceSetup (bf16 autocast, or fp16 with
  a gradient scaler), channels-last, and `DeviceBatches` doing the random resized crop and flip on the GPU.

It prints a table (images/s, the ratio, achieved TFLOP/s and MFU) and writes benchmarks/results/gpu_throughput.json.
The aim in issue 3 is >= 2,500 images/s on an H100. Without a CUDA device it says so and exits 0.

    .venv/bin/python benchmarks/gpu_throughput.py [--batch-size 256] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.ml.backbones import build_model  # noqa: E402
from app.ml.data import DeviceBatches, SampleSet  # noqa: E402
from app.ml.engine import DeviceSetup, train_one_epoch  # noqa: E402
from app.ml.flops import forward_flops, peak_flops  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "gpu_throughput.json"


def synthetic(n: int, size: int) -> SampleSet:
    rng = np.random.default_rng(0)
    return SampleSet(labels=rng.integers(0, 1000, n), arrays=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))


def plain_fp32(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int) -> float:
    """Images/s of the tutorial loop: fp32, NCHW, normalise on the fly."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1) * 255
    done, start = 0, 0.0
    for step in range(steps + 5):
        if step == 5:  # warm-up steps are not timed
            torch.cuda.synchronize()
            start, done = time.perf_counter(), 0
        idx = torch.randint(0, len(labels), (batch,), device="cuda")
        x = (images[idx].float() - mean) / std
        loss = loss_fn(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += batch
    torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def engine(batch: int, steps: int, size: int) -> tuple[float, DeviceSetup]:
    """Images/s of visiontune's training epoch (AMP, channels-last, device-side augmentation)."""
    setup = DeviceSetup.for_device("cuda")
    built = build_model("resnet50", 1000, "none")
    built.model.to(setup.device, memory_format=torch.channels_last)
    samples = synthetic(batch * (steps + 5), 256)
    warm = DeviceBatches(samples.subset(np.arange(batch * 5)), batch, size, setup.device, True, True, 0)
    timed = DeviceBatches(samples.subset(np.arange(batch * 5, len(samples))), batch, size, setup.device, True, True, 1)
    opt = torch.optim.SGD(built.model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if setup.needs_scaler() else None
    loss_fn = nn.CrossEntropyLoss()
    train_one_epoch(built.model, warm, opt, None, loss_fn, setup, built.preprocessing, scaler=scaler)
    stats = train_one_epoch(built.model, timed, opt, None, loss_fn, setup, built.preprocessing, scaler=scaler)
    return stats.images_per_second, setup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU throughput benchmark needs one (skipped)")
        RESULTS.write_text(json.dumps({"skipped": "no CUDA device"}, indent=2))
        return 0
    torch.backends.cudnn.benchmark = True
    size, batch = args.image_size, args.batch_size
    images = torch.randint(0, 255, (batch * 4, 3, size, size), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 1000, (batch * 4,), device="cuda")
    plain_model = build_model("resnet50", 1000, "none").model.cuda()
    plain = plain_fp32(plain_model, images, labels, batch, args.steps)
    del plain_model, images, labels
    torch.cuda.empty_cache()
    ours, setup = engine(batch, args.steps, size)
    flops = forward_flops(build_model("resnet50", 1000, "none").model, size, torch.device("cpu")) or 0.0
    peak = peak_flops(setup.device, True)
    rows = [("plain fp32 loop", plain, peak_flops(setup.device, False)), ("visiontune engine", ours, peak)]
    print(f"resnet50 training at {size} px, batch {batch}, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'':22}{'images/s':>10}{'TFLOP/s':>10}{'MFU':>8}")
    result = {
        "device": torch.cuda.get_device_name(),
        "batch_size": batch,
        "image_size": size,
        "amp_dtype": str(setup.amp_dtype),
        "rows": {},
    }
    for name, ips, pk in rows:
        tflops = 3 * flops * ips / 1e12
        mfu = tflops * 1e12 / pk if pk else None
        print(f"{name:22}{ips:>10.0f}{tflops:>10.1f}{(f'{mfu:.1%}' if mfu else '-'):>8}")
        result["rows"][name] = {"images_per_second": ips, "tflops": tflops, "mfu": mfu}
    result["ratio"] = ours / plain
    result["aim_2500_images_per_second"] = ours >= 2500
    print(f"ratio engine/plain: {ours / plain:.2f}x; aim >= 2,500 images/s: {'PASS' if ours >= 2500 else 'FAIL'}")
    RESULTS.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
