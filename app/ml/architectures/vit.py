"""torchvision Vision Transformers: `heads` is the head (its last layer replaced); the stages are the patch embedding
with the class token and position embedding, then one per encoder layer (the last one with the final norm)."""

from __future__ import annotations

from app.ml.architectures.base import Architecture, BuiltModel, stages_by_prefix
from app.ml.architectures.torchvision_common import torchvision_backbone


def build(arch: str, num_classes: int, pretrained: bool) -> BuiltModel:
    from torch import nn

    model, preprocessing = torchvision_backbone(arch, pretrained)
    model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
    stages = [["class_token", "conv_proj.", "encoder.pos_embedding"]]
    stages += [[f"encoder.layers.encoder_layer_{i}."] for i in range(len(model.encoder.layers))]
    stages[-1].append("encoder.ln.")
    return BuiltModel(
        model=model, head=model.heads, preprocessing=preprocessing, stages=stages_by_prefix(model, stages)
    )


ENTRIES = [Architecture("vit_b_16", build, "torchvision ViT-B/16; 13 stages (embeddings, 12 encoder layers)")]
