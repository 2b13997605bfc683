"""benchmarks/quantization.py on a tiny configuration (ResNet-18, random backbone, 32 px, a few dozen real CIFAR
images): every backend has a row, measured with sane values or failed/skipped with its reason; the verdict follows
the export gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.backbones import build_model
from app.ml.predictor import LoadedModel
from benchmarks._bench_common import CifarData
from benchmarks.quantization import (
    BACKENDS,
    Backend,
    Config,
    Context,
    measure,
    run_benchmark,
    service_inputs,
    verdict,
    write,
)
from tests.factories import cifar_arrays

pytest.importorskip("onnxruntime")

TINY = Config(
    arch="resnet18",
    image_size=32,
    weights="none",
    train_images=64,
    test_images=40,
    calibration_images=32,
    epochs=2,
    bench_images=32,
    batch1_images=2,
    repeats=1,
    threads=1,
    compile=False,  # torch.compile takes minutes on two cores; its row must then say it was skipped
)


def tiny_data() -> CifarData:
    train, train_labels, names = cifar_arrays("data_batch_1")
    test, test_labels, _ = cifar_arrays("test_batch")
    return CifarData(names, train[:64], train_labels[:64], test[:40], test_labels[:40])


def test_every_backend_has_a_row_with_sane_values_or_a_reason(tmp_path: Path):
    result = run_benchmark(Config(**vars(TINY)), tiny_data())
    write(tmp_path / "quantization.json", result)
    saved = json.loads((tmp_path / "quantization.json").read_text())

    rows = {r["backend"]: r for r in saved["rows"]}
    assert list(rows) == list(BACKENDS)
    base = rows["torch_fp32"]
    assert base["status"] == "ok" and base["batch32_speedup"] == 1 and base["top1_agreement"] == 1
    assert rows["ort_fp32"]["status"] == "ok" and rows["ort_int8_qdq"]["status"] == "ok"
    for r in saved["rows"]:
        if r["status"] == "ok":
            assert 0 <= r["accuracy"] <= 1 and 0 <= r["top1_agreement"] <= 1
            assert r["accuracy_delta_points"] == pytest.approx((r["accuracy"] - base["accuracy"]) * 100)
            assert r["batch32_images_per_second"] > 0 and r["batch1_images_per_second"] > 0
            assert r["batch32_speedup"] > 0 and r["batch1_speedup"] > 0
            assert r["reason"] is None
        else:
            assert r["status"] in ("failed", "skipped") and r["reason"], r
    assert rows["torch_x86_pt2e_compiled"]["status"] == "skipped"
    assert "--no-compile" in rows["torch_x86_pt2e_compiled"]["reason"]
    assert rows["ort_int8_qdq"]["file_bytes"] < rows["ort_fp32"]["file_bytes"] / 2  # int8 weights
    assert saved["model"]["test_images"] == 40 and saved["model"]["calibration_images"] == 32
    assert saved["verdict"]["line"]


def test_a_backend_that_breaks_is_a_failed_row_naming_the_stage(tmp_path: Path):
    built = build_model("resnet18", 10, "none")
    meta = {"arch": "resnet18", "class_names": [str(i) for i in range(10)], "image_size": 32}
    loaded = LoadedModel(built.model.state_dict(), {**meta, "preprocessing": built.preprocessing.as_dict()})
    images, labels, _ = cifar_arrays("test_batch")
    x = service_inputs(loaded, images[:32])
    ctx = Context(loaded, [x], tmp_path, TINY)

    def unbuildable(ctx: Context) -> Backend:
        raise RuntimeError("no kernel\nfor this")

    def no_batch_1(ctx: Context) -> Backend:
        def forward(batch: torch.Tensor) -> torch.Tensor:
            if len(batch) == 1:
                raise ValueError("batch 1 unsupported")
            return torch.zeros(len(batch), 10)

        return Backend(forward)

    row = measure("torch_x86_fx", unbuildable, ctx, x, labels[:32])
    assert row["status"] == "failed" and row["reason"] == "build: RuntimeError: no kernel for this"
    row = measure("torch_x86_fx", no_batch_1, ctx, x, labels[:32])
    assert row["status"] == "failed" and row["reason"].startswith("time batch 1: ValueError")
    assert 0 <= row["accuracy"] <= 1


def row(key: str, ips: float, points: float, agreement: float) -> dict:
    passes = points >= -1 and agreement >= 0.99
    return {
        "backend": key,
        "label": key,
        "int8": True,
        "status": "ok",
        "batch32_images_per_second": ips,
        "batch1_images_per_second": ips / 4,
        "batch32_speedup": ips / 100,
        "batch1_speedup": ips / 100,
        "accuracy_delta_points": points,
        "top1_agreement": agreement,
        "passes_export_gate": passes,
    }


def test_the_verdict_prefers_a_row_within_the_gate_then_the_faster():
    fast_but_lossy = row("torch_x86_pt2e_compiled", 400, -2.5, 0.97)
    ort = row("ort_int8_qdq", 200, -0.2, 0.995)
    assert verdict([ort, fast_but_lossy])["winner"] == "ort_int8_qdq"
    faster = row("torch_x86_fx", 300, -0.5, 0.992)
    got = verdict([ort, fast_but_lossy, faster])
    assert got["winner"] == "torch_x86_fx" and got["runner_up"] == "ort_int8_qdq"
    assert got["batch32_ratio"] == pytest.approx(1.5)
    assert got["line"].startswith("better int8 path here: torch_x86_fx") and "-0.30 points" in got["line"]
    none = verdict([row("ort_int8_qdq", 200, -3, 0.9), fast_but_lossy])
    assert none["winner"] is None and none["better"] == "torch_x86_pt2e_compiled"
    assert "no int8 path passes" in none["line"]
    failed = {"backend": "torch_x86_fx", "int8": True, "status": "failed", "reason": "x"}
    assert verdict([ort, failed])["winner"] == "ort_int8_qdq"
    assert np.isfinite(got["batch1_ratio"])
