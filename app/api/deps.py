"""Request-scoped dependencies: the unit-of-work session and the shared state made in lifespan."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope


def _session(request: Request) -> Iterator[Session]:
    # Commits when the handler returns, before the response is sent (scope="function").
    with session_scope(request.app.state.sessionmaker) as session:
        yield session


def _settings(request: Request) -> Settings:
    return request.app.state.settings


SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]
