"""/docs in headless Chromium against a real server: Swagger UI's files come from the installed package, run
under the page's strict CSP, and render every operation, with the network closed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from app.auth import new_key
from app.migrate import upgrade
from tests.processes import free_port, python, start, stop, wait_http

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_docs_render_offline_under_the_csp(tmp_path):
    db = f"sqlite:///{tmp_path / 'vt.db'}"
    upgrade(db)
    env = {
        "VISIONTUNE_DATA_DIR": str(tmp_path / "data"),
        "VISIONTUNE_DATABASE_URL": db,
        "VISIONTUNE_ADMIN_KEY": new_key(),
    }
    port = free_port()
    log = tmp_path / "api.log"
    api = start(python("-m", "launcher.cli", "api", "--port", str(port)), env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", api, log)
        out = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"http://127.0.0.1:{port}/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop(api)
    dom = out.stdout
    # Rendered by Swagger UI's JavaScript, so its scripts loaded and ran under script-src 'self'.
    for path in ("/datasets/register", "/jobs/{job_id}/cancel", "/keys", "/predict"):
        assert f'data-path="{path}"' in dom, (path, dom[:2000], out.stderr[-2000:])
    assert "Authorize" in dom  # the bearer scheme is offered
    served = log.read_text()
    assert "GET /docs-static/" in served and "cdn" not in dom.lower()
