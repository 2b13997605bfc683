"""The dashboard's Server-Sent Events client (app/ui/static/api.js), run by Node: a connection cut mid-event is
resumed with Last-Event-ID and every event arrives once, in order; the stream ends at the terminal status."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (make install needs it for the dashboard)")
def test_a_cut_stream_resumes_with_last_event_id_and_loses_or_repeats_nothing():
    out = subprocess.run([str(NODE), str(HERE / "sse_client.mjs")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [(e["id"], e["type"]) for e in result["received"]] == [
        ("1-0", "status"),
        ("2-0", "progress"),
        ("3-0", "progress"),
        ("4-0", "progress"),
        ("5-0", "status"),
    ]
    assert result["received"][1]["data"] == {"step": 1, "steps": 4}  # two data lines joined by a newline
    assert result["received"][-1]["data"] == {"status": "succeeded"}
    assert [s["lastEventId"] for s in result["sent"]] == [None, "3-0"]  # one reconnect, from the last whole event
    assert all(s["url"] == "/jobs/job-1/events" and s["auth"] == "Bearer vt_test" for s in result["sent"])
    assert result["states"][0] == "live" and "reconnecting" in result["states"] and result["states"][-1] == "closed"
