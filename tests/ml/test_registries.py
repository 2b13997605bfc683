"""STRATEGIES and ARCHITECTURES: every entry is documented (README, API schema), does what it says, and a name
nobody registered is refused with the choices."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from app.ml.architectures import ARCHITECTURES, Architecture, ArchitectureError
from app.ml.architectures.base import BuiltModel, Preprocessing
from app.ml.backbones import build_model, count_stages
from app.ml.registry import Registry
from app.ml.strategies import STRATEGIES, StrategyError, apply_strategy, export_state_dict
from app.schemas import JobCreate

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_row(field: str) -> str:
    return next(line for line in README.splitlines() if line.startswith(f"| `{field}` |"))


def test_every_strategy_is_documented_in_the_readme_and_the_schema():
    schema = JobCreate.model_json_schema()["properties"]["strategy"]
    assert schema["enum"] == list(STRATEGIES.names())
    row = readme_row("strategy")
    for strategy in STRATEGIES:
        assert f"{strategy.name}: {strategy.docs}" in schema["description"]
        assert f"`{strategy.name}`:" in row, f"README's strategy row does not describe {strategy.name}"


def test_every_architecture_is_documented_in_the_readme_and_the_schema():
    description = JobCreate.model_json_schema()["properties"]["arch"]["description"]
    assert description.split("|") == list(ARCHITECTURES.labels())
    row = readme_row("arch")
    for arch in ARCHITECTURES:
        documented = f"`{arch.name}<" if arch.member is not None else f"`{arch.name}`"
        assert documented in row, f"README's arch row does not list {arch.label}"


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a.member is None], ids=lambda a: a.name)
def test_each_architecture_has_the_stages_it_documents(arch: Architecture):
    documented = int(re.search(r"(\d+) stages", arch.docs).group(1))
    assert count_stages(arch.name) == documented
    assert f"{arch.label}" in readme_row("arch")


def test_the_timm_family_takes_real_timm_names_only():
    assert "timm/resnet18" in ARCHITECTURES and "timm/not_a_model" not in ARCHITECTURES
    assert "timm/" not in ARCHITECTURES and "timm/<name>" not in ARCHITECTURES
    with torch.device("meta"):
        built = build_model("timm/resnet18", 3, "none")
    assert built.stages and not built.head_param_names & {n for s in built.stages for n in s}


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(StrategyError, match="unknown strategy 'bogus': use linear, partial, full or lora"):
        STRATEGIES.get("bogus")
    with pytest.raises(StrategyError, match="unknown strategy 'Linear'"):
        apply_strategy(tiny_model(), "Linear")
    choices = "resnet18, resnet34, .*, efficientnet_lite0 or timm/<name>"
    with pytest.raises(ArchitectureError, match=f"unknown architecture 'resnet9000': use {choices}"):
        ARCHITECTURES.get("resnet9000")
    with pytest.raises(ArchitectureError, match="unknown architecture 'timm/not_a_model'"):
        build_model("timm/not_a_model", 2, "none")
    with pytest.raises(ValueError, match="registered twice"):
        Registry("strategy", StrategyError, [STRATEGIES.get("full"), STRATEGIES.get("full")])


def tiny_model() -> BuiltModel:
    """Three stages and a head: small enough to check every parameter's fate."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),  # stage 0
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)),  # stage 1
        nn.Sequential(nn.Conv2d(4, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),  # stage 2
        nn.Linear(8, 3),  # head
    )
    stages = [["0.weight", "0.bias"], ["1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias"], ["2.0.weight", "2.0.bias"]]
    return BuiltModel(model=model, head=model[3], preprocessing=Preprocessing(), stages=stages)


def trainable_names(built: BuiltModel) -> set[str]:
    return {n for n, p in built.model.named_parameters() if p.requires_grad}


HEAD = {"3.weight", "3.bias"}
ALL = {"0.weight", "0.bias", "1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias", "2.0.weight", "2.0.bias"} | HEAD


def test_linear_trains_the_head_alone_on_cached_features():
    built = tiny_model()
    params = apply_strategy(built, "linear")
    assert trainable_names(built) == HEAD and len(params) == 2
    assert STRATEGIES.get("linear").feature_cache and not STRATEGIES.get("linear").augmented


def test_partial_trains_the_head_and_the_last_stages():
    built = tiny_model()
    apply_strategy(built, "partial", unfreeze_stages=1)
    assert trainable_names(built) == HEAD | {"2.0.weight", "2.0.bias"}
    apply_strategy(built, "partial", unfreeze_stages=2)
    stage_1 = {"1.0.weight", "1.0.bias", "1.1.weight", "1.1.bias"}
    assert trainable_names(built) == HEAD | {"2.0.weight", "2.0.bias"} | stage_1
    with pytest.raises(StrategyError, match="between 1 and 3"):
        apply_strategy(built, "partial", unfreeze_stages=4)


def test_full_trains_everything():
    built = tiny_model()
    apply_strategy(built, "partial", unfreeze_stages=1)
    apply_strategy(built, "full")
    assert trainable_names(built) == ALL


def test_lora_trains_adapters_and_the_head_and_serves_plain_weights():
    built = tiny_model()
    plain_keys = set(built.model.state_dict())
    apply_strategy(built, "lora", lora_rank=2, lora_alpha=4.0)
    trainable = trainable_names(built)
    assert built.lora and trainable
    adapters = {n for n in trainable if "lora_" in n}
    heads = trainable - adapters
    # Adapters on the three dense convolutions (never the head), and the head trains whole.
    assert {n.split(".lora_")[0].removeprefix("base_model.model.") for n in adapters} == {"0", "1.0", "2.0"}
    assert {n.rsplit(".", 1)[-1] for n in heads} == {"weight", "bias"} and all(".3." in n for n in heads)
    assert set(export_state_dict(built)) == plain_keys


@dataclass
class Request:
    arch: str
    weights: str = "imagenet"
    unfreeze_stages: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0


def test_strategy_checks_before_a_job_is_queued():
    STRATEGIES.get("partial").check(Request("resnet18", unfreeze_stages=5))
    with pytest.raises(StrategyError, match="unfreeze_stages=6 but resnet18 has 5 stages; use 1..5"):
        STRATEGIES.get("partial").check(Request("resnet18", unfreeze_stages=6))
    with pytest.raises(StrategyError, match="lora adapts pretrained weights"):
        STRATEGIES.get("lora").check(Request("resnet18", weights="none"))
    STRATEGIES.get("lora").check(Request("resnet18"))
    for name in ("linear", "full"):
        STRATEGIES.get(name).check(Request("resnet18", weights="none", unfreeze_stages=64))


@pytest.mark.parametrize("strategy", list(STRATEGIES), ids=lambda s: s.name)
def test_what_each_strategy_says_of_itself_matches_what_it_trains(strategy):
    built = tiny_model()
    strategy.apply(built, Request("tiny", unfreeze_stages=1))
    trainable = trainable_names(built)
    if strategy.feature_cache:  # trains on cached features: the backbone must stay frozen
        assert trainable == HEAD and not strategy.augmented
    every_weight = not built.lora and trainable == ALL
    assert strategy.flops_factor == (3.0 if every_weight else 2.0)
