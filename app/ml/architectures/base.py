"""What every architecture module builds: a classifier with a fresh head, its stage map and its preprocessing.

Nothing here imports torch, so the API contract (which lists the architectures) loads without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        return cls(tuple(data["mean"]), tuple(data["std"]), data.get("interpolation", "bilinear"))


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


# (arch name, number of classes, with ImageNet weights) -> the model with a fresh head, stages and preprocessing
Build = Callable[[str, int, bool], BuiltModel]


@dataclass(frozen=True)
class Architecture:
    """A registry entry: one architecture, or a family of them under a name prefix (every timm model)."""

    name: str  # the `arch` value, or a family's prefix (`timm/`)
    build: Build
    docs: str  # what it is, where its head and stages are
    member: Callable[[str], bool] | None = None  # a family: whether the rest of a name is one of its members

    @property
    def label(self) -> str:
        return f"{self.name}<name>" if self.member is not None else self.name

    def accepts(self, name: str) -> bool:
        if self.member is None:
            return name == self.name
        return name.startswith(self.name) and self.member(name[len(self.name) :])


def stages_by_prefix(model: nn.Module, groups: list[list[str]]) -> list[list[str]]:
    """Parameter names per stage, a stage being the parameters under any of its name prefixes (empty ones dropped)."""
    names = [n for n, _ in model.named_parameters()]
    stages = [[n for n in names if any(n == p or n.startswith(p) for p in group)] for group in groups]
    return [s for s in stages if s]
