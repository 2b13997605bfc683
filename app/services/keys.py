"""API key use-cases: create (shown once), list, revoke, authenticate, and the first admin key."""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import ADMIN, SCOPES, SHOWN_PREFIX_LENGTH, Actor, hash_key, looks_like_key, new_key
from app.errors import Conflict, InvalidInput, NotFound
from app.models import DEFAULT_PROJECT, ApiKey, Project
from app.services import audit

# last_used_at is written at most this often per key, so a busy /predict key does not write on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def ensure_project(session: Session, name: str) -> Project:
    """The project called name, made if it does not exist yet."""
    project = session.get(Project, name)
    if project is None:
        try:
            with session.begin_nested():
                project = Project(name=name)
                session.add(project)
        except IntegrityError:  # made concurrently
            project = session.get(Project, name)
    assert project is not None
    return project


def create_key(
    session: Session,
    secret: bytes,
    actor: Actor,
    name: str,
    scopes: list[str],
    project: str | None = None,
    expires_at: datetime | None = None,
    plaintext: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key (row, plaintext). Only admins make keys; they may make them for any project."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be a non-empty list of {', '.join(SCOPES)}; got {unknown or scopes}")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise InvalidInput("expires_at must be in the future")
    project = project or actor.project
    ensure_project(session, project)
    key = plaintext or new_key()
    if not looks_like_key(key):
        raise InvalidInput("an API key is 'vt_' followed by 43 URL-safe base64 characters (256 bits)")
    row = ApiKey(
        project=project,
        name=name,
        prefix=key[:SHOWN_PREFIX_LENGTH],
        key_hash=hash_key(secret, key),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict("that key already exists") from exc
    audit.record(
        session, actor, "key.create", "key", row.id, {"name": name, "scopes": row.scopes, "project": project}, project
    )
    return row, key


def list_keys(session: Session, project: str | None, limit: int, offset: int) -> tuple[list[ApiKey], int]:
    query = select(ApiKey)
    count = select(func.count()).select_from(ApiKey)
    if project is not None:
        query, count = query.where(ApiKey.project == project), count.where(ApiKey.project == project)
    total = session.scalar(count) or 0
    rows = session.scalars(query.order_by(ApiKey.created_at.desc(), ApiKey.id).limit(limit).offset(offset)).all()
    return list(rows), total


def find_key(session: Session, ref: str) -> ApiKey:
    """A key by id, or by its shown prefix when that is unique (the CLI accepts both)."""
    try:
        row = session.get(ApiKey, uuid.UUID(ref))
    except ValueError:
        matches = session.scalars(select(ApiKey).where(ApiKey.prefix == ref[:SHOWN_PREFIX_LENGTH])).all()
        row = matches[0] if len(matches) == 1 and len(ref) >= SHOWN_PREFIX_LENGTH else None
    if row is None:
        raise NotFound(f"no API key {ref[:40]!r}")
    return row


def revoke_key(session: Session, actor: Actor, ref: str, allow_last_admin: bool = False) -> ApiKey:
    """Revoke a key at once (idempotent); it answers 401 from then on. Over the API the last live admin key
    cannot be revoked (nobody could make keys any more); the server's CLI may."""
    row = find_key(session, ref)
    if row.revoked_at is None and ADMIN in row.scopes and not allow_last_admin and not _other_admin(session, row):
        raise Conflict("this is the last live admin key: make another admin key before revoking it")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        audit.record(session, actor, "key.revoke", "key", row.id, {"name": row.name}, row.project)
    session.flush()
    return row


def authenticate(session: Session, secret: bytes, token: str) -> ApiKey | None:
    """The live key whose plaintext is token, or None (unknown, revoked or expired)."""
    if not looks_like_key(token):
        return None
    digest = hash_key(secret, token)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    now = datetime.now(UTC)
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row


def last_used_is_stale(row: ApiKey) -> bool:
    return row.last_used_at is None or datetime.now(UTC) - row.last_used_at > LAST_USED_RESOLUTION


def touch(session: Session, key_id: uuid.UUID) -> None:
    """Record that a key was used now (at most once per LAST_USED_RESOLUTION; a conditional UPDATE)."""
    now = datetime.now(UTC)
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION))
        .values(last_used_at=now)
    )


def actor_for(row: ApiKey) -> Actor:
    return Actor(project=row.project, scopes=frozenset(row.scopes), key_id=row.id, name=row.name)


def ensure_admin_key(session: Session, secret: bytes, plaintext: str, name: str = "bootstrap admin") -> bool:
    """Make plaintext an admin key of the default project unless a key with it exists; True if made."""
    if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(secret, plaintext))) is not None:
        return False
    actor = Actor(project=DEFAULT_PROJECT, scopes=frozenset({ADMIN}), name="server start-up")
    try:
        with session.begin_nested():
            create_key(session, secret, actor, name, [ADMIN], DEFAULT_PROJECT, plaintext=plaintext)
    except (Conflict, IntegrityError):  # another API process starting at the same moment made it first
        return False
    return True


def any_admin_key(session: Session) -> bool:
    """Whether some live admin key exists (the embedded launcher makes one on first start otherwise)."""
    return _other_admin(session, None)


def _other_admin(session: Session, besides: ApiKey | None) -> bool:
    now = datetime.now(UTC)
    for row in session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))):
        if row is besides or ADMIN not in row.scopes:
            continue
        if row.expires_at is None or row.expires_at > now:
            return True
    return False
