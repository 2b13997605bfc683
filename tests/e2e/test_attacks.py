"""The bombs of the access-control issue against a real API process: each refused with a 4xx that says why,
the process's peak RSS growth under 200 MB (psutil), nothing left in its data directory, the server alive."""

from __future__ import annotations

import pytest

from benchmarks.attacks import Server, attacks
from tests.processes import stop

pytestmark = pytest.mark.e2e

SKIPPED = ("6 GiB streamed upload",)  # 16 s of streaming; tests/api/test_http_hardening.py streams 64 MiB instead


def test_bombs_are_refused_with_bounded_memory(tmp_path):
    server = Server(tmp_path)
    try:
        rows = []
        for label, send in attacks(tmp_path):
            if label.startswith(SKIPPED):
                continue
            rows.append((label, server.measure(send)))
        assert server.proc.poll() is None, "the API died"
    finally:
        stop(server.proc)
    (baseline_label, baseline), *attempts = rows
    assert baseline["status"] == 201, baseline
    for label, row in attempts:
        assert 400 <= row["status"] < 500, (label, row)
        assert row["message"], (label, row)
        assert "/tmp" not in row["message"] and "0x" not in row["message"], (label, row)
        assert row["peak_rss_growth_mb"] < 200, (label, row)
        assert row["disk_left_bytes"] <= 0, (label, row)
        assert row["response_bytes"] < 4096, (label, row)  # nothing echoed back
        assert row["seconds"] < 60, (label, row)  # generous: each takes well under a second here, 100,000 entries a few
