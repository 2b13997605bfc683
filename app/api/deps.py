"""Request-scoped dependencies: who is calling (key, project, scopes), the unit-of-work session, shared state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.auth import ADMIN, METRICS, PREDICT, READ, TRAIN, Actor, is_loopback
from app.config import Settings
from app.db import session_scope
from app.errors import Forbidden, Unauthorized
from app.models import DEFAULT_PROJECT
from app.services import keys

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer vt_...`")


def _session(request: Request) -> Iterator[Session]:
    # Commits when the handler returns, before the response is sent (scope="function").
    with session_scope(request.app.state.sessionmaker) as session:
        yield session


async def _settings(request: Request) -> Settings:
    # async: a plain attribute read, not worth a hop to the thread pool (every sync dependency makes one)
    return request.app.state.settings


def _caller(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Actor:
    """The key a request carries, checked in its own short transaction (never the request's session)."""
    settings: Settings = request.app.state.settings
    if settings.auth == "off":  # the API binds to loopback (checked at start-up); refuse anyone else anyway
        if request.client is not None and not is_loopback(request.client.host) and request.client.host != "testclient":
            raise Unauthorized("authentication is off on this server, which answers local requests only")
        return Actor(project=DEFAULT_PROJECT, scopes=frozenset({ADMIN}), name="auth off")
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("this route needs an API key: send `Authorization: Bearer <key>`")
    with session_scope(request.app.state.sessionmaker) as session:
        row = keys.authenticate(session, request.app.state.secret, credentials.credentials.strip())
        if row is None:
            raise Unauthorized("the API key is unknown, revoked or expired")
        actor, stale = keys.actor_for(row), keys.last_used_is_stale(row)
    if stale:  # a read-only check above; the last-used time in a write of its own, best effort
        try:
            with session_scope(request.app.state.sessionmaker) as session:
                keys.touch(session, row.id)
        except OperationalError:  # SQLite busy under concurrent writers: the next use records it
            pass
    request.state.actor = actor
    return actor


def require(scope: str) -> Callable[..., Actor]:
    """A dependency that admits a caller whose key grants scope (401 without a valid key, 403 without scope).

    One sync dependency for the key check, the scope and the rate limit: FastAPI runs each sync dependency in
    its thread pool, and every hop there costs a thread wake-up (and a GIL hand-over) per request."""

    def check(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Actor:
        caller = _caller(request, credentials)
        if not caller.can(scope):
            raise Forbidden(f"this API key lacks the {scope!r} scope (it has {', '.join(sorted(caller.scopes))})")
        limiter = getattr(request.app.state, "rate_limiter", None)
        if limiter is not None:
            limiter.check(caller, request)
        return caller

    check.__name__ = f"require_{scope}"
    return check


SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]
ReadCaller = Annotated[Actor, Depends(require(READ))]
TrainCaller = Annotated[Actor, Depends(require(TRAIN))]
PredictCaller = Annotated[Actor, Depends(require(PREDICT))]
AdminCaller = Annotated[Actor, Depends(require(ADMIN))]
MetricsCaller = Annotated[Actor, Depends(require(METRICS))]
