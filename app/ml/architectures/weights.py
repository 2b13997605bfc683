"""Weights files loaded into a built model: by matching names, or by position for files with foreign key names.
The old head is always skipped, so the fresh one keeps its initialisation."""

from __future__ import annotations

from pathlib import Path

import torch

from app.ml.architectures.base import ArchitectureError, BuiltModel


def load_weights_file(built: BuiltModel, path: Path) -> None:
    """Load a state dict from a .safetensors/.pt/.pth file; the old head is skipped by shape."""
    if not path.is_file():
        raise ArchitectureError(f"weights file {str(path)!r} does not exist on the server")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only: a weights file from a user must never run code when loaded.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ArchitectureError(f"{path.name} does not hold a state dict")
    own = built.model.state_dict()
    if set(state) & set(own):
        load_matching(built, state)
    else:
        load_state_in_order(built, state)


def load_matching(built: BuiltModel, state: dict[str, torch.Tensor]) -> None:
    """Tensors by name; every tensor of the model outside the head must be in the file with its shape."""
    own = built.model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = {f"{n}" for n in built.head_param_names}
    missing = [k for k in own if k not in usable and k not in head and not k.endswith("num_batches_tracked")]
    if missing:
        raise ArchitectureError(
            f"weights file does not fit the architecture: {len(missing)} tensors missing, e.g. {missing[:3]}"
        )
    built.model.load_state_dict(usable, strict=False)


def load_state_in_order(built: BuiltModel, state: dict[str, torch.Tensor]) -> None:
    """Map a state dict with foreign key names onto the model by position (same tensor order)."""
    own = built.model.state_dict()
    if len(state) != len(own):
        raise ArchitectureError(f"weights file has {len(state)} tensors, the architecture {len(own)}")
    head = built.head_param_names
    mapped: dict[str, torch.Tensor] = {}
    for (name, target), tensor in zip(own.items(), state.values(), strict=True):
        if name in head:
            continue  # the new head keeps its fresh initialisation
        if target.shape != tensor.shape:
            raise ArchitectureError(f"weights tensor for {name} has shape {tuple(tensor.shape)}")
        mapped[name] = tensor
    built.model.load_state_dict(mapped, strict=False)
