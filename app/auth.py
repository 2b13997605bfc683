"""API keys: generation, hashing with the server secret, scopes, and who a request acts as.

A key is `vt_` + 43 URL-safe characters (256 random bits). Only HMAC-SHA256(server secret, key) is stored, so
a copy of the database does not let anyone in; the plaintext is shown once, when the key is made.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.config import Settings

KEY_PREFIX = "vt_"
KEY_PATTERN = re.compile(r"^vt_[A-Za-z0-9_-]{43}$")
SHOWN_PREFIX_LENGTH = 10  # "vt_" + 7 characters: enough to tell keys apart, far too little to guess one

ADMIN, TRAIN, PREDICT, READ, METRICS = "admin", "train", "predict", "read", "metrics"
SCOPES = (ADMIN, TRAIN, PREDICT, READ, METRICS)
# What each scope grants: admin everything; train its project's datasets, jobs and models (and reading them);
# metrics only the server's Prometheus metrics (a scraper's key can do nothing else).
GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset(SCOPES),
    TRAIN: frozenset({TRAIN, READ}),
    PREDICT: frozenset({PREDICT}),
    READ: frozenset({READ}),
    METRICS: frozenset({METRICS}),
}
SCOPE_DOCS = {
    ADMIN: "everything: keys of every project, the audit log, server directories and server-side weights files",
    TRAIN: "upload and delete datasets, submit, cancel and delete jobs, pin versions, set and roll back aliases "
    "(own project)",
    PREDICT: "POST /predict (own project's models)",
    READ: "read datasets, jobs, metrics, plots and models (own project)",
    METRICS: "GET /metrics: the server's Prometheus metrics (counts and timings of every project, no data)",
}

PROJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


@dataclass(frozen=True)
class Actor:
    """Who a request (or a server-side command) acts as: the key, its project and what it may do."""

    project: str
    scopes: frozenset[str]
    key_id: uuid.UUID | None = None
    name: str = "anonymous"
    granted: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        granted: set[str] = set()
        for scope in self.scopes:
            granted |= GRANTS.get(scope, frozenset())
        object.__setattr__(self, "granted", frozenset(granted))

    def can(self, scope: str) -> bool:
        return scope in self.granted

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.granted


def cli_actor(project: str = "default") -> Actor:
    """The operator at the server's shell (`visiontune keys ...`)."""
    return Actor(project=project, scopes=frozenset({ADMIN}), name="cli")


def new_key() -> str:
    """A fresh API key with 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(candidate: str) -> bool:
    return bool(KEY_PATTERN.match(candidate))


def hash_key(secret: bytes, key: str) -> str:
    """HMAC-SHA256 of the key under the server secret, hex."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def server_secret(settings: Settings) -> bytes:
    """VISIONTUNE_SECRET_KEY, else data_dir/secret_key (made once, readable by this user only)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.data_dir) / "secret_key"
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _read_secret(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    value = path.read_text().strip()
    if len(value) < 32:
        raise RuntimeError("the server secret file is too short; delete it to make a new one (keys then change)")
    return value.encode()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: a bind address no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_mode(settings: Settings) -> None:
    """Refuse VISIONTUNE_AUTH=off unless the API listens on a loopback address only."""
    if settings.auth == "off" and not is_loopback(settings.host):
        raise SystemExit(
            f"VISIONTUNE_AUTH=off is allowed only when the API binds to a loopback address, not {settings.host!r}"
        )
