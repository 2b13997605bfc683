"""The code's shape, checked like its behaviour: the import contracts in pyproject.toml ([tool.importlinter]:
launchers above workers above app, app.ml free of web/SQL/queue code, the client on the HTTP API only, no
cycles) and mypy with no errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["app", "worker", "launcher", "visiontune"]


def run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = run(str(lint_imports), "--no-cache", timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_mypy_finds_no_errors(tmp_path: Path) -> None:
    done = run(sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), *PACKAGES, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
