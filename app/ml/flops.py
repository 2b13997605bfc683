"""Model FLOPs per image and the device's peak rate, for images/s -> TFLOP/s -> model FLOP utilisation."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by device-name fragment; fp32 without AMP gets the tf32 rate / 2.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "4090": 165.0,
    "V100": 125.0,
    "T4": 65.0,
}


def forward_flops(model: nn.Module, image_size: int, device: torch.device) -> float | None:
    """FLOPs of one forward pass for one image (None when the counter cannot trace the model)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, image_size, image_size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return float(counter.get_total_flops())
    except Exception:  # exotic layers the counter cannot handle: report no FLOPs rather than fail the job
        return None
    finally:
        model.train(was_training)


def training_flops_multiplier(strategy: str) -> float:
    """Forward + backward cost in forwards: 3 when all weights train, ~2 when only some produce weight grads."""
    return 3.0 if strategy == "full" else 2.0


def peak_flops(device: torch.device, amp: bool) -> float | None:
    """Peak FLOP/s of a known CUDA device (None for CPUs and unknown cards)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_TFLOPS.items():
        if fragment in name:
            return tflops * 1e12 * (1.0 if amp else 0.25)
    return None
