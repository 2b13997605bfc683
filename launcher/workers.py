"""What `visiontune worker` starts: one worker process per visible GPU, each pinned with CUDA_VISIBLE_DEVICES,
and a reaper beside them (launcher/supervise.py keeps them running). CUDA is never initialised here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

VISIONTUNE = [sys.executable, "-m", "launcher.cli"]  # the `visiontune` command, run by this interpreter


def visible_gpus() -> list[str]:
    """GPU ids for training: VISIONTUNE_WORKER_GPUS (e.g. "1,2,3", leaving GPU 0 to serving) when set, else
    CUDA_VISIBLE_DEVICES, else nvidia-smi; never initialises CUDA in this process."""
    chosen = os.environ.get("VISIONTUNE_WORKER_GPUS", "").strip()
    if chosen:
        return [g.strip() for g in chosen.split(",") if g.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def worker_commands(gpus: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, extra env) for each worker process: one per GPU, or a single CPU worker."""
    base = [*VISIONTUNE, "worker-process"]
    if not gpus:
        return [(base + ["--name", "cpu"], {"CUDA_VISIBLE_DEVICES": ""})]
    return [(base + ["--name", f"gpu{g}"], {"CUDA_VISIBLE_DEVICES": g}) for g in gpus]


def reaper_command() -> tuple[list[str], dict[str, str]]:
    """The reaper next to the workers: puts back jobs of dead workers, re-sends tasks the broker lost."""
    return [*VISIONTUNE, "reaper"], {"CUDA_VISIBLE_DEVICES": ""}
