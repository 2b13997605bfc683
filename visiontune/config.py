"""Where the client finds its server and key: arguments, then VISIONTUNE_URL / VISIONTUNE_KEY, then the login
that `visiontune login` saved in the user's config directory (a JSON file readable by the user only)."""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import platformdirs

from visiontune.errors import ClientError

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
    """`host:port` -> `http://host:port`, no trailing slash; ClientError for a URL no request could go to."""
    url = url.strip()
    url = (url if "://" in url else f"http://{url}").rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ClientError(f"invalid server URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClientError(f"invalid server URL {url!r}: expected http(s)://HOST[:PORT]")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ClientError(f"invalid server URL {url!r}: port {parsed.port} is out of range")
    return url


_warned: set[Path] = set()


def warn_if_exposed(path: Path) -> None:
    """A warning on stderr (once per file) when the login file can be read by other users."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO) and path not in _warned:
        _warned.add(path)
        sys.stderr.write(
            f"warning: {path} (it holds your API key) is open to other users "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}\n"
        )


def saved_login() -> Login | None:
    """The login `visiontune login` saved, or None (with a warning when others can read the file)."""
    path = login_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    warn_if_exposed(path)
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    key = data.get("key")
    return Login(url=data["url"], key=key if isinstance(key, str) else None)


def save_login(login: Login) -> Path:
    """Write the login atomically, readable and writable by the user only (0600, in a 0700 directory)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:  # mkdir leaves an existing directory's mode alone (and the umask may have narrowed a new one's)
        directory.chmod(0o700)
    except OSError:
        pass  # not ours to change (e.g. a shared VISIONTUNE_CONFIG_DIR): the file itself is still 0600
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
    if key is None and saved is not None and _same_url(saved.url, chosen):
        key = saved.key
    return Login(url=chosen, key=key)


def _same_url(saved: str, chosen: str) -> bool:
    try:
        return normalize_url(saved) == chosen
    except ClientError:  # a broken saved URL is never the one chosen
        return False
