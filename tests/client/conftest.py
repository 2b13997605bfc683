"""One real embedded server (`visiontune run`: SQLite, its own Redis, a worker, the API) shared by the client
tests, and the CLI run as a subprocess against it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.auth import new_key
from tests.factories import color_pixels
from tests.processes import REPO, embedded_server

COLORS = {"red": 0, "green": 1, "blue": 2}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The cheapest job that learns these colours: a ResNet-18 (random weights) as a frozen feature extractor at 32 px
# (features computed once), its head trained for a few epochs.
CHEAP_JOB = {
    "arch": "resnet18",
    "weights": "none",
    "strategy": "linear",
    "image_size": 32,
    "batch_size": 8,
    "learning_rate": 0.01,
    "val_fraction": 0.25,
    "num_workers": 0,
    "baseline": False,
}

# A weights file the server accepts (it exists under VISIONTUNE_WEIGHTS_ROOT; the key is an admin's) but the worker
# cannot load: a job naming it fails at once, every time (not a transient error, so it is not retried).
BROKEN_WEIGHTS = "broken.safetensors"


@dataclass
class Server:
    url: str
    key: str
    log: Path


def color_folder(root: Path, per_class: int = 8, size: int = 16) -> Path:
    """An ImageFolder of PNGs: one folder per colour, each image that colour plus noise."""
    rng = np.random.default_rng(0)
    for name, channel in COLORS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(color_pixels(rng, channel, size)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    key = new_key()
    (tmp / "weights").mkdir()
    (tmp / "weights" / BROKEN_WEIGHTS).write_bytes(b"not a safetensors file")
    env = {
        "VISIONTUNE_ADMIN_KEY": key,
        "VISIONTUNE_WEIGHTS_ROOT": str(tmp / "weights"),
        "VISIONTUNE_RATE_LIMIT_WRITE": "100000/minute",
        "VISIONTUNE_RATE_LIMIT_PREDICT": "100000/minute",
    }
    with embedded_server(tmp, env) as url:
        yield Server(url, key, tmp / "run.log")


@pytest.fixture(scope="package")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return color_folder(tmp_path_factory.mktemp("data") / "colors")


@contextmanager
def fake_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in for the API on a real socket: handler answers each request (one thread per connection); yields
    its URL and shuts it down afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def cli_env(config_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTUNE_")}
    return {**env, "VISIONTUNE_CONFIG_DIR": str(config_dir), "PYTHONUNBUFFERED": "1", **extra}


def run_cli(config_dir: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """`visiontune ARGS` as a user runs it (python -m launcher.cli), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=REPO,
        env=cli_env(config_dir, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    return ANSI.sub("", text)
