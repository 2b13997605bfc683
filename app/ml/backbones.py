"""build_model(): a registered architecture with a fresh classification head, its preprocessing and stage map,
random or with ImageNet weights or a weights file on the server."""

from __future__ import annotations

from pathlib import Path

import torch

from app.ml.architectures import ARCHITECTURES
from app.ml.architectures.base import BuiltModel
from app.ml.architectures.weights import load_weights_file


def count_stages(arch: str) -> int:
    """Number of backbone stages of arch, computed on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        built = ARCHITECTURES.get(arch).build(arch, 2, False)
    return len(built.stages)


def build_model(arch: str, num_classes: int, weights: str = "imagenet") -> BuiltModel:
    """arch with `weights` ('imagenet', 'none' or a local file) and a new head for num_classes."""
    architecture = ARCHITECTURES.get(arch)
    if weights == "imagenet":
        return architecture.build(arch, num_classes, True)
    built = architecture.build(arch, num_classes, False)
    if weights != "none":
        load_weights_file(built, Path(weights))
    return built
