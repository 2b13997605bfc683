"""The dashboard's DOM-free logic run by Node (tests/ui/page_logic.mjs): the confusion matrix's class order for
numeric class names, hash parameters checked before any fetch, polling when a server has no live events, an
event handler's error that neither kills nor restarts the event stream, and a connection cut mid-event that is
resumed with Last-Event-ID, every event arriving once, in order, until the terminal status."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE = shutil.which("node")
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (the dashboard's npm install needs it)")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    out = subprocess.run([str(NODE), str(HERE / "page_logic.mjs")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_numeric_class_names_keep_the_confusion_matrix_order(result):
    order = result["classOrder"]
    assert order["objectKeys"] == ["9", "10", "cat"]  # what JavaScript does to the keys of per_class
    assert order["withClassNames"] == ["10", "9", "cat"]  # the server's class_names: row/column index order
    # Metrics stored before class_names: the dataset's order when it names the same classes, else per_class's.
    assert order["oldWithDataset"] == ["10", "9", "cat"]
    assert order["oldWithOtherDataset"] == order["oldAlone"] == ["9", "10", "cat"]


def test_hash_parameters_are_decoded_and_checked_before_any_fetch(result):
    routes = result["routes"]
    assert routes["badEncoding"] is None  # "%E0": decodeURIComponent throws; the router shows "no page"
    assert routes["smuggled"] is None  # "..%2Fjobs%2F<id>" is not a dataset id
    assert routes["job"] == ["0b0f6f3e-8a44-4c43-9d4e-0c6c1f1d2a10"]
    assert routes["model"] == ["pets.v2"] and routes["encodedModel"] == ["my-model"]
    assert routes["modelWithSlash"] is None and routes["modelDots"] is None


def test_no_live_events_means_polling_until_the_job_finishes(result):
    polling = result["polling"]
    assert polling["sent"] == ["/jobs/job-1/events"]  # asked once, not reconnected forever
    assert polling["polls"] == 3  # running, running, succeeded: then it stops
    assert polling["states"][0] == "polling" and polling["states"][-1] == "closed"
    assert polling["events"] == []


def test_an_event_handler_error_is_logged_and_the_stream_goes_on(result):
    bad = result["badHandler"]
    assert bad["seen"] == ["1-0", "2-0", "3-0", "4-0"]  # every event once, the one after the failure too
    assert bad["sent"] == [None]  # one connection: no reconnect that would deliver event 2 again
    assert bad["states"] == ["live", "closed"]
    assert bad["logged"] == ["visiontune: the page failed on the progress event 2-0"]


def test_a_cut_stream_resumes_with_last_event_id_and_loses_or_repeats_nothing(result):
    resume = result["resume"]
    assert [(e["id"], e["type"]) for e in resume["received"]] == [
        ("1-0", "status"),
        ("2-0", "progress"),
        ("3-0", "progress"),
        ("4-0", "progress"),
        ("5-0", "status"),
    ]
    assert resume["received"][1]["data"] == {"step": 1, "steps": 4}  # two data lines joined by a newline
    assert resume["received"][-1]["data"] == {"status": "succeeded"}
    assert [s["lastEventId"] for s in resume["sent"]] == [None, "3-0"]  # one reconnect, from the last whole event
    assert all(s["url"] == "/jobs/job-1/events" and s["auth"] == "Bearer vt_test" for s in resume["sent"])
    assert resume["states"][0] == "live" and "reconnecting" in resume["states"] and resume["states"][-1] == "closed"
