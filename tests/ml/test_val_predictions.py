"""fit() returns the best weights' prediction for each validation image, numbered by the images' refs and
counted exactly as the validation confusion matrix; refs number a stored dataset's images split after split."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from app.ml.architectures.base import Preprocessing
from app.ml.config import TrainConfig
from app.ml.data import DeviceBatches, SampleSet, load_splits, ref_offsets, stratified_split, write_manifest
from app.ml.engine import DeviceSetup, evaluate
from app.ml.trainer import BaseHooks, FitResult, fit
from tests.factories import CIFAR_DIR


def samples(n: int = 48, classes: int = 3, size: int = 16) -> SampleSet:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    arrays = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    arrays[np.arange(n), :, :, labels] += 150  # each class its colour: learnable in an epoch
    return SampleSet(labels=labels, arrays=arrays, refs=np.arange(n) + 1000)


def tiny_config(**fields) -> TrainConfig:
    base = dict(arch="resnet18", weights="none", strategy="full", epochs=1, batch_size=8, image_size=32, seed=4)
    return TrainConfig(**(base | {"val_fraction": 0.25} | fields))


def check(result: FitResult, data: SampleSet, cfg: TrainConfig) -> None:
    preds = result.val_predictions
    assert preds is not None and result.val_metrics is not None
    _, val_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
    assert preds.refs.tolist() == data.refs[val_idx].tolist()  # the held-out images, in order, by ref
    assert preds.true.tolist() == data.labels[val_idx].tolist()
    matrix = result.val_metrics["confusion_matrix"]
    pairs = Counter(zip(preds.true.tolist(), preds.predicted.tolist(), strict=True))
    assert {(t, p): n for t, row in enumerate(matrix) for p, n in enumerate(row) if n} == dict(pairs)
    assert ((preds.confidence > 0) & (preds.confidence <= 1)).all()


@pytest.mark.parametrize("strategy", ["full", "linear"])
def test_fit_returns_the_val_predictions_its_confusion_matrix_counts(strategy):
    data, cfg = samples(), tiny_config(strategy=strategy, augmentation="none")
    check(fit(cfg, ["r", "g", "b"], {"train": data}, BaseHooks()), data, cfg)


def test_no_val_split_no_predictions():
    result = fit(tiny_config(val_fraction=0), ["r", "g", "b"], {"train": samples()}, BaseHooks())
    assert result.val_predictions is None and result.val_metrics is None


def test_evaluation_on_device_batches_keeps_the_images_order():
    data = samples(n=20)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    setup = DeviceSetup(torch.device("cpu"), channels_last=False)
    loader = DeviceBatches(data, 6, 32, setup.device, train=False, augment=False, seed=0)
    acc = evaluate(model, loader, setup, Preprocessing(), 3, keep_predictions=True)
    true, predicted, confidence = acc.predictions()
    assert true.tolist() == data.labels.tolist() and len(predicted) == len(confidence) == 20
    assert acc.confusion.sum() == 20
    assert evaluate(model, loader, setup, Preprocessing(), 3).predictions()[0].size == 0  # kept only when asked


def test_refs_number_the_splits_one_after_another(tmp_path):
    assert ref_offsets({"test": 5, "train": 10, "val": 3}) == {"train": 0, "val": 10, "test": 13}
    write_manifest(
        tmp_path,
        {
            "format": "cifar10",
            "root": str(CIFAR_DIR),
            "class_names": [str(i) for i in range(10)],
            "splits": {"test": ["test_batch"], "train": ["data_batch_1", "data_batch_2"]},
        },
    )
    _, splits = load_splits(tmp_path)
    n_train = len(splits["train"])
    assert splits["train"].refs.tolist() == list(range(n_train))
    assert splits["test"].refs.tolist() == list(range(n_train, n_train + len(splits["test"])))
    held = splits["train"].subset([5, 2]).decode_all(32, 1 << 20)
    assert held.refs.tolist() == [5, 2]


@pytest.mark.gpu
def test_on_cuda_with_device_resident_batches():
    data, cfg = samples(), tiny_config(augmentation="basic")
    check(fit(cfg, ["r", "g", "b"], {"train": data}, BaseHooks(), DeviceSetup.for_device("cuda")), data, cfg)
