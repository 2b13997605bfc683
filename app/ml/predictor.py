"""A checkpoint loaded for inference: preprocessing from its metadata, top-k labels with probabilities."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image

from app.ml.architectures.base import Preprocessing
from app.ml.backbones import build_model
from app.ml.checkpoint import load_checkpoint
from app.ml.transforms import eval_transform, image_to_tensor, normalize_batch


class LoadedModel:
    """A classifier ready to answer: weights, class names and the preprocessing it was trained with."""

    def __init__(self, state: dict[str, torch.Tensor], metadata: dict[str, Any], device: str = "cpu") -> None:
        self.metadata = metadata
        self.class_names: list[str] = metadata["class_names"]
        self.arch: str = metadata["arch"]
        self.image_size: int = int(metadata["image_size"])
        self.preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
        self.device = torch.device(device)
        built = build_model(self.arch, len(self.class_names), "none")
        built.model.load_state_dict(state)
        # torch's stubs lack Module.to(device, memory_format=...), which torch supports
        self.model = built.model.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        self.transform = eval_transform(self.image_size, self.preprocessing.interpolation)

    @classmethod
    def from_file(cls, path: Path, sha256: str | None = None, device: str = "cpu") -> LoadedModel:
        state, metadata = load_checkpoint(path, sha256)
        return cls(state, metadata, device)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image as the C×H×W uint8 tensor the model takes: shorter side to image_size, centre square."""
        return image_to_tensor(image, self.transform)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """N×C×H×W uint8 (from preprocess) to N×classes float32 probabilities on the CPU."""
        x = normalize_batch(batch.to(self.device), self.preprocessing.mean, self.preprocessing.std)
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.softmax(self.model(x).float(), dim=1).cpu()

    def predict(self, images: list[Image.Image], top_k: int = 5) -> list[list[tuple[str, float]]]:
        """For each image, the top_k (label, probability) pairs, most likely first."""
        probs = self.probabilities(torch.stack([self.preprocess(img) for img in images]))
        k = min(top_k, len(self.class_names))
        values, indices = probs.topk(k, dim=1)
        return [
            [(self.class_names[int(i)], float(v)) for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values, indices, strict=True)
        ]


T = TypeVar("T")


class ModelCache:
    """Loaded models (or predictors) by key, least recently used evicted; loads happen once under concurrency."""

    def __init__(self, capacity: int = 4, on_evict: Callable[[str, Any], None] | None = None) -> None:
        self.capacity = capacity
        self.on_evict = on_evict
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def peek(self, key: str) -> Any:
        """The loaded entry for key, or None (never loads)."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            return None

    def get(self, key: str, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = load()
            evicted = []
            with self._lock:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self.capacity:
                    evicted.append(self._models.popitem(last=False))
                self._loading.pop(key, None)
            if self.on_evict is not None:
                for old_key, old in evicted:
                    self.on_evict(old_key, old)
            return model

    def __len__(self) -> int:
        return len(self._models)
