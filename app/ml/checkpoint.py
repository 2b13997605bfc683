"""Checkpoints: safetensors weights with the JSON that says how to use them, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

METADATA_KEY = "visiontune"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not match its recorded hash."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write data to path so readers see the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> tuple[str, int]:
    """Write weights + metadata to path; returns (sha256, size in bytes)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    data = save_safetensors_bytes(tensors, metadata={METADATA_KEY: json.dumps(metadata)})
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def load_checkpoint(path: Path, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) from path, refusing a file whose hash differs from sha256."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint {path} does not match its recorded sha256")
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    metadata = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    return load_safetensors_bytes(data), metadata


def save_training_state(path: Path, state: dict[str, Any]) -> tuple[str, int]:
    """Write a resumable training state (tensors, numbers, lists, dicts) atomically; (sha256, size)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


def load_training_state(path: Path, sha256: str) -> dict[str, Any]:
    """The training state at path, refusing a missing file or one whose hash differs from sha256."""
    import io

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"training state {path} cannot be read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"training state {path} does not match its recorded sha256 (corrupted on disk)")
    # weights_only: the file holds plain containers and tensors; nothing in it may run code when loaded.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
