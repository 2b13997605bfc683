"""Where the client finds its server and key: arguments, then VISIONTUNE_URL / VISIONTUNE_KEY, then the login
that `visiontune login` saved in the user's config directory (a JSON file readable by the user only)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

URL_ENV = "VISIONTUNE_URL"
KEY_ENV = "VISIONTUNE_KEY"
CONFIG_DIR_ENV = "VISIONTUNE_CONFIG_DIR"
DEFAULT_URL = "http://127.0.0.1:8000"
LOGIN_FILE = "login.json"


@dataclass(frozen=True)
class Login:
    url: str
    key: str | None


def config_dir() -> Path:
    """VISIONTUNE_CONFIG_DIR, else the platform's user config directory (~/.config/visiontune on Linux)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_config_dir("visiontune", appauthor=False))


def login_path() -> Path:
    return config_dir() / LOGIN_FILE


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def saved_login() -> Login | None:
    """The login `visiontune login` saved, or None."""
    try:
        data = json.loads(login_path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    key = data.get("key")
    return Login(url=data["url"], key=key if isinstance(key, str) else None)


def save_login(login: Login) -> Path:
    """Write the login atomically, readable and writable by the user only (0600, in a 0700 directory)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".login.", suffix=".tmp")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"url": login.url, "key": login.key}, f)
            f.write("\n")
        os.replace(tmp, directory / LOGIN_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return directory / LOGIN_FILE


def forget_login() -> bool:
    """Delete the saved login; False when there was none."""
    try:
        login_path().unlink()
    except FileNotFoundError:
        return False
    return True


def server_url(url: str | None = None, saved: Login | None = None) -> str:
    """url, else VISIONTUNE_URL, else the saved login's, else DEFAULT_URL."""
    return normalize_url(url or os.environ.get(URL_ENV) or (saved.url if saved else DEFAULT_URL))


def resolve(url: str | None = None, key: str | None = None) -> Login:
    """The server and key to use. The saved key is sent only to the saved server's URL, never to another one."""
    saved = saved_login()
    chosen = server_url(url, saved)
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is None and saved is not None and normalize_url(saved.url) == chosen:
        key = saved.key
    return Login(url=chosen, key=key)
