"""Exports of a trained classifier for serving: ONNX (fp32) and int8 (ONNX Runtime static QDQ quantization,
calibrated on real images), each verified against the fp32 model before it may be served.

The exported graph takes images already preprocessed (normalized float NCHW, the checkpoint's own mean/std and
size) and returns logits, so every backend shares one preprocessing path. Nothing here imports web or queue code.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT, OUTPUT = "images", "logits"
OPSET = 17
# An export may be served only if, on the verification images, it agrees with the fp32 model's top-1 on at least
# this share and loses at most this many accuracy points.
MIN_AGREEMENT = 0.99
MAX_ACCURACY_DROP = 0.01

Batches = Callable[[], Iterable[np.ndarray]]  # a fresh iterator of preprocessed float32 NCHW batches


def export_onnx(model: nn.Module, image_size: int, path: Path) -> None:
    """Write model (eval mode, CPU, fp32) as ONNX with a dynamic batch axis."""
    model = model.eval().float().cpu()
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed batches."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(onnx_path: Path, out_path: Path, calibration: Iterable[np.ndarray]) -> None:
    """Static int8 QDQ quantization (per-channel weights, int8 activations) calibrated on real images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


class OnnxClassifier:
    """An ONNX Runtime session on CPU (or CUDA when its provider is present), logits for preprocessed batches."""

    def __init__(self, path: Path, threads: int | None = None, device: str = "cpu") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]


@dataclass
class Verification:
    """How an export compares with the fp32 model on labelled images."""

    images: int
    agreement: float  # share of images where both give the same top-1
    accuracy: float
    reference_accuracy: float
    passed: bool
    reason: str
    reference_seconds: float = 0.0  # time the fp32 model and the export took over the same batches
    candidate_seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "speedup": round(self.reference_seconds / self.candidate_seconds, 3) if self.candidate_seconds else None,
            "images": self.images,
            "top1_agreement": round(self.agreement, 6),
            "accuracy": round(self.accuracy, 6),
            "reference_accuracy": round(self.reference_accuracy, 6),
            "accuracy_drop": round(self.reference_accuracy - self.accuracy, 6),
            "passed": self.passed,
            "reason": self.reason,
        }


def verify(
    reference: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
) -> Verification:
    """Top-1 agreement and accuracy of candidate against reference over (images, labels) batches."""
    same = right = right_ref = total = 0
    ref_s = cand_s = 0.0
    for images, labels in batches:
        t0 = time.perf_counter()
        ref = reference(images).argmax(axis=1)
        t1 = time.perf_counter()
        got = candidate(images).argmax(axis=1)
        ref_s, cand_s = ref_s + t1 - t0, cand_s + time.perf_counter() - t1
        same += int((ref == got).sum())
        right += int((got == labels).sum())
        right_ref += int((ref == labels).sum())
        total += len(labels)
    if total == 0:
        return Verification(0, 0.0, 0.0, 0.0, False, "no verification images")
    agreement, accuracy, reference_accuracy = same / total, right / total, right_ref / total
    drop = reference_accuracy - accuracy
    if agreement < MIN_AGREEMENT:
        reason = f"agrees with the fp32 model on {agreement:.1%} of {total} images (needs {MIN_AGREEMENT:.0%})"
        return Verification(total, agreement, accuracy, reference_accuracy, False, reason, ref_s, cand_s)
    if drop > MAX_ACCURACY_DROP:
        reason = f"loses {drop * 100:.2f} accuracy points on {total} images (at most {MAX_ACCURACY_DROP * 100:g})"
        return Verification(total, agreement, accuracy, reference_accuracy, False, reason, ref_s, cand_s)
    reason = f"agrees on {agreement:.2%} of {total} images, accuracy {accuracy:.2%} (fp32 {reference_accuracy:.2%})"
    return Verification(total, agreement, accuracy, reference_accuracy, True, reason, ref_s, cand_s)


def torch_logits(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """The fp32 reference as a function of preprocessed numpy batches."""
    model = model.eval()

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).contiguous(
            memory_format=torch.channels_last
        )
        return model(x).float().numpy()

    return run
