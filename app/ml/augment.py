"""Augmentation: per-image presets (torchvision v2), batch MixUp/CutMix, and crops done on the device."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from app.ml.config import Augmentation
from app.ml.transforms import eval_transform, interpolation_mode

AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
# Presets the device-side batch pipeline reproduces exactly (random resized crop + flip, or nothing).
DEVICE_AUGMENTATIONS = ("none", "basic")
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def train_transform(
    image_size: int, preset: str = "basic", interpolation: str = "bilinear"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-image train-time transform on uint8 C×H×W tensors for a preset."""
    mode = interpolation_mode(interpolation)
    if preset == "none":
        return eval_transform(image_size, interpolation)
    crop = [
        v2.RandomResizedCrop(image_size, scale=CROP_SCALE, ratio=CROP_RATIO, interpolation=mode, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if preset == "basic":
        return v2.Compose(crop)
    if preset == "randaugment":
        return v2.Compose([*crop, v2.RandAugment(interpolation=mode)])
    if preset == "trivialaugment":
        return v2.Compose([*crop, v2.TrivialAugmentWide(interpolation=mode)])
    if preset == "classic":
        # The Keras-era set: rotation, shift, shear, zoom and horizontal flip.
        return v2.Compose(
            [
                v2.Resize(image_size, interpolation=mode, antialias=True),
                v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10, interpolation=mode),
                v2.RandomHorizontalFlip(),
                v2.CenterCrop(image_size),
            ]
        )
    raise ValueError(f"unknown augmentation {preset!r}")


class BatchMixer:
    """With probability mixup_prob MixUp, else with cutmix_prob CutMix; returns soft targets when it mixes."""

    def __init__(self, num_classes: int, mixup_prob: float, cutmix_prob: float, generator: torch.Generator) -> None:
        self.mixup_prob, self.cutmix_prob = mixup_prob, cutmix_prob
        self.generator = generator
        self.mixup = v2.MixUp(alpha=0.2, num_classes=num_classes)
        self.cutmix = v2.CutMix(alpha=1.0, num_classes=num_classes)

    @property
    def active(self) -> bool:
        return self.mixup_prob > 0 or self.cutmix_prob > 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        draw = float(torch.rand((), generator=self.generator))
        if draw < self.mixup_prob:
            return self.mixup(images, labels)
        if draw < self.mixup_prob + self.cutmix_prob:
            return self.cutmix(images, labels)
        return images, labels


def random_resized_crop_batch(
    images: torch.Tensor, size: int, generator: torch.Generator, flip: bool = True
) -> torch.Tensor:
    """A different random resized crop (and flip) per image of a float N×C×H×W batch, on its device.

    Each crop is an affine sampling grid, so the whole batch is one grid_sample call: no per-image Python.
    """
    n = images.shape[0]
    gen_device = "cpu"
    area = torch.empty(n, device=gen_device).uniform_(*CROP_SCALE, generator=generator)
    log_ratio = torch.empty(n, device=gen_device).uniform_(
        math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator
    )
    ratio = torch.exp(log_ratio)
    # Crop width/height as fractions of the image (clamped to fit), centres anywhere they fit.
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.ones(n)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic resize of a float square batch to size×size (the eval transform for square images)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=size < images.shape[-1], align_corners=False
    )
