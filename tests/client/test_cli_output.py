"""The CLI against a stand-in for the API on a real socket (canned answers, no embedded server): names from the API
printed literally (never as rich markup), clean errors for a bad URL, an unexpected answer or a bad event, the
--json error shape of a timed-out follow, the upload's "processing" status, and Ctrl-C."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

from app.schemas import DatasetOut, ImagePrediction, LabelScore, ModelOut, Page, PredictResponse
from tests.client.conftest import REPO, cli_env, fake_server, run_cli
from tests.client.test_events import job_detail
from visiontune.cli import datasets as datasets_cli
from visiontune.cli import main

JOB_ID = "6b0f2b4e-8a70-4c1e-9b3a-3f4f3c1d2e10"
DATASET_ID = "14bbad8d-7e0c-4814-b40f-61348f45171e"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
# Names a user may choose that are also rich markup: each must come out exactly as typed.
TRICKY = ["x[/]", "cat [old]", "[bold]dog[/bold]"]

Answer = tuple[int, Any] | Callable[[BaseHTTPRequestHandler], None]


class FakeAPI(BaseHTTPRequestHandler):
    """Canned answers by `METHOD /path` (query left out): (status, body) with a pydantic model, dict or bytes, or a
    function that writes the answer itself. Anything else is a 404 in the API's error shape."""

    answers: dict[str, Answer] = {}
    seen: list[str] = []

    def answer(self) -> None:
        self.read_body()
        key = f"{self.command} {self.path.split('?')[0]}"
        self.seen.append(key)
        found = self.answers.get(key)
        if callable(found):
            found(self)
            return
        status, body = found or (404, {"error": {"code": "not_found", "message": f"{key} is not here"}})
        if isinstance(body, BaseModel):
            data = body.model_dump_json().encode()
        else:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = answer  # noqa: N815 (http.server's names)

    def read_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args: object) -> None:
        pass


def event_stream(body: bytes, keep_alives: int = 0) -> Callable[[BaseHTTPRequestHandler], None]:
    """An SSE answer: body, then a keep-alive comment every 0.1 s (at most keep_alives) while the client listens."""

    def write(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        pace = threading.Event()
        try:
            handler.wfile.write(body)
            for _ in range(keep_alives):
                handler.wfile.write(b": keep-alive\n\n")
                handler.wfile.flush()
                pace.wait(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    return write


RUNNING = b'event: status\ndata: {"status": "running", "error": null, "attempt": 1}\nid: 1-0\n\n'


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with fake_server(FakeAPI) as url:
        yield url


@pytest.fixture
def env(api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The in-process CLI pointed at the stand-in, with an empty config directory."""
    FakeAPI.answers, FakeAPI.seen = {}, []
    monkeypatch.setenv("VISIONTUNE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("VISIONTUNE_URL", api)
    monkeypatch.setenv("VISIONTUNE_KEY", "vt_test")
    return tmp_path


def dataset() -> DatasetOut:
    return DatasetOut(
        id=DATASET_ID,
        name=TRICKY[0],
        format="imagefolder",
        source="upload",
        class_names=TRICKY,
        num_classes=3,
        num_images=6,
        split_counts={"train": dict.fromkeys(TRICKY, 2)},
        invalid_files=[],
        size_bytes=1234,
        created_at=NOW,
    )


def test_names_from_the_api_are_printed_as_typed_never_as_markup(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FakeAPI.answers = {
        "GET /datasets": (200, Page[DatasetOut](items=[dataset()], total=1, limit=50, offset=0)),
        f"GET /datasets/{DATASET_ID}": (200, dataset()),
        "POST /predict": (
            200,
            PredictResponse(
                model_name="colors",
                version=1,
                job_id=JOB_ID,
                arch="resnet18",
                backend="torch",
                predictions=[
                    ImagePrediction(filename="[b]a[/b].png", top=[LabelScore(label=t, probability=0.3) for t in TRICKY])
                ],
            ),
        ),
        "GET /models": (
            200,
            [
                ModelOut(
                    name="colors", pinned_version=None, serving_version=1, aliases={"[prod]": 1}, versions=[]
                ).model_dump(mode="json")
            ],
        ),
    }
    image = env / "a.png"  # the stand-in answers with the name "[b]a[/b].png"
    image.write_bytes(b"not looked at by the stand-in")
    for argv in (
        ["datasets", "list"],
        ["datasets", "show", DATASET_ID],
        ["predict", str(image), "--model", "colors"],
        ["models", "list"],
    ):
        assert main(argv) == 0, argv
        out = capsys.readouterr().out
        if argv[0] == "datasets":
            assert "x[/]" in out, out
        if argv[:2] == ["datasets", "show"] or argv[0] == "predict":
            assert all(name in out for name in TRICKY), out
        if argv[0] == "predict":
            assert "[b]a[/b].png" in out, out
        if argv[0] == "models":
            assert "[prod]→v1" in out, out


def test_a_bad_url_or_an_unexpected_answer_is_an_error_without_a_traceback(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_url = run_cli(env / "cfg", "datasets", "list", VISIONTUNE_URL="http://127.0.0.1:notaport")
    assert bad_url.returncode == 1 and "Traceback" not in bad_url.stderr
    assert "invalid server URL 'http://127.0.0.1:notaport'" in bad_url.stderr
    as_json = run_cli(env / "cfg", "login", "--url", "http://[::1", "--key", "vt_x", "--json")
    assert as_json.returncode == 1 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"]["code"] == "client_error"

    FakeAPI.answers = {
        "GET /datasets": (200, {"hello": "this is not visiontune"}),
        f"GET /jobs/{JOB_ID}/events": event_stream(b"event: status\ndata: {not json\nid: 1-0\n\n"),
    }
    assert main(["datasets", "list"]) == 1
    err = capsys.readouterr().err
    assert "not what this client expects" in err and "items" in err
    assert main(["datasets", "list", "--json"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "bad_response"
    assert main(["jobs", "events", JOB_ID]) == 1
    assert "an event's data is not JSON" in capsys.readouterr().err


def test_follow_json_times_out_with_the_json_error_shape(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FakeAPI.answers = {
        f"GET /jobs/{JOB_ID}": (200, job_detail("running")),
        f"GET /jobs/{JOB_ID}/events": event_stream(RUNNING, keep_alives=300),
    }
    assert main(["jobs", "follow", JOB_ID, "--timeout", "1", "--json"]) == 5
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err) == {
        "error": {"code": "wait_timeout", "message": f"job {JOB_ID} did not finish within 1 s (it goes on)"}
    }


def test_upload_says_when_the_server_checks_the_archive(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = env / "pets"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        (folder / name / "0.png").write_bytes(b"\x89PNG not really")
    FakeAPI.answers = {"POST /datasets": (201, dataset())}
    assert main(["datasets", "upload", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.index("uploading") < out.index("processing on the server") < out.index("x[/]"), out
    # On a terminal: a spinner with the same words after the bar (drawn, then cleared).
    screen = io.StringIO()
    monkeypatch.setattr(datasets_cli, "console", Console(file=screen, force_terminal=True, width=120))
    assert main(["datasets", "upload", str(folder)]) == 0
    drawn = screen.getvalue()
    assert drawn.index("uploading") < drawn.index("processing on the server") < drawn.index("x[/]"), drawn


def test_ctrl_c_ends_a_command_with_interrupted_and_exit_130(env: Path, api: str) -> None:
    FakeAPI.answers = {
        f"GET /jobs/{JOB_ID}": (200, job_detail("running")),
        f"GET /jobs/{JOB_ID}/events": event_stream(RUNNING, keep_alives=600),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "jobs", "follow", JOB_ID],
        cwd=REPO,
        env=cli_env(env / "cfg", VISIONTUNE_URL=api, VISIONTUNE_KEY="vt_test"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while f"GET /jobs/{JOB_ID}/events" not in FakeAPI.seen:  # it is following
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in err, err
