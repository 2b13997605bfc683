"""Any timm model, as `timm/<name>`: timm's classifier is the head, timm's coarse parameter groups the stages, and
the preprocessing is the one its pretrained weights were trained with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from app.ml.architectures.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Architecture,
    ArchitectureError,
    BuiltModel,
    Preprocessing,
    WeightsUnavailable,
)

if TYPE_CHECKING:
    from torch import nn

PREFIX = "timm/"


class TimmClassifier(Protocol):
    """What every timm model offers (they share no typed base class)."""

    def reset_classifier(self, num_classes: int) -> None: ...

    def get_classifier(self) -> nn.Module: ...

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...


def is_timm_model(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def timm_model(name: str, num_classes: int, pretrained: bool) -> BuiltModel:
    """timm's `name` with a fresh head for num_classes (built with its pretrained head first, so weights load)."""
    import timm
    from timm.models import group_parameters

    try:
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # hub errors come in many types (HTTP, OS, HF)
        if pretrained:
            raise WeightsUnavailable(
                f"could not fetch ImageNet weights for timm/{name} ({exc}); on an offline machine pass "
                "the path of a weights file on the server as `weights`"
            ) from exc
        raise ArchitectureError(f"timm could not build {name!r}: {exc}") from exc
    classifier = cast(TimmClassifier, model)
    classifier.reset_classifier(num_classes)
    head = classifier.get_classifier()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    prep = Preprocessing(
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear",
    )
    built = BuiltModel(model=model, head=head, preprocessing=prep)
    head_names = built.head_param_names
    groups = group_parameters(model, classifier.group_matcher(coarse=True))
    stages = [[n for n in names if n not in head_names] for _, names in sorted(groups.items(), key=lambda kv: kv[0])]
    built.stages = [s for s in stages if s]
    return built


def build(arch: str, num_classes: int, pretrained: bool) -> BuiltModel:
    return timm_model(arch.removeprefix(PREFIX), num_classes, pretrained)


ENTRIES = [
    Architecture(PREFIX, build, "any timm model; stages: timm's coarse parameter groups", member=is_timm_model),
]
