"""int8 for serving, measured: ONNX Runtime static QDQ quantization (the service's export) against PyTorch's x86
quantization (PT2E with X86InductorQuantizer, eager and through torch.compile; FX graph mode), beside fp32
PyTorch eager (the baseline, measured in the same run) and ONNX Runtime fp32, on one fine-tuned model.

    python benchmarks/quantization.py     # efficientnet_lite0, 224 px: a table, benchmarks/results/quantization.json
    python benchmarks/quantization.py --arch resnet18 --image-size 160
    python benchmarks/quantization.py --train-images 400 --test-images 128 --bench-images 64 --repeats 1 --no-compile

The model: ImageNet weights (efficientnet_lite0's ship in a package; other archs need theirs in the torch hub cache,
else the backbone stays random and the JSON says so) and a linear head trained on cached backbone features of the
CIFAR-10 training images (tests/factories.py's CIFAR_DIR). Every backend gets the test batch preprocessed as the
service does (LoadedModel.preprocess, normalize_batch); the int8 ones are calibrated on the same 300 training images
(the export worker's number). Speed is the forward alone on inputs already preprocessed, median of --repeats, with
torch and ONNX Runtime on the usable cores; accuracy delta and top-1 agreement are against fp32 eager over the whole
test batch. A backend that fails here is a failed row with its reason (PT2E lives in torchao since torch 2.10:
`pip install torchao`; FX graph mode is still in torch, deprecated). PT2E eager runs the converted graph's
quantize/dequantize ops around fp32 kernels (a numerics check); only torch.compile turns it into int8 kernels. The
last line names the better int8 path: a row within the export gate (app/ml/export.py: at most 1 accuracy point
lost, at least 99% top-1 agreement) beats one outside it, then the faster at batch 32 wins.

The machine's other load is recorded (load_average_*): torch's OpenMP threads slow down far more than ONNX
Runtime's when another process takes a core, so compare runs made on an idle machine.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.ml.architectures.base import WeightsUnavailable  # noqa: E402
from app.ml.backbones import build_model  # noqa: E402
from app.ml.engine import DeviceSetup, extract_features, train_head_epoch  # noqa: E402
from app.ml.export import MAX_ACCURACY_DROP, MIN_AGREEMENT, OnnxClassifier, export_onnx, quantize_int8  # noqa: E402
from app.ml.predictor import LoadedModel  # noqa: E402
from app.ml.transforms import eval_transform, image_to_tensor, normalize_batch  # noqa: E402
from benchmarks._bench_common import CifarData, load_average, load_cifar  # noqa: E402
from tests.factories import CIFAR_DIR  # noqa: E402

BATCH = 32


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Config:
    """One run; 0 for an image count means all of them."""

    arch: str = "efficientnet_lite0"
    image_size: int = 224
    weights: str = "imagenet"
    train_images: int = 0
    test_images: int = 0
    calibration_images: int = 300  # worker/exporter.py CALIBRATION_IMAGES
    epochs: int = 30
    learning_rate: float = 3e-3
    bench_images: int = 128  # per batch-32 timing run
    batch1_images: int = 32  # per batch-1 timing run
    repeats: int = 3
    threads: int = 0  # 0: the usable cores
    compile: bool = True
    seed: int = 0


class Skipped(Exception):
    """A backend this run does not measure; the message says why."""


@dataclass
class Backend:
    """A way to run the model: inputs prepared once from preprocessed channels-last batches, then forward."""

    forward: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any] = lambda x: x
    file: Path | None = None
    file_kind: str | None = None
    setup_seconds: float = 0.0


# --- the model and its inputs ------------------------------------------------------------------------------


def as_uint8(images: np.ndarray, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """N×H×W×3 uint8 arrays as the N×3×S×S uint8 batch the service's eval transform makes."""
    return torch.stack([image_to_tensor(Image.fromarray(a), transform) for a in images])


def service_inputs(loaded: LoadedModel, images: np.ndarray) -> torch.Tensor:
    """Images as the service hands them to a model: LoadedModel.preprocess, normalize_batch, channels-last."""
    batch = torch.stack([loaded.preprocess(Image.fromarray(a)) for a in images])
    x = normalize_batch(batch, loaded.preprocessing.mean, loaded.preprocessing.std)
    return x.contiguous(memory_format=torch.channels_last)


def fine_tune(cfg: Config, data: CifarData) -> tuple[LoadedModel, dict[str, Any]]:
    """A linear probe: the backbone's features of the training images cached once, the head trained on them."""
    torch.manual_seed(cfg.seed)
    info: dict[str, Any] = {"strategy": "linear probe on cached features", "weights": cfg.weights}
    try:
        built = build_model(cfg.arch, len(data.class_names), cfg.weights)
    except WeightsUnavailable as exc:
        built = build_model(cfg.arch, len(data.class_names), "none")
        info.update(weights="none", weights_fallback=str(exc)[:300])
        print(f"no ImageNet weights for {cfg.arch} offline: random backbone ({str(exc)[:120]})", flush=True)
    t0 = time.perf_counter()
    n = cfg.train_images or len(data.train_labels)
    images, labels = data.train_images[:n], torch.from_numpy(data.train_labels[:n]).long()
    prep = built.preprocessing
    transform = eval_transform(cfg.image_size, prep.interpolation)
    loader = ((as_uint8(images[i : i + 64], transform), labels[i : i + 64]) for i in range(0, n, 64))
    model = built.model.to(memory_format=torch.channels_last)
    features, targets = extract_features(model, built.head, loader, DeviceSetup(torch.device("cpu")), prep)
    info["feature_seconds"] = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(built.head.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    stats = None
    for _ in range(cfg.epochs):
        stats = train_head_epoch(built.head, features, targets, optimizer, None, nn.CrossEntropyLoss(), 128, generator)
    info.update(
        train_images=n,
        epochs=cfg.epochs,
        train_accuracy=stats.accuracy if stats else None,
        training_seconds=time.perf_counter() - t0,
    )
    meta = {
        "arch": cfg.arch,
        "class_names": data.class_names,
        "image_size": cfg.image_size,
        "preprocessing": prep.as_dict(),
    }
    return LoadedModel(built.model.state_dict(), meta), info


def calibration_batches(loaded: LoadedModel, data: CifarData, cfg: Config) -> list[torch.Tensor]:
    """cfg.calibration_images training images (seeded choice, as the export worker samples), in batches of 32."""
    n = len(data.train_labels)
    idx = np.arange(n)
    if n > cfg.calibration_images:
        idx = np.sort(np.random.default_rng(1).choice(n, size=cfg.calibration_images, replace=False))
    x = service_inputs(loaded, data.train_images[idx])
    return list(x.split(BATCH))


# --- the backends ------------------------------------------------------------------------------------------

LABELS = {
    "torch_fp32": "fp32 PyTorch eager (baseline)",
    "ort_fp32": "ONNX Runtime fp32",
    "ort_int8_qdq": "ONNX Runtime int8 (static QDQ)",
    "torch_x86_pt2e_eager": "PyTorch x86 int8 (PT2E, eager)",
    "torch_x86_pt2e_compiled": "PyTorch x86 int8 (PT2E, torch.compile)",
    "torch_x86_fx": "PyTorch x86 int8 (FX graph mode)",
}
INT8 = {"ort_int8_qdq", "torch_x86_pt2e_eager", "torch_x86_pt2e_compiled", "torch_x86_fx"}


@dataclass
class Context:
    """What every backend is made from, and what two of them share (the ONNX file, the converted PT2E graph)."""

    loaded: LoadedModel
    calibration: list[torch.Tensor]  # preprocessed channels-last batches of 32
    tmp: Path
    cfg: Config
    shared: dict[str, Any] = field(default_factory=dict)


Build = Callable[[Context], Backend]


def torch_fp32(ctx: Context) -> Backend:
    """The service's TorchPredictor model as it is: channels-last, eval, under inference_mode."""
    from safetensors.torch import save_file

    model = ctx.loaded.model
    path = ctx.tmp / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return Backend(forward, file=path, file_kind="safetensors")


def _onnx_fp32(ctx: Context) -> Path:
    if "onnx" not in ctx.shared:
        ctx.shared["onnx"] = ctx.tmp / "model.onnx"
        export_onnx(copy.deepcopy(ctx.loaded.model), ctx.loaded.image_size, ctx.shared["onnx"])
    return ctx.shared["onnx"]


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """The contiguous NCHW float32 array ONNX Runtime takes."""
    return np.ascontiguousarray(x.contiguous().numpy())


def ort_fp32(ctx: Context) -> Backend:
    """The service's ONNX export (export_onnx) in its OnnxClassifier session."""
    t0 = time.perf_counter()
    path = _onnx_fp32(ctx)
    session = OnnxClassifier(path, threads=ctx.cfg.threads)
    return Backend(session.logits, _as_numpy, path, "onnx", time.perf_counter() - t0)


def ort_int8(ctx: Context) -> Backend:
    """The service's int8 export: quantize_int8 (static QDQ, per-channel weights) on the calibration batches."""
    t0 = time.perf_counter()
    path = ctx.tmp / "model.int8.onnx"
    quantize_int8(_onnx_fp32(ctx), path, (_as_numpy(b) for b in ctx.calibration))
    session = OnnxClassifier(path, threads=ctx.cfg.threads)
    return Backend(session.logits, _as_numpy, path, "onnx", time.perf_counter() - t0)


def _pt2e_quantized(ctx: Context) -> tuple[nn.Module, float]:
    """The fp32 model exported (dynamic batch), prepared with X86InductorQuantizer, calibrated and converted; made
    once per run (both PT2E rows use it), with the seconds that took."""
    if "pt2e" in ctx.shared:
        return ctx.shared["pt2e"]
    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"PT2E is not in torch {torch.__version__} (torch.ao.quantization.quantize_pt2e moved to torchao) and "
            f"torchao is not importable ({exc}): pip install torchao"
        ) from exc
    t0 = time.perf_counter()
    model = copy.deepcopy(ctx.loaded.model).eval()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    # strict: the default (non-strict) export records no source_fn_stack, so X86InductorQuantizer groups nodes by
    # module name, and a module called twice (ResNet's block ReLU) fails: "Input partition has more than one output".
    exported = torch.export.export(model, (ctx.calibration[0],), dynamic_shapes=dynamic, strict=True).module()
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in ctx.calibration:
            prepared(batch)
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    ctx.shared["pt2e"] = converted, time.perf_counter() - t0
    return ctx.shared["pt2e"]


def pt2e_eager(ctx: Context) -> Backend:
    """The converted PT2E graph run as it is: quantize/dequantize nodes around fp32 kernels."""
    model, seconds = _pt2e_quantized(ctx)

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return Backend(forward, setup_seconds=seconds)


def pt2e_compiled(ctx: Context) -> Backend:
    """The converted PT2E graph through torch.compile (Inductor, freezing on), the deployment the flow is made for."""
    if not ctx.cfg.compile:
        raise Skipped("not measured in this run (--no-compile)")
    model, seconds = _pt2e_quantized(ctx)
    t0 = time.perf_counter()
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # folds the int8 weights so Inductor lowers to oneDNN int8 conv/linear
    compiled = torch.compile(model, dynamic=False)

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return compiled(x)

    forward(ctx.calibration[0])  # compiled now for both batch sizes, so the timings are of compiled code
    forward(ctx.calibration[0][:1])
    return Backend(forward, setup_seconds=seconds + time.perf_counter() - t0)


def plain_norm_act(model: nn.Module) -> nn.Module:
    """timm's BatchNormAct2d (batch norm and activation in one module) as BatchNorm2d + activation modules, so FX
    folds each batch norm into its convolution as the ONNX export and PT2E do (traced through whole, it would stay a
    separate op after the int8 convolution)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) is not nn.BatchNorm2d and hasattr(child, "act"):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict(), strict=False)
            parts = [bn, getattr(child, "drop", nn.Identity()), child.act]
            setattr(model, name, nn.Sequential(*(p for p in parts if not isinstance(p, nn.Identity))).eval())
        else:
            plain_norm_act(child)
    return model


def fx_x86(ctx: Context) -> Backend:
    """FX graph mode: prepare_fx / convert_fx with the x86 qconfig mapping, real int8 kernels in eager mode."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    t0 = time.perf_counter()
    torch.backends.quantized.engine = "x86"
    model = plain_norm_act(copy.deepcopy(ctx.loaded.model).eval())
    example = (ctx.calibration[0],)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=example)
    with torch.no_grad():
        for batch in ctx.calibration:
            prepared(batch)
    converted = convert_fx(prepared).eval()
    path = ctx.tmp / "model.fx.pt"
    torch.save(converted.state_dict(), path)

    @torch.inference_mode()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return converted(x)

    kind = "state dict (torch.save)"
    return Backend(forward, file=path, file_kind=kind, setup_seconds=time.perf_counter() - t0)


BACKENDS: dict[str, Build] = {
    "torch_fp32": torch_fp32,
    "ort_fp32": ort_fp32,
    "ort_int8_qdq": ort_int8,
    "torch_x86_pt2e_eager": pt2e_eager,
    "torch_x86_pt2e_compiled": pt2e_compiled,
    "torch_x86_fx": fx_x86,
}


# --- measuring ---------------------------------------------------------------------------------------------


def _logits(out: Any) -> np.ndarray:
    return out.float().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def predictions(backend: Backend, x: torch.Tensor) -> np.ndarray:
    """Top-1 over x in batches of 32 (the last one padded, so compiled code sees only the shapes it was made for)."""
    out = []
    for batch in x.split(BATCH):
        n = len(batch)
        if n < BATCH:
            pad = batch[:1].expand(BATCH - n, *batch.shape[1:])
            batch = torch.cat([batch, pad]).contiguous(memory_format=torch.channels_last)
        out.append(_logits(backend.forward(backend.prepare(batch)))[:n].argmax(axis=1))
    return np.concatenate(out)


def images_per_second(backend: Backend, batches: list[Any], repeats: int) -> float:
    """Images per second of the forward alone over prepared batches, the median of repeats."""
    backend.forward(batches[0])  # warm-up: allocator, kernel choice
    images = sum(len(b) for b in batches)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            _logits(backend.forward(b))
        runs.append(time.perf_counter() - t0)
    return images / statistics.median(runs)


def measure(key: str, build: Build, ctx: Context, test_x: torch.Tensor, test_y: np.ndarray) -> dict:
    """One row: what it took to make the backend, its speed at batch 32 and 1, its top-1 (or why it failed)."""
    row: dict[str, Any] = {"backend": key, "label": LABELS[key], "int8": key in INT8, "status": "ok", "reason": None}
    stage = "build"
    try:
        backend = build(ctx)
        row["setup_seconds"] = backend.setup_seconds
        if backend.file is not None:
            row.update(file=backend.file.name, file_kind=backend.file_kind, file_bytes=backend.file.stat().st_size)
        stage = "predict the test batch"
        row["predictions"] = predictions(backend, test_x)
        row["accuracy"] = float((row["predictions"] == test_y).mean())
        stage = "time batch 32"
        cfg = ctx.cfg
        n32 = max(BATCH, min(cfg.bench_images, len(test_x)) // BATCH * BATCH)
        batches = [backend.prepare(b) for b in test_x[:n32].split(BATCH)]
        row["batch32_images_per_second"] = images_per_second(backend, batches, cfg.repeats)
        stage = "time batch 1"
        ones = [backend.prepare(test_x[i : i + 1]) for i in range(min(cfg.batch1_images, len(test_x)))]
        row["batch1_images_per_second"] = images_per_second(backend, ones, cfg.repeats)
    except Skipped as exc:
        row.update(status="skipped", reason=str(exc))
    except Exception as exc:  # reported in the row: one backend failing here must not hide the others
        row.update(status="failed", reason=f"{stage}: {exc.__class__.__name__}: {' '.join(str(exc).split())[:400]}")
    return row


def add_ratios(rows: list[dict], test_y: np.ndarray) -> None:
    """Speedups, accuracy delta (points) and top-1 agreement against the fp32 eager row of the same run."""
    base = rows[0]
    reference = base.get("predictions")
    for row in rows:
        preds = row.pop("predictions", None)
        if row["status"] != "ok" or reference is None:
            continue
        row["accuracy_delta_points"] = (row["accuracy"] - base["accuracy"]) * 100
        row["top1_agreement"] = float((preds == reference).mean())
        for b in ("batch32", "batch1"):
            row[f"{b}_speedup"] = row[f"{b}_images_per_second"] / base[f"{b}_images_per_second"]
        row["passes_export_gate"] = (
            row["top1_agreement"] >= MIN_AGREEMENT and -row["accuracy_delta_points"] <= MAX_ACCURACY_DROP * 100
        )


def _describe(r: dict) -> str:
    return (
        f"{r['label']} ({r['batch32_speedup']:.2f}x fp32 eager at batch 32, {r['batch1_speedup']:.2f}x at batch 1, "
        f"{r['accuracy_delta_points']:+.2f} points, {r['top1_agreement']:.1%} agreement)"
    )


def verdict(rows: list[dict]) -> dict[str, Any]:
    """ONNX Runtime QDQ against the best PyTorch x86 row: one that passes the export gate beats one that does not,
    then the faster at batch 32 is better; when neither passes, the one agreeing more with fp32 is, and none wins."""
    gate = f"at most {MAX_ACCURACY_DROP * 100:g} point lost and >= {MIN_AGREEMENT:.0%} top-1 agreement"

    def rank(r: dict) -> tuple[bool, float]:
        passes = bool(r["passes_export_gate"])
        return passes, r["batch32_images_per_second"] if passes else r["top1_agreement"]

    ok = [r for r in rows if r["int8"] and r["status"] == "ok" and "top1_agreement" in r]
    best = [
        max(found, key=rank)
        for found in ([r for r in ok if r["backend"].startswith(p)] for p in ("ort_", "torch_x86"))
        if found
    ]
    if not best:
        return {"winner": None, "gate": gate, "line": "no int8 path could be measured here"}
    win, *rest = sorted(best, key=rank, reverse=True)
    out: dict[str, Any] = {"winner": win["backend"] if win["passes_export_gate"] else None, "gate": gate}
    if not rest:
        passes = "within the gate" if win["passes_export_gate"] else f"outside the gate ({gate})"
        out["line"] = f"only one int8 family ran: {_describe(win)}, {passes}"
        return out
    lose = rest[0]
    by32 = win["batch32_images_per_second"] / lose["batch32_images_per_second"]
    by1 = win["batch1_images_per_second"] / lose["batch1_images_per_second"]
    points = win["accuracy_delta_points"] - lose["accuracy_delta_points"]
    out.update(
        better=win["backend"],
        runner_up=lose["backend"],
        batch32_ratio=by32,
        batch1_ratio=by1,
        accuracy_points_vs_runner_up=points,
    )
    versus = f"{by32:.2f}x the images/s of {lose['label']} at batch 32 ({by1:.2f}x at batch 1), {points:+.2f} points"
    if lose["passes_export_gate"]:
        out["line"] = f"better int8 path here: {_describe(win)}: {versus}"
    elif win["passes_export_gate"]:
        out["line"] = f"better int8 path here: {_describe(win)}: {versus}; that one fails the gate ({gate})"
    else:
        out["line"] = (
            f"no int8 path passes the export gate ({gate}); the better here is {_describe(win)}: {versus} "
            f"({lose['top1_agreement']:.1%} agreement)"
        )
    return out


def run_benchmark(cfg: Config, data: CifarData, only: list[str] | None = None) -> dict[str, Any]:
    """Fine-tune, then measure every backend (or those in only; fp32 eager always) on the test batch."""
    cfg.threads = cfg.threads or usable_cores()
    torch.set_num_threads(cfg.threads)
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "environment": {
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "torchao": _version("torchao"),
            "usable_cores": usable_cores(),
            "load_average_start": load_average(),
        },
    }
    loaded, result["model"] = fine_tune(cfg, data)
    n_test = cfg.test_images or len(data.test_labels)
    test_y = data.test_labels[:n_test]
    test_x = service_inputs(loaded, data.test_images[:n_test])
    calib = calibration_batches(loaded, data, cfg)
    result["model"].update(test_images=n_test, calibration_images=sum(len(b) for b in calib))
    print(f"fine-tuned {cfg.arch} at {cfg.image_size} px in {result['model']['training_seconds']:.1f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(loaded, calib, Path(tmp), cfg)
        for key, build in BACKENDS.items():
            if only and key != "torch_fp32" and key not in only:
                continue
            t0 = time.perf_counter()
            rows.append(measure(key, build, ctx, test_x, test_y))
            print(f"  {LABELS[key]:40} {rows[-1]['status']:8} {time.perf_counter() - t0:6.1f} s", flush=True)
    add_ratios(rows, test_y)
    result["model"]["fp32_test_accuracy"] = rows[0].get("accuracy")
    result["rows"] = rows
    result["verdict"] = verdict(rows)
    result["environment"]["load_average_end"] = load_average()
    return result


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- output ------------------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    cfg, model = result["config"], result["model"]
    print(
        f"\n{cfg['arch']} at {cfg['image_size']} px, {model['strategy']} ({model['weights']} backbone, "
        f"{model['train_images']} training images), {model['test_images']} test images, "
        f"{model['calibration_images']} calibration images, {cfg['threads']} threads, median of {cfg['repeats']}"
    )
    head = f"{'backend':40} {'b32 img/s':>9} {'vs fp32':>7} {'b1 img/s':>8} {'vs fp32':>7} {'top-1':>6} "
    print(head + f"{'Δ pts':>6} {'agree':>6} {'file MB':>7}  status")
    for r in result["rows"]:
        if r["status"] != "ok":
            print(f"{r['label']:40} {'-':>9} {'':7} {'-':>8} {'':7} {'':6} {'':6} {'':6} {'':7}  {r['status']}")
            continue
        size = f"{r['file_bytes'] / 1e6:7.1f}" if r.get("file_bytes") else f"{'-':>7}"
        print(
            f"{r['label']:40} {r['batch32_images_per_second']:9.1f} {r['batch32_speedup']:6.2f}x "
            f"{r['batch1_images_per_second']:8.1f} {r['batch1_speedup']:6.2f}x {r['accuracy']:6.1%} "
            f"{r['accuracy_delta_points']:+6.2f} {r['top1_agreement']:6.1%} {size}  "
            + ("ok" if not r["int8"] else "passes gate" if r["passes_export_gate"] else "fails gate")
        )
    for r in result["rows"]:
        if r["status"] != "ok":
            print(f"  {r['label']}: {r['status']}: {r['reason']}")
    env = result["environment"]
    # The end figure counts this run's own threads too.
    others = max(env["load_average_start"], env["load_average_end"] - result["config"]["threads"])
    if others > 0.5:
        print(
            f"note: other processes kept about {others:.1f} cores busy (load average {env['load_average_start']:.1f} "
            f"at the start, {env['load_average_end']:.1f} at the end, on {env['usable_cores']} cores): that slows "
            "torch's OpenMP threads far more than ONNX Runtime's"
        )
    print(result["verdict"]["line"])


def write(out: Path, result: dict[str, Any]) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


def main() -> int:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=d.arch)
    parser.add_argument("--image-size", type=int, default=d.image_size)
    parser.add_argument("--weights", default=d.weights, help="'imagenet', 'none' or a weights file")
    parser.add_argument("--train-images", type=int, default=d.train_images, help="for the head (0: all 4,068)")
    parser.add_argument("--test-images", type=int, default=d.test_images, help="for top-1 (0: all 1,017)")
    parser.add_argument("--calibration-images", type=int, default=d.calibration_images)
    parser.add_argument("--epochs", type=int, default=d.epochs, help="of the head on cached features")
    parser.add_argument("--bench-images", type=int, default=d.bench_images, help="per batch-32 timing run")
    parser.add_argument("--batch1-images", type=int, default=d.batch1_images, help="per batch-1 timing run")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timing runs; the median is reported")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch and ONNX Runtime (0: usable cores)")
    parser.add_argument("--no-compile", action="store_true", help="skip PT2E through torch.compile (minutes)")
    parser.add_argument("--only", default="", help="comma-separated backends besides fp32: " + ",".join(BACKENDS))
    parser.add_argument("--cifar-dir", type=Path, default=CIFAR_DIR)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quantization.json")
    args = parser.parse_args()
    # torch.ao's FX flow and quantized tensors announce their deprecation at every call: once is in the docstring.
    warnings.filterwarnings("ignore", message=r"(?s).*(torch\.ao\.quantization|quantized tensor creation)")
    cfg = Config(
        arch=args.arch,
        image_size=args.image_size,
        weights=args.weights,
        train_images=args.train_images,
        test_images=args.test_images,
        calibration_images=args.calibration_images,
        epochs=args.epochs,
        bench_images=args.bench_images,
        batch1_images=args.batch1_images,
        repeats=args.repeats,
        threads=args.threads,
        compile=not args.no_compile,
    )
    only = [k for k in args.only.split(",") if k]
    unknown = [k for k in only if k not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}; known: {', '.join(BACKENDS)}")
    result = run_benchmark(cfg, load_cifar(args.cifar_dir), only)
    print_table(result)
    return write(args.out, result)


if __name__ == "__main__":
    sys.exit(main())
