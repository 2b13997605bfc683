"""The Predictor interface every serving backend implements, and the torch backend.

A predictor is split where the batcher needs it split: `preprocess` turns one decoded image into the model's
input tensor (run in the request thread, in parallel with other requests), `predict_batch` runs one forward over
a stacked batch (run by the batcher's inference thread). Other backends (ONNX Runtime, int8) implement the same
four members; the preprocessing always comes from the checkpoint's metadata.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from app.ml.architectures.base import Preprocessing
from app.ml.predictor import LoadedModel
from app.ml.transforms import normalize_batch


@runtime_checkable
class Predictor(Protocol):
    """A served model: its labels, its preprocessing, and a batched forward that returns probabilities."""

    backend: str
    class_names: list[str]
    preprocessing: Preprocessing
    image_size: int

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image as a C×H×W uint8 tensor at the model's input size."""
        ...

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """N×C×H×W uint8 (as `preprocess` makes them) to N×classes float32 probabilities on the CPU."""
        ...


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolved_precision(precision: str, device: str) -> str:
    """auto: fp16 autocast on CUDA (tensor cores; more mantissa than bf16, so closer to fp32), fp32 elsewhere."""
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return precision


class TorchPredictor:
    """The eager torch backend: a LoadedModel in channels-last under inference_mode, optionally under fp16/bf16
    autocast and through torch.compile (compiled on the first forward, which the warm-up makes)."""

    backend = "torch"

    def __init__(self, loaded: LoadedModel, precision: str = "fp32", compile: bool = False) -> None:
        self.loaded = loaded
        self.class_names = loaded.class_names
        self.preprocessing = loaded.preprocessing
        self.image_size = loaded.image_size
        self.precision = resolved_precision(precision, str(loaded.device))
        self.amp_dtype = PRECISIONS[self.precision]
        self.forward = loaded.model
        if compile:
            # dynamic: one graph for every batch size the batcher makes, not one compilation per size
            self.forward = torch.compile(loaded.model, dynamic=True)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.loaded.preprocess(image)

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is None and self.forward is self.loaded.model:
            return self.loaded.probabilities(batch)
        device = self.loaded.device
        p = self.preprocessing
        x = normalize_batch(batch.to(device, non_blocking=True), p.mean, p.std)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            logits = self.forward(x)
        return torch.softmax(logits.float(), dim=1).cpu()


def top_labels(probs: torch.Tensor, class_names: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """For each row of probabilities, the top_k (label, probability) pairs, most likely first."""
    k = min(top_k, len(class_names))
    values, indices = probs.topk(k, dim=1)
    return [
        [(class_names[i], v) for v, i in zip(row_v, row_i, strict=True)]
        for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
