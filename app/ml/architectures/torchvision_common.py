"""torchvision models by name: random or with their default ImageNet weights, and the preprocessing those expect."""

from __future__ import annotations

from typing import Any

from app.ml.architectures.base import Preprocessing, WeightsUnavailable


def torchvision_backbone(arch: str, pretrained: bool) -> tuple[Any, Preprocessing]:
    """The torchvision model `arch` with its original head (torchvision is untyped: the model is Any)."""
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(arch, weights=None), Preprocessing()
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        model = torchvision.models.get_model(arch, weights=weights)
    except Exception as exc:  # urllib/OS errors when offline
        raise WeightsUnavailable(
            f"could not download ImageNet weights for {arch} ({exc}); on an offline machine put the "
            "file in the torch hub cache or pass its path on the server as `weights`"
        ) from exc
    transforms = weights.transforms()
    return model, Preprocessing(tuple(transforms.mean), tuple(transforms.std), "bilinear")
