"""The model host: /predict's forward in a child process, with the same answers as in-process, recovered when the
child is killed (idle or mid-batch), refusing a tampered checkpoint, and freeing what the API stops serving."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from app.errors import ServiceUnavailable
from app.ml.backbones import build_model
from app.ml.checkpoint import CheckpointError, save_checkpoint
from app.ml.predictor import LoadedModel, ModelCache
from app.serving.host import HostDied, HostedPredictor, ModelHost, ModelSpec, load_local
from app.serving.predictor import TorchPredictor

TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    built = build_model("resnet18", 3, "none")
    meta = {
        "arch": "resnet18",
        "class_names": ["cat", "dog", "owl"],
        "image_size": 32,
        "preprocessing": built.preprocessing.as_dict(),
    }
    path = tmp_path_factory.mktemp("host") / "ck.safetensors"
    sha, _ = save_checkpoint(path, built.model.state_dict(), meta)
    return path, sha


@pytest.fixture
def host():
    h = ModelHost(threads=1)
    yield h
    h.close()


def spec(path, sha, key="k") -> ModelSpec:
    return ModelSpec(key=key, backend="torch", path=str(path), sha256=sha, device="cpu")


def batch(n: int, side: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)


def wait_dead(host: ModelHost) -> None:
    for _ in range(400):
        if not host.alive:
            return
        time.sleep(0.05)
    raise AssertionError("the killed child is still running")


def test_answers_equal_in_process_from_another_process(host, checkpoint):
    path, sha = checkpoint
    hosted = host.load(spec(path, sha))
    assert isinstance(hosted, HostedPredictor)
    assert hosted.class_names == ["cat", "dog", "owl"] and hosted.image_size == 32 and hosted.backend == "torch"
    assert host.pid is not None and host.pid != os.getpid()
    local = TorchPredictor(LoadedModel.from_file(path, sha))
    for n in (1, 5, 17):
        x = batch(n)
        assert torch.allclose(hosted.predict_batch(x), local.predict_batch(x), atol=TOL)


def test_a_killed_child_is_replaced_and_reloads_what_it_served(host, checkpoint):
    path, sha = checkpoint
    hosted = host.load(spec(path, sha))
    x = batch(4)
    before = hosted.predict_batch(x)
    first = host.pid
    os.kill(first, signal.SIGKILL)
    wait_dead(host)
    after = hosted.predict_batch(x)  # a new child, the model loaded again from its file
    assert host.pid not in (None, first) and host.restarts == 1
    assert torch.allclose(before, after, atol=TOL)


def killed_under(host: ModelHost, hosted: HostedPredictor, x: torch.Tensor, kills: int) -> BaseException | torch.Tensor:
    """What predicting x answers while its child (and then each replacement, up to `kills` children) is killed
    as soon as it is working on it."""
    outcome: list[BaseException | torch.Tensor] = []

    def run() -> None:
        try:
            outcome.append(hosted.predict_batch(x))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=run)
    t.start()
    for _ in range(kills):
        time.sleep(0.2)
        while not host.alive and t.is_alive():  # the replacement starting
            time.sleep(0.05)
        if t.is_alive():
            time.sleep(0.3 if host.restarts else 0.0)  # the replacement loading, then predicting
            os.kill(host.pid, signal.SIGKILL)
    t.join(120)
    assert len(outcome) == 1
    return outcome[0]


def test_a_batch_in_flight_when_the_child_dies_is_answered_by_its_replacement(host, checkpoint):
    path, sha = checkpoint
    hosted = host.load(spec(path, sha))
    x = batch(48, side=256)  # long enough to be killed under
    expected = TorchPredictor(LoadedModel.from_file(path, sha)).predict_batch(x)
    answer = killed_under(host, hosted, x, kills=1)
    assert isinstance(answer, torch.Tensor) and torch.allclose(answer, expected, atol=TOL)
    assert host.restarts == 1


def test_a_batch_whose_replacement_dies_too_fails_with_503(host, checkpoint):
    path, sha = checkpoint
    hosted = host.load(spec(path, sha))
    answer = killed_under(host, hosted, batch(48, side=256), kills=2)
    assert isinstance(answer, HostDied) and isinstance(answer, ServiceUnavailable)
    assert hosted.predict_batch(batch(2)).shape == (2, 3)  # and the next request is answered


def test_a_tampered_checkpoint_is_refused_in_the_api_process(host, checkpoint, tmp_path):
    path, sha = checkpoint
    bad = tmp_path / "bad.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        host.load(spec(bad, sha, key="bad"))
    assert host.load(spec(path, sha)).predict_batch(batch(1)).shape == (1, 3)  # the child is still fine


def test_models_evicted_from_the_cache_are_dropped_from_the_child(host, checkpoint):
    path, sha = checkpoint
    cache = ModelCache(capacity=1, on_evict=lambda key, _p: host.drop(key))
    first = cache.get("a", lambda: host.load(spec(path, sha, key="a")))
    cache.get("b", lambda: host.load(spec(path, sha, key="b")))
    with pytest.raises(KeyError):  # dropped: the API holds no spec to reload it from
        first.predict_batch(batch(1))
    assert cache.peek("a") is None and cache.peek("b") is not None


# ---------------------------------------------------------------- the torch backend's precision and compilation


def test_bf16_autocast_stays_close_to_fp32_on_the_cpu(checkpoint):
    path, sha = checkpoint
    loaded = LoadedModel.from_file(path, sha)
    x = batch(8)
    fp32 = TorchPredictor(loaded).predict_batch(x)
    bf16 = TorchPredictor(loaded, precision="bf16")
    assert bf16.precision == "bf16" and TorchPredictor(loaded, precision="auto").precision == "fp32"  # auto on a CPU
    assert (bf16.predict_batch(x) - fp32).abs().max() < 0.05


def test_a_model_that_does_not_compile_is_served_eagerly(checkpoint, monkeypatch):
    path, sha = checkpoint

    def broken(model, **_kwargs):
        def fail(*_a, **_k):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    predictor = load_local(ModelSpec("c", "torch", str(path), sha, "cpu", compile=True))
    x = batch(3)
    expected = TorchPredictor(LoadedModel.from_file(path, sha)).predict_batch(x)
    assert torch.allclose(predictor.predict_batch(x), expected, atol=TOL)


@pytest.mark.gpu
def test_fp16_on_cuda_in_the_host_agrees_with_fp32(host, checkpoint):
    path, sha = checkpoint
    x = batch(32)
    fp32 = TorchPredictor(LoadedModel.from_file(path, sha)).predict_batch(x)
    hosted = host.load(ModelSpec("gpu", "torch", str(path), sha, "cuda", precision="auto"))
    fp16 = hosted.predict_batch(x)
    assert (fp16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.95
    assert (fp16 - fp32).abs().max() < 0.05


@pytest.mark.gpu
def test_torch_compile_on_cuda_matches_eager(checkpoint):
    path, sha = checkpoint
    loaded = LoadedModel.from_file(path, sha, device="cuda")
    x = batch(16)
    eager = TorchPredictor(loaded, precision="fp32").predict_batch(x)
    compiled = load_local(ModelSpec("cc", "torch", str(path), sha, "cuda", precision="fp32", compile=True))
    assert compiled.forward is not compiled.loaded.model  # really compiled, not the fallback
    assert torch.allclose(compiled.predict_batch(x), eager, atol=1e-3)


# ---------------------------------------------------------------- several API processes


def _descendants(pid: int) -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process below pid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child in children.get(parent, []):
            try:
                cmdline = open(f"/proc/{child}/cmdline").read().replace("\0", " ")
            except OSError:
                continue
            out.append((child, parent, cmdline))
            todo.append(child)
    return out


@pytest.mark.e2e
def test_two_api_processes_each_serve_through_their_own_model_host(tmp_path):
    import httpx

    from tests.conftest import REDIS_URL
    from tests.e2e.test_switch import red_png, train_two_versions
    from tests.processes import bearer, free_port, local_api, python, start, stop, wait_http

    local = local_api(tmp_path, f"hosts-{os.getpid()}", REDIS_URL)
    env, settings, key = local.env, local.settings, local.key
    port, log = free_port(), tmp_path / "api.log"
    api = start(python("-m", "launcher.cli", "api", "--port", str(port), "--workers", "2"), env, log)
    base, auth = f"http://127.0.0.1:{port}", bearer(key)
    try:
        wait_http(f"{base}/health", api, log)
        train_two_versions(base, auth, settings, tmp_path, "multi")
        image, answers, hosts = red_png(), [], set()
        deadline = time.monotonic() + 90

        def one() -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=60) as c:  # a new connection each time
                r = c.post("/predict", files={"files": ("r.png", image, "image/png")}, data={"model": "multi"})
                answers.append((r.status_code, r.json().get("version")))

        while time.monotonic() < deadline and (len(hosts) < 2 or len(answers) < 40):
            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            below = _descendants(api.pid)
            workers = {pid for pid, parent, cmd in below if parent == api.pid and "spawn_main" in cmd}
            hosts = {pid for pid, parent, cmd in below if parent in workers and "spawn_main" in cmd}
        assert answers and all(status == 200 for status, _ in answers), answers[:5]
        assert len({version for _, version in answers}) == 1  # both processes serve the same best version
        assert len(workers) == 2 and len(hosts) == 2, below  # one model host under each API process
    finally:
        stop(api)
