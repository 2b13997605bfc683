"""Issue 3's knobs on CPU: discriminative LRs, LoRA, schedules, class weights, early stopping, augmentation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from app.ml.augment import AUGMENTATIONS, BatchMixer, random_resized_crop_batch, resize_batch, train_transform
from app.ml.backbones import build_model
from app.ml.config import TrainConfig
from app.ml.data import DeviceBatches, SampleSet
from app.ml.engine import DeviceSetup, RunningStats, train_head_epoch, train_one_epoch
from app.ml.flops import peak_flops, peak_for
from app.ml.optim import EarlyStopping, class_weights, lr_factor, make_optimizer, stage_depths
from app.ml.predictor import LoadedModel
from app.ml.strategies import apply_strategy, export_state_dict, lora_targets
from app.ml.trainer import BaseHooks, fit, make_loader
from app.ml.trainer import baseline as trainer_baseline
from app.ml.trainer import fitting as trainer_fit


def tiny_samples(n: int = 12, size: int = 32, classes: int = 2) -> SampleSet:
    rng = np.random.default_rng(0)
    return SampleSet(labels=np.arange(n) % classes, arrays=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8))


def test_discriminative_learning_rates_in_param_groups():
    built = build_model("resnet18", 3, "none")
    apply_strategy(built, "full")
    cfg = TrainConfig(arch="resnet18", weights="none", learning_rate=0.1, lr_decay=0.5)
    opt = make_optimizer(list(built.model.named_parameters()), cfg, stage_depths(built))
    lrs = {(g["depth"], g["weight_decay"] > 0): g["lr"] for g in opt.param_groups}
    for depth in range(6):  # head 0, layer4 1, ..., stem 5
        assert lrs[(depth, True)] == pytest.approx(0.1 * 0.5**depth)
    stem = next(g for g in opt.param_groups if any(p is built.model.conv1.weight for p in g["params"]))
    head = next(g for g in opt.param_groups if any(p is built.model.fc.weight for p in g["params"]))
    assert stem["lr"] == pytest.approx(0.1 * 0.5**5) and head["lr"] == pytest.approx(0.1)
    assert TrainConfig(arch="x").lr_decay == 0.9 and TrainConfig(arch="x", weights="none").lr_decay == 1.0


def test_epoch_stats_are_the_batch_size_weighted_means_of_every_step():
    # The sums stay on the device during the epoch; what comes out must equal a per-step reference.
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    features, labels = torch.randn(50, 8), torch.arange(50) % 3
    steps = []

    class RecordingLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, y):
            loss = super().forward(logits, y)
            steps.append((float(loss.detach()) * len(y), int((logits.argmax(1) == y).sum()), len(y)))
            return loss

    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    stats = train_head_epoch(head, features, labels, opt, None, RecordingLoss(), 16, torch.Generator().manual_seed(1))
    assert stats.images == 50 and len(steps) == 4
    assert stats.loss == pytest.approx(sum(s[0] for s in steps) / 50, rel=1e-5)
    assert stats.accuracy == pytest.approx(sum(s[1] for s in steps) / 50)

    running = RunningStats(torch.device("cpu"))
    assert running.finish().images == 0  # an empty epoch is zeros, not a division by zero


def test_lora_trains_adapters_only_and_merges_for_serving(tmp_path):
    built = build_model("efficientnet_lite0", 2, "imagenet")
    original = {k: v.clone() for k, v in built.model.state_dict().items()}
    targets = lora_targets(built)
    assert "conv_head" in targets and "classifier" not in targets and "blocks.1.0.conv_dw" not in targets
    params = apply_strategy(built, "lora", lora_rank=4, lora_alpha=8)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert sum(p.numel() for p in params) < 0.1 * sum(v.numel() for v in original.values())
    setup = DeviceSetup.for_device("cpu")
    loader = make_loader(tiny_samples(), train_transform(32), 6, True, setup, 0, 0)
    opt = make_optimizer(
        [(n, p) for n, p in built.model.named_parameters() if p.requires_grad],
        TrainConfig(arch="efficientnet_lite0", learning_rate=0.05),
    )
    train_one_epoch(built.model, loader, opt, None, torch.nn.CrossEntropyLoss(), setup, built.preprocessing)
    merged = export_state_dict(built)
    assert set(merged) == set(original)  # plain keys: the served model needs no peft
    assert torch.equal(merged["bn1.running_mean"], original["bn1.running_mean"])  # frozen BN untouched
    assert not torch.equal(merged["conv_head.weight"], original["conv_head.weight"])  # adapter merged in
    assert torch.equal(merged["blocks.1.0.conv_dw.weight"], original["blocks.1.0.conv_dw.weight"])
    meta = {
        "arch": "efficientnet_lite0",
        "class_names": ["a", "b"],
        "image_size": 32,
        "preprocessing": built.preprocessing.as_dict(),
    }
    served = LoadedModel(merged, meta)
    assert len(served.predict([Image.new("RGB", (32, 32), "blue")], top_k=2)[0]) == 2


def test_schedules():
    total = 100
    assert lr_factor(0, total, 0, "cosine") == pytest.approx(1.0)
    assert lr_factor(50, total, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, total, 0, "cosine") < 0.01
    assert lr_factor(4, total, 10, "cosine") == pytest.approx(0.5)  # linear warmup
    assert lr_factor(37, total, 10, "constant") == 1.0
    assert lr_factor(0, total, 0, "onecycle") == pytest.approx(1 / 25)
    assert lr_factor(30, total, 0, "onecycle") == pytest.approx(1.0)
    assert lr_factor(100, total, 0, "onecycle") == pytest.approx(1e-4)


def test_balanced_class_weights():
    weights = class_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    assert weights.tolist() == pytest.approx([4 / 6, 2.0, 0.0])
    assert class_weights(np.array([0, 1]), 2, "none") is None


def test_early_stopping_counts_epochs_without_gain():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    assert [stop.update(s) for s in (0.5, 0.6, 0.605, 0.6)] == [False, False, False, True]
    assert not EarlyStopping(None).update(0.1)


@pytest.mark.parametrize("preset", AUGMENTATIONS)
def test_augmentation_presets_keep_the_image_size(preset):
    out = train_transform(48, preset)(torch.randint(0, 255, (3, 32, 40), dtype=torch.uint8))
    assert out.shape == (3, 48, 48) and out.dtype == torch.uint8


def test_mixup_and_cutmix_give_soft_targets():
    mixer = BatchMixer(4, mixup_prob=0.5, cutmix_prob=0.5, generator=torch.Generator().manual_seed(0))
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    mixed, soft = mixer(images, labels)
    assert mixed.shape == images.shape and soft.shape == (8, 4)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    assert not BatchMixer(4, 0, 0, torch.Generator()).active


def test_device_side_crops():
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((5, 3, 32, 32), 77.0)
    out = random_resized_crop_batch(flat, 64, gen)
    assert out.shape == (5, 3, 64, 64) and torch.allclose(out, torch.full_like(out, 77.0))
    ramp = torch.arange(32.0).expand(1, 3, 32, 32).repeat(64, 1, 1, 1)
    crops = random_resized_crop_batch(ramp, 16, gen)
    slopes = crops[:, 0, 8, -1] - crops[:, 0, 8, 0]
    assert (slopes > 0).any() and (slopes < 0).any()  # some flipped, some not
    assert resize_batch(flat, 32) is flat and resize_batch(flat, 48).shape[-1] == 48
    batches = DeviceBatches(tiny_samples(10), 4, 48, torch.device("cpu"), train=True, augment=True, seed=0)
    got = list(batches)
    assert [b.shape[0] for b, _ in got] == [4, 4, 2] and got[0][0].shape[1:] == (3, 48, 48)
    assert sorted(torch.cat([y for _, y in got]).tolist()) == sorted(tiny_samples(10).labels.tolist())


class Hooks(BaseHooks):
    def __init__(self) -> None:
        self.reports = []

    def on_epoch(self, report, built, state) -> None:
        self.reports.append(report)


def test_fit_with_mixup_early_stopping_and_baseline_not_applicable():
    samples = tiny_samples(24, classes=3)
    cfg = TrainConfig(
        arch="resnet18",
        weights="none",
        strategy="full",
        epochs=6,
        batch_size=8,
        image_size=32,
        learning_rate=1e-9,
        early_stopping_patience=1,
        mixup_prob=0.5,
        cutmix_prob=0.3,
        augmentation="trivialaugment",
        class_weighting="balanced",
        schedule="onecycle",
    )
    hooks = Hooks()
    result = fit(cfg, ["a", "b", "c"], {"train": samples, "test": samples}, hooks, DeviceSetup.for_device("cpu"))
    assert result.stopped_early and result.epochs_run == len(hooks.reports) < 6
    assert result.baseline["status"] == "not applicable"
    assert result.flops_per_image and result.flops_per_image > 1e6
    assert all(r.tflops and r.tflops > 0 and r.mfu is None for r in hooks.reports)  # no known peak on a CPU


def test_peak_rate_follows_the_card_and_the_precision_it_runs_in():
    sxm = "NVIDIA H100 80GB HBM3"
    assert peak_for(sxm, amp=True, tf32=True) == pytest.approx(989.4e12)
    assert peak_for(sxm, amp=False, tf32=True) == pytest.approx(494.7e12)  # fp32 convolutions on tf32 cores
    assert peak_for(sxm, amp=False, tf32=False) == pytest.approx(66.9e12)
    assert peak_for("NVIDIA H100 PCIe", amp=True, tf32=True) == pytest.approx(756e12)  # not the SXM figure
    assert peak_for("NVIDIA A100-SXM4-40GB", amp=True, tf32=True) == pytest.approx(312e12)  # not the A10's
    assert peak_for("NVIDIA L40S", amp=True, tf32=True) == pytest.approx(362.1e12)  # not the L4's
    assert peak_for("Tesla V100-SXM2-16GB", amp=False, tf32=True) == pytest.approx(15.7e12)  # no tf32 cores
    assert peak_for("Some Future GPU", amp=True, tf32=True) is None
    assert peak_flops(torch.device("cpu"), True) is None


def test_fit_linear_reports_the_model_before_fine_tuning():
    samples = tiny_samples(30, classes=3)
    cfg = TrainConfig(
        arch="efficientnet_lite0", strategy="linear", epochs=3, batch_size=8, image_size=32, learning_rate=0.01
    )
    result = fit(cfg, ["a", "b", "c"], {"train": samples, "test": samples}, Hooks(), DeviceSetup.for_device("cpu"))
    assert result.baseline["status"] == "measured"
    assert set(result.baseline) == {"status", "val", "test"}
    assert result.baseline["test"]["count"] == 30 and 0 <= result.baseline["test"]["accuracy"] <= 1
    assert math.isfinite(result.test_metrics["loss"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("arch", "strategy", "extra"),
    [
        ("efficientnet_lite0", "linear", {}),  # shipped weights: the feature cache and the baseline run in autocast
        ("resnet18", "partial", {"unfreeze_stages": 1, "mixup_prob": 0.5}),
        ("resnet18", "lora", {}),
    ],
)
def test_mixed_precision_paths_run_under_cpu_autocast(dtype, arch, strategy, extra):
    """The CUDA AMP code (bf16 autocast; fp16 with a GradScaler) exercised without a GPU through CPU autocast."""

    class StateHooks(Hooks):
        def on_epoch(self, report, built, state) -> None:
            super().on_epoch(report, built, state)
            self.state = state()

    weights = {} if arch == "efficientnet_lite0" else {"weights": "none"}
    cfg = TrainConfig(arch=arch, strategy=strategy, epochs=2, batch_size=8, image_size=32, **weights, **extra)
    setup = DeviceSetup(device=torch.device("cpu"), amp_dtype=dtype)
    hooks = StateHooks()
    samples = tiny_samples(24, classes=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)  # fp16 skips a step
        result = fit(cfg, ["a", "b", "c"], {"train": samples, "val": samples, "test": samples}, hooks, setup)
    assert [r.epoch for r in hooks.reports] == [1, 2]
    assert all(math.isfinite(r.train.loss) and math.isfinite(r.val_loss) for r in hooks.reports)
    assert result.test_metrics["count"] == 24 and math.isfinite(result.test_metrics["loss"])
    # Autocast computes in 16 bits, but the weights checkpointed and served stay in fp32.
    assert {t.dtype for t in hooks.state["model"].values() if t.is_floating_point()} == {torch.float32}
    assert (hooks.state["scaler"] is not None) == (dtype == torch.float16 and strategy != "linear")
    if strategy == "linear":
        assert result.baseline["status"] == "measured"


@pytest.mark.parametrize("baseline", [True, False])
def test_probe_epochs_start_fine_tuning_from_a_trained_head(monkeypatch, baseline):
    """LP-FT: with probe_epochs the head fine-tuning starts from was trained on the backbone's features."""
    rng = np.random.default_rng(0)
    labels = np.arange(30) % 3
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[labels][:, None, None, :]
    arrays = np.clip(colours + rng.integers(-40, 40, (30, 32, 32, 3)), 0, 255).astype(np.uint8)
    samples, names = SampleSet(labels=labels, arrays=arrays), ["red", "green", "blue"]
    setup = DeviceSetup.for_device("cpu")
    heads, feature_passes = [], []
    real_finetune, real_features = trainer_fit.fine_tune, trainer_baseline.backbone_features

    def spy_finetune(ctx):
        heads.append({k: v.clone() for k, v in ctx.built.head.state_dict().items()})
        return real_finetune(ctx)

    def spy_features(built, split, *args):
        feature_passes.append(len(split))
        return real_features(built, split, *args)

    monkeypatch.setattr(trainer_fit, "fine_tune", spy_finetune)
    monkeypatch.setattr(trainer_baseline, "backbone_features", spy_features)
    common = dict(arch="efficientnet_lite0", strategy="partial", epochs=1, batch_size=8, image_size=32)
    for probe_epochs in (0, 20):
        cfg = TrainConfig(**common, learning_rate=0.05, probe_epochs=probe_epochs, baseline=baseline)
        fit(cfg, names, {"train": samples}, Hooks(), setup)
    # baseline on: the probe reuses the baseline's feature pass; off: one pass over the training images
    assert feature_passes == ([27, 3] * 2 if baseline else [27])

    torch.manual_seed(0)
    built = build_model("efficientnet_lite0", 3, "imagenet")
    assert all(torch.equal(v, heads[0][k]) for k, v in built.head.state_dict().items())  # probe_epochs 0: fresh
    features, labels = real_features(built, samples, TrainConfig(**common), setup)
    loss = torch.nn.CrossEntropyLoss()

    def head_loss(state):
        built.head.load_state_dict(state)
        built.head.eval()
        with torch.inference_mode():
            return loss(built.head(features), labels).item()

    assert head_loss(heads[1]) < head_loss(heads[0]) - 0.3  # 1.10 -> 0.62 when written


def test_small_image_folders_are_decoded_once(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (80, 40), (i * 50, 0, 0)).save(path)
        paths.append(path)
    samples = SampleSet(labels=np.array([0, 1, 0, 1]), paths=paths)
    cached = samples.decode_all(max_side=20, budget_bytes=10**6)
    assert cached.decoded is not None and cached.decoded[0].shape == (20, 40, 3)
    assert cached.image(3).shape == (3, 20, 40) and int(cached.image(3)[0, 0, 0]) == 150
    assert cached.subset([1]).decoded[0].shape == (20, 40, 3)
    assert samples.decode_all(max_side=20, budget_bytes=100).decoded is None  # over budget: files stay files


class ProgressHooks(Hooks):
    """Reads the running loss at every step: the most a progress listener can do."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: list[tuple[int, int, int, int, int, float]] = []

    def on_progress(self, epoch, epochs, step, steps, images, loss) -> None:
        self.progress.append((epoch, epochs, step, steps, images, loss()))


@pytest.mark.parametrize(("arch", "strategy"), [("resnet18", "full"), ("efficientnet_lite0", "linear")])
def test_progress_reports_every_step_and_changes_no_number(arch, strategy):
    samples = tiny_samples(20, classes=2)
    weights = {"weights": "none"} if arch == "resnet18" else {}
    cfg = TrainConfig(
        arch=arch, strategy=strategy, epochs=2, batch_size=8, image_size=32, learning_rate=0.01, seed=3, **weights
    )
    splits = {"train": samples, "test": samples}
    quiet, loud = Hooks(), ProgressHooks()
    first = fit(cfg, ["a", "b"], splits, quiet, DeviceSetup.for_device("cpu"))
    second = fit(cfg, ["a", "b"], splits, loud, DeviceSetup.for_device("cpu"))
    assert [(r.train.loss, r.val_loss, r.val_accuracy) for r in quiet.reports] == [
        (r.train.loss, r.val_loss, r.val_accuracy) for r in loud.reports
    ]
    assert first.test_metrics == second.test_metrics
    steps = loud.progress[0][3]
    assert [(e, s) for e, _, s, *_ in loud.progress] == [(e, s) for e in (1, 2) for s in range(1, steps + 1)]
    for epoch, report in zip((1, 2), loud.reports, strict=True):
        last = [p for p in loud.progress if p[0] == epoch][-1]
        assert last[4] == report.train.images and last[5] == pytest.approx(report.train.loss)
