"""What a served version is once its database session is closed, which backend answers for it, and how its
predictor is loaded (in the model host process or in this one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.ml.predictor import ModelCache
from app.models import Export, ExportStatus
from app.serving.host import ModelHost, ModelSpec, load_local
from app.serving.onnx import BACKEND_OF_FORMAT
from app.serving.predictor import Predictor


@dataclass(frozen=True)
class ServedVersion:
    """What /predict needs of the chosen version once its session is closed: plain values, no ORM objects."""

    model_name: str
    version: int
    job_id: uuid.UUID
    arch: str
    checkpoint_id: str
    path: Path
    sha256: str | None
    backend: str = "torch"
    export_path: Path | None = None  # the verified export the backend runs (None for torch)
    export_sha256: str | None = None
    export_meta: dict[str, Any] | None = None

    @property
    def cache_key(self) -> str:
        return f"{self.checkpoint_id}:{self.backend}"


def choose_backend(exports: list[Export], preferred: str, device: str) -> Export | None:
    """The verified export to serve, or None for torch.

    `preferred` (VISIONTUNE_PREDICT_BACKEND): torch, onnx or int8 (torch when that export is not verified), or
    auto: on a CPU, the verified export that ran fastest against fp32 torch in its own verification; torch
    on a GPU, where it runs in fp16/bf16. A rejected or unfinished export is never served.
    """
    verified = {BACKEND_OF_FORMAT[e.format]: e for e in exports if e.status == ExportStatus.verified and e.path}
    if preferred != "auto":
        return verified.get(preferred)
    if device.startswith("cuda"):
        return None
    best, best_speedup = None, 1.0
    for export in verified.values():
        speedup = min((r.get("speedup") or 0.0) for r in (export.report or {}).values()) if export.report else 0.0
        if speedup > best_speedup:
            best, best_speedup = export, speedup
    return best


def model_spec(
    served: ServedVersion, device: str, threads: int | None = None, precision: str = "auto", compile: bool = False
) -> ModelSpec:
    """What to load for the served version's backend: its checkpoint (torch, with its precision and whether it
    is compiled) or its verified export."""
    if served.export_path is None or served.export_meta is None:
        return ModelSpec(
            served.cache_key, "torch", str(served.path), served.sha256, device, threads, None, precision, compile
        )
    return ModelSpec(
        served.cache_key,
        served.backend,
        str(served.export_path),
        served.export_sha256,
        device,
        threads,
        served.export_meta,
    )


def load_predictor(
    cache: ModelCache,
    served: ServedVersion,
    device: str,
    threads: int | None = None,
    host: ModelHost | None = None,
    precision: str = "auto",
    compile: bool = False,
) -> Predictor:
    """The predictor of the served version's backend, loaded once (files checked by sha256), then reused: in the
    model host process when one is given, else in this process."""
    spec = model_spec(served, device, threads, precision, compile)
    return cache.get(served.cache_key, lambda: host.load(spec) if host is not None else load_local(spec))
