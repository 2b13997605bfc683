"""Model FLOPs per image and the device's peak rate, for images/s -> TFLOP/s -> model FLOP utilisation."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense peaks in TFLOP/s by device-name fragment (NVIDIA datasheets, no sparsity), first match wins, so the
# longer names come first: (bf16/fp16 tensor cores, tf32 tensor cores or None where the card has none, fp32 FMA).
PEAK_TFLOPS: dict[str, tuple[float, float | None, float]] = {
    "H100 PCIe": (756.0, 378.0, 51.2),
    "H100 NVL": (835.0, 417.5, 60.0),
    "H200 NVL": (835.0, 417.5, 60.0),
    "H100": (989.4, 494.7, 66.9),
    "H200": (989.4, 494.7, 66.9),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.1, 183.0, 91.6),
    "L40": (181.0, 90.5, 90.5),
    "L4": (121.0, 60.0, 30.3),
    "A10": (125.0, 62.5, 31.2),
    "4090": (165.2, 82.6, 82.6),
    "V100": (125.0, None, 15.7),
    "T4": (65.0, None, 8.1),
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


def peak_for(name: str, amp: bool, tf32: bool) -> float | None:
    """Peak FLOP/s of the card called `name` at the precision the model runs in (None for an unknown card).

    With AMP the 16-bit tensor-core rate; in fp32 the tf32 tensor-core rate where the card has one and tf32 is
    allowed (PyTorch allows it for cuDNN convolutions by default), else the plain fp32 rate.
    """
    for fragment, (half, tf32_rate, fp32) in PEAK_TFLOPS.items():
        if fragment in name:
            rate = half if amp else (tf32_rate if tf32 and tf32_rate else fp32)
            return rate * 1e12
    return None


def peak_flops(device: torch.device, amp: bool) -> float | None:
    """Peak FLOP/s of a known CUDA device (None for CPUs and unknown cards)."""
    if device.type != "cuda":
        return None
    return peak_for(torch.cuda.get_device_name(device), amp, bool(torch.backends.cudnn.allow_tf32))
