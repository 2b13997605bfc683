"""The launcher pins one worker process per GPU and never initialises CUDA itself."""

from __future__ import annotations

import subprocess
import sys

from launcher.workers import visible_gpus, worker_commands


def test_one_worker_per_gpu_pinned(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    gpus = visible_gpus()
    assert gpus == ["0", "1", "3"]
    commands = worker_commands(gpus)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["0", "1", "3"]
    assert all(argv[-2:] == ["--name", f"gpu{g}"] for (argv, _), g in zip(commands, gpus, strict=True))


def test_worker_gpus_can_leave_serving_its_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("VISIONTUNE_WORKER_GPUS", "1, 2,3")
    assert visible_gpus() == ["1", "2", "3"]
    monkeypatch.setenv("VISIONTUNE_WORKER_GPUS", "")
    assert visible_gpus() == ["0", "1", "2", "3"]


def test_one_cpu_worker_without_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    [(argv, env)] = worker_commands([])
    assert env == {"CUDA_VISIBLE_DEVICES": ""} and argv[-1] == "cpu"


def test_the_launcher_does_not_import_torch_and_nothing_initialises_cuda_at_import():
    code = (
        "import sys, launcher.cli, launcher.embedded, launcher.workers, worker.launch, worker.tasks, worker.reaper; "
        "print('torch' in sys.modules); "
        "import app.main, worker.runner, torch; print(torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
