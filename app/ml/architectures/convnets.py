"""torchvision convnets built as `features[...]` + `classifier[...]` (MobileNetV3, EfficientNet, ConvNeXt): the
last classifier layer is replaced, the whole classifier is the head, and each `features[i]` block is a stage."""

from __future__ import annotations

from app.ml.architectures.base import Architecture, BuiltModel, stages_by_prefix
from app.ml.architectures.torchvision_common import torchvision_backbone


def build(arch: str, num_classes: int, pretrained: bool) -> BuiltModel:
    from torch import nn

    model, preprocessing = torchvision_backbone(arch, pretrained)
    last = model.classifier[-1]
    model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    stages = [[f"features.{i}."] for i in range(len(model.features))]
    return BuiltModel(
        model=model, head=model.classifier, preprocessing=preprocessing, stages=stages_by_prefix(model, stages)
    )


ENTRIES = [
    Architecture("mobilenet_v3_large", build, "torchvision MobileNetV3-Large; 17 stages (features[i])"),
    Architecture("efficientnet_b0", build, "torchvision EfficientNet-B0; 9 stages (features[i])"),
    Architecture("convnext_tiny", build, "torchvision ConvNeXt-T; 8 stages (features[i])"),
]
