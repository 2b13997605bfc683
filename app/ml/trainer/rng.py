"""Every random stream training draws from, captured with a checkpoint and put back on resume, so that a resumed
run draws the same numbers as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream training draws from: torch (CPU, CUDA), numpy, python, and the job's generators."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple), "legacy=True (the default) gives the MT19937 state as a tuple"
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back what capture_rng() took, so a resumed run draws the same numbers as an uninterrupted one."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for key, g in generators.items():
        if key in state["generators"]:
            g.set_state(state["generators"][key])
