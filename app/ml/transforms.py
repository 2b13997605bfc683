"""Per-image transforms on uint8 tensors, and normalisation done per batch on the training device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def interpolation_mode(name: str) -> InterpolationMode:
    """The torchvision mode for a Preprocessing.interpolation name (bilinear for names it does not know)."""
    return INTERPOLATIONS.get(name, InterpolationMode.BILINEAR)


def eval_transform(image_size: int, interpolation: str = "bilinear") -> Callable[[torch.Tensor], torch.Tensor]:
    """Shorter side to image_size, then the centre square: deterministic, for validation, test and serving."""
    mode = interpolation_mode(interpolation)
    return v2.Compose([v2.Resize(image_size, interpolation=mode, antialias=True), v2.CenterCrop(image_size)])


def image_to_tensor(image: Image.Image, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A decoded image as the C×H×W uint8 tensor a model takes, through its eval transform."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    return transform(rgb)


def normalize_batch(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 N×C×H×W to normalised floats; done on the device so only bytes cross the bus."""
    m = torch.tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1) * 255.0
    return (images.to(dtype) - m) / s
