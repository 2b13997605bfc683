"""Where the client finds its server and key (no server needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO
from visiontune import ClientError, config


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VISIONTUNE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("VISIONTUNE_URL", raising=False)
    monkeypatch.delenv("VISIONTUNE_KEY", raising=False)
    return tmp_path / "cfg"


def test_arguments_then_environment_then_the_saved_login(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.resolve() == config.Login(config.DEFAULT_URL, None)
    path = config.save_login(config.Login("http://gpu-box:8000", "vt_saved"))
    assert path == home / "login.json" and path.stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700
    assert config.resolve() == config.Login("http://gpu-box:8000", "vt_saved")
    monkeypatch.setenv("VISIONTUNE_KEY", "vt_env")
    assert config.resolve() == config.Login("http://gpu-box:8000", "vt_env")
    assert config.resolve("gpu-box:8000/", "vt_arg") == config.Login("http://gpu-box:8000", "vt_arg")
    assert config.forget_login() and not config.forget_login()


def test_the_saved_key_never_goes_to_another_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config.save_login(config.Login("http://gpu-box:8000", "vt_saved"))
    monkeypatch.setenv("VISIONTUNE_URL", "http://elsewhere:8000")
    assert config.resolve() == config.Login("http://elsewhere:8000", None)
    assert config.resolve("http://gpu-box:8000/").key == "vt_saved"


def test_the_client_loads_none_of_the_server_and_is_listed_in_the_help() -> None:
    code = (
        "import sys, visiontune, visiontune.cli; "
        "print(sorted(m for m in ('torch', 'sqlalchemy', 'celery', 'fastapi', 'app.config') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    helped = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for command in ("run", "api", "worker", "keys", "login", "logout", "datasets", "jobs", "models", "predict"):
        assert f"    {command} " in helped, helped


def test_the_config_directory_is_made_private_and_an_exposed_login_is_warned_about(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir(mode=0o755)
    home.chmod(0o755)  # made before, by hand or another tool
    path = config.save_login(config.Login("http://gpu-box:8000", "vt_saved"))
    assert home.stat().st_mode & 0o777 == 0o700
    assert config.saved_login() is not None and capsys.readouterr().err == ""

    path.chmod(0o644)
    assert config.resolve().key == "vt_saved"  # still used, with a warning once
    assert config.resolve().key == "vt_saved"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"chmod 600 {path}" in err and "mode 644" in err


def test_a_url_no_request_could_go_to_is_a_client_error() -> None:
    assert config.normalize_url(" gpu-box:8000/ ") == "http://gpu-box:8000"
    for bad in ("http://127.0.0.1:notaport", "ftp://gpu-box", "http://", "http://host:70000"):
        with pytest.raises(ClientError, match="invalid server URL"):
            config.normalize_url(bad)
