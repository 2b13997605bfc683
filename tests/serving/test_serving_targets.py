"""Switches that drop nothing: a new serving target is loaded and warmed in the background while the previous
one answers; it takes the traffic only once warm; a target that fails to load never takes it."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import torch

from app.ml.predictor import ModelCache
from app.services.prediction import resolve_served
from app.serving.served import ServedVersion
from app.serving.targets import ServingTargets


class Fake:
    backend = "torch"
    class_names = ["a", "b"]
    preprocessing = None
    image_size = 8

    def __init__(self, version: int) -> None:
        self.version = version
        self.warmed = 0

    def preprocess(self, image):  # pragma: no cover - not used here
        raise AssertionError

    def predict_batch(self, batch: torch.Tensor) -> torch.Tensor:
        self.warmed += 1
        return torch.full((len(batch), 2), 0.5)


def served(version: int) -> ServedVersion:
    return ServedVersion("m", version, uuid.uuid4(), "resnet18", f"ckpt-{version}", Path("x"), None)


def wait_for(condition, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_the_previous_target_answers_until_the_new_one_is_warm():
    cache = ModelCache()
    targets = ServingTargets(cache, resolve_served)
    release = threading.Event()
    loads: list[int] = []

    def load(s: ServedVersion) -> Fake:
        loads.append(s.version)
        if s.version == 2:
            release.wait(10)
        return cache.get(s.cache_key, lambda: Fake(s.version))

    v1, v2 = served(1), served(2)
    chosen, predictor = targets.predictor_for(("p", "m"), v1, load)  # first use: loaded at once
    assert chosen.version == 1 and predictor.version == 1
    # Version 2 now resolves: version 1 keeps answering while 2 loads in the background.
    for _ in range(5):
        chosen, predictor = targets.predictor_for(("p", "m"), v2, load)
        assert chosen.version == 1 and predictor.version == 1
    assert loads.count(2) == 1  # one background load, however many requests arrive meanwhile
    release.set()
    wait_for(lambda: cache.peek(v2.cache_key) is not None)
    chosen, predictor = targets.predictor_for(("p", "m"), v2, load)
    assert chosen.version == 2 and predictor.version == 2 and predictor.warmed >= 1  # warmed before traffic
    # Another name is independent; the same version under another backend is another target.
    assert targets.predictor_for(("p", "other"), v1, load)[0].version == 1
    onnx = replace(v2, backend="onnx")
    assert onnx.cache_key != v2.cache_key


def test_a_target_that_cannot_load_never_takes_traffic():
    cache = ModelCache()
    targets = ServingTargets(cache, resolve_served)

    def load(s: ServedVersion) -> Fake:
        if s.version == 2:
            raise RuntimeError("corrupted checkpoint")
        return cache.get(s.cache_key, lambda: Fake(s.version))

    targets.predictor_for(("p", "m"), served(1), load)
    for _ in range(3):
        chosen, _ = targets.predictor_for(("p", "m"), served(2), load)
        assert chosen.version == 1
        time.sleep(0.05)
