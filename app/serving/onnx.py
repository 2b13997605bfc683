"""The ONNX Runtime backends (fp32 `onnx`, int8 `int8`): a verified export of a version, with the same
preprocessing as the torch backend (read from the export's metadata, which copies the checkpoint's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.ml.architectures.base import Preprocessing
from app.ml.checkpoint import CheckpointError, file_sha256
from app.ml.export import OnnxClassifier
from app.ml.transforms import eval_transform, image_to_tensor, normalize_batch

# Export format -> the backend name /predict reports.
BACKEND_OF_FORMAT = {"onnx": "onnx", "onnx-int8": "int8"}


class OnnxPredictor:
    """An export served by ONNX Runtime (CPU, or its CUDA provider when present)."""

    def __init__(
        self, path: Path, meta: dict[str, Any], backend: str, sha256: str | None, threads: int | None, device: str
    ) -> None:
        if sha256 is not None and file_sha256(path) != sha256:
            raise CheckpointError(f"export {path.name} does not match its recorded sha256")
        self.backend = backend
        self.class_names: list[str] = list(meta["class_names"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.image_size = int(meta["image_size"])
        self.transform = eval_transform(self.image_size, self.preprocessing.interpolation)
        self.classifier = OnnxClassifier(path, threads=threads, device=device)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(image, self.transform)

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        x = normalize_batch(batch, self.preprocessing.mean, self.preprocessing.std).numpy()
        return torch.softmax(torch.from_numpy(self.classifier.logits(x)).float(), dim=1)
