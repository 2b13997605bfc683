"""torchvision ResNets: the `fc` layer is the head; the stages are the stem (conv1, bn1), then layer1 to layer4."""

from __future__ import annotations

from app.ml.architectures.base import Architecture, BuiltModel, stages_by_prefix
from app.ml.architectures.torchvision_common import torchvision_backbone


def build(arch: str, num_classes: int, pretrained: bool) -> BuiltModel:
    from torch import nn

    model, preprocessing = torchvision_backbone(arch, pretrained)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    stages = [["conv1.", "bn1."]] + [[f"layer{i}."] for i in range(1, 5)]
    return BuiltModel(model=model, head=model.fc, preprocessing=preprocessing, stages=stages_by_prefix(model, stages))


DOCS = "torchvision ResNet; 5 stages (stem, layer1..layer4)"
ENTRIES = [Architecture(name, build, DOCS) for name in ("resnet18", "resnet34", "resnet50")]
