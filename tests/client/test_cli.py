"""The `visiontune` client commands as a user runs them, against a real server: login, upload, submit --follow
(progress and exit codes), events, predict, models; --json parsed; errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.client.conftest import BROKEN_WEIGHTS, CHEAP_JOB, REPO, Server, cli_env, plain, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cfg(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config directory logged in to the server."""
    directory = tmp_path_factory.mktemp("config")
    done = run_cli(directory, "login", "--url", server.url, "--key", server.key, "--json")
    assert done.returncode == 0, done.stderr
    return directory


def job_flags(dataset_id: str, model_name: str, epochs: int) -> list[str]:
    flags = ["--dataset", dataset_id, "--model-name", model_name, "--epochs", str(epochs)]
    for field in ("arch", "weights", "strategy", "image_size", "batch_size", "learning_rate"):
        flags += [f"--{field.replace('_', '-')}", str(CHEAP_JOB[field])]
    for field in ("val_fraction", "num_workers", "baseline"):
        flags += ["--set", f"{field}={json.dumps(CHEAP_JOB[field])}"]
    return flags


def test_login_checks_the_key_and_keeps_it_private_then_logout(server: Server, tmp_path: Path) -> None:
    refused = run_cli(tmp_path, "login", "--url", server.url, "--key", "vt_" + "x" * 43)
    assert refused.returncode == 1
    assert "refused the key" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "login.json").exists()

    done = run_cli(tmp_path, "login", "--url", server.url + "/", "--key", server.key, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["url"] == server.url
    saved = tmp_path / "login.json"
    assert Path(answer["config"]) == saved
    assert saved.stat().st_mode & 0o777 == 0o600
    assert json.loads(saved.read_text()) == {"url": server.url, "key": server.key}
    assert server.key not in done.stdout  # never echoed

    # The key is asked for, hidden, when not given on the command line.
    prompted = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "login", "--url", server.url],
        input=server.key + "\n",
        cwd=REPO,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert prompted.returncode == 0, prompted.stderr
    assert server.key not in prompted.stdout

    assert run_cli(tmp_path, "logout").returncode == 0
    assert not saved.exists()
    # Logged out (and no VISIONTUNE_KEY): the server says 401, shown as its message.
    anonymous = run_cli(tmp_path, "datasets", "list", VISIONTUNE_URL=server.url)
    assert anonymous.returncode == 1
    assert "401" in anonymous.stderr and "Traceback" not in anonymous.stderr


def test_upload_submit_follow_events_predict_and_models(server: Server, images: Path, cfg: Path) -> None:
    up = run_cli(cfg, "datasets", "upload", str(images), "--name", "colors", "--json")
    assert up.returncode == 0, up.stderr
    dataset = json.loads(up.stdout)
    assert dataset["class_names"] == ["blue", "green", "red"] and dataset["num_images"] == 24
    listed = json.loads(run_cli(cfg, "datasets", "list", "--json").stdout)
    assert dataset["id"] in [d["id"] for d in listed["items"]]

    # On a terminal (TTY_COMPATIBLE makes rich draw as on one): progress bars with the epoch, step, loss and ETA.
    follow = run_cli(
        cfg, "jobs", "submit", *job_flags(dataset["id"], "colors", 3), "--follow", TTY_COMPATIBLE="1", COLUMNS="150"
    )
    out = plain(follow.stdout)
    assert follow.returncode == 0, out + follow.stderr
    assert "\x1b[" in follow.stdout  # drawn as a terminal's progress bars
    assert "status: running (attempt 1)" in out
    assert "epoch 1/3" in out and "loss " in out and "img/s" in out and "ETA" in out
    assert "epoch 1/3 done: train loss" in out and "epoch 3/3 done" in out
    assert "succeeded" in out and "colors version 1" in out
    job_id = out.split("job ", 1)[1].split()[0]

    shown = json.loads(run_cli(cfg, "jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "succeeded" and [e["epoch"] for e in shown["epochs"]] == [1, 2, 3]
    # The job's events as JSON Lines: every one parses; they run from queued to succeeded with progress between.
    events = [json.loads(line) for line in run_cli(cfg, "jobs", "events", job_id, "--json").stdout.splitlines()]
    assert events[0]["data"]["status"] == "queued" and events[-1]["data"]["status"] == "succeeded"
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert progress and {"step", "steps", "loss", "eta_seconds"} <= set(progress[0])
    assert [e["data"]["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]

    red = images / "red" / "00.png"
    predicted = run_cli(
        cfg, "predict", str(red), str(images / "blue" / "01.png"), "--model", "colors", "--top-k", "2", "--json"
    )
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer["model_name"] == "colors" and answer["version"] == 1
    assert [p["filename"] for p in answer["predictions"]] == ["00.png", "01.png"]
    assert all(len(p["top"]) == 2 for p in answer["predictions"])
    assert [p["top"][0]["label"] for p in answer["predictions"]] == ["red", "blue"]
    table = run_cli(cfg, "predict", str(red), "--model", "colors")
    assert table.returncode == 0 and "red" in table.stdout and "colors version 1" in table.stdout

    models = json.loads(run_cli(cfg, "models", "list", "--json").stdout)
    assert [m["name"] for m in models] == ["colors"] and models[0]["serving_version"] == 1
    promoted = json.loads(run_cli(cfg, "models", "promote", "colors", "1", "--json").stdout)
    assert promoted["pinned_version"] == 1
    aliased = json.loads(run_cli(cfg, "models", "alias", "colors", "production", "1", "--json").stdout)
    assert aliased["aliases"] == {"production": 1}
    rolled = json.loads(run_cli(cfg, "models", "rollback", "colors", "--json").stdout)
    assert rolled["pinned_version"] is None
    shown_model = run_cli(cfg, "models", "show", "colors")
    assert "production→v1" in shown_model.stdout

    # An API error: the server's message on stderr (JSON with --json), exit 1, no traceback.
    missing = run_cli(cfg, "predict", str(red), "--model", "nope", "--json")
    assert missing.returncode == 1 and missing.stdout == ""
    assert json.loads(missing.stderr)["error"]["code"] == "not_found"
    unreadable = run_cli(cfg, "predict", str(images / "nope.png"), "--model", "colors")
    assert unreadable.returncode == 1 and "No such file" in unreadable.stderr and "Traceback" not in unreadable.stderr
    bad = run_cli(cfg, "jobs", "submit", "--dataset", dataset["id"], "--epochs", "0")
    assert bad.returncode == 1 and "epochs" in bad.stderr and "Traceback" not in bad.stderr


def test_a_job_file_and_follow_exit_codes_when_canceled_or_out_of_time(server: Server, images: Path, cfg: Path) -> None:
    """A job from a YAML file; off a terminal --follow prints progress lines; `jobs follow --timeout` gives up with
    exit 5 (the job goes on); canceled while it trains (`jobs cancel`), --follow ends with exit 4."""
    up = json.loads(run_cli(cfg, "datasets", "upload", str(images), "--name", "to-delete", "--json").stdout)
    assert json.loads(run_cli(cfg, "datasets", "show", up["id"], "--json").stdout)["name"] == "to-delete"
    job_file = cfg / "job.yaml"
    job_file.write_text(
        yaml.safe_dump({**CHEAP_JOB, "dataset_id": up["id"], "model_name": "long", "epochs": 200, "seed": 7})
    )
    log = cfg / "follow.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher.cli",
                "jobs",
                "submit",
                "--file",
                str(job_file),
                "--set",
                "seed=3",
                "--follow",
            ],
            cwd=REPO,
            env=cli_env(cfg),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "step" not in log.read_text():  # it trains: a progress line is out
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        job_id = log.read_text().split("job ", 1)[1].split()[0]
        job = json.loads(run_cli(cfg, "jobs", "show", job_id, "--json").stdout)
        assert job["config"]["epochs"] == 200 and job["config"]["seed"] == 3  # the file, then --set
        out_of_time = run_cli(cfg, "jobs", "follow", job_id, "--timeout", "1")
        assert out_of_time.returncode == 5 and "did not finish within 1 s" in out_of_time.stderr
        running = json.loads(run_cli(cfg, "jobs", "list", "--status", "running", "--json").stdout)
        assert job_id in [j["id"] for j in running["items"]]
        canceled = run_cli(cfg, "jobs", "cancel", job_id, "--json")
        assert canceled.returncode == 0 and json.loads(canceled.stdout)["cancel_requested"] is True
        assert proc.wait(timeout=60) == 4, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "epoch 1/200 step " in text and "loss " in text
    assert "status: canceled" in text and f"job {job_id} canceled" in text
    assert "\x1b[" not in text  # no escape sequences off a terminal
    deleted = run_cli(cfg, "datasets", "delete", up["id"], "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"deleted": up["id"]}
    assert run_cli(cfg, "datasets", "show", up["id"]).returncode == 1


def test_follow_exits_3_when_the_job_fails(server: Server, images: Path, cfg: Path) -> None:
    """A job the server accepts but the worker cannot run (its weights file is not a safetensors file): --follow
    shows why and exits 3; following the failed job again with --json prints it as JSON, also with exit 3."""
    up = json.loads(run_cli(cfg, "datasets", "upload", str(images), "--name", "to-fail", "--json").stdout)
    flags = [*job_flags(up["id"], "broken", 1), "--set", f"weights={BROKEN_WEIGHTS}"]
    failed = run_cli(cfg, "jobs", "submit", *flags, "--follow")
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "status: failed" in failed.stdout and "Traceback" not in failed.stderr
    job_id = failed.stdout.split("job ", 1)[1].split()[0]
    assert f"job {job_id} failed: " in failed.stderr
    again = run_cli(cfg, "jobs", "follow", job_id, "--json")
    assert again.returncode == 3 and again.stderr == ""
    job = json.loads(again.stdout)
    assert job["status"] == "failed" and job["failures"] == 0 and job["error"]
