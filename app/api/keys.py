"""POST/GET/DELETE /keys: API keys, for admins (the plaintext is in the creation answer only)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import AdminCaller, SessionDep
from app.api.docs import errors
from app.schemas import MAX_OFFSET, KeyCreate, KeyCreated, KeyOut, Page
from app.services import keys as service

router = APIRouter(prefix="/keys", tags=["keys"])

Project = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="one project's keys")]


@router.post("", status_code=201, response_model=KeyCreated, responses=errors(429))
def create_key(body: KeyCreate, caller: AdminCaller, session: SessionDep, request: Request) -> KeyCreated:
    """Make a key. Its plaintext is in this answer only: store it now, it cannot be shown again."""
    row, plaintext = service.create_key(
        session, request.app.state.secret, caller, body.name, list(body.scopes), body.project, body.expires_at
    )
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=plaintext)


@router.get("", response_model=Page[KeyOut], responses=errors())
def list_keys(
    caller: AdminCaller,
    session: SessionDep,
    project: Project = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[KeyOut]:
    """Every project's keys (or one project's), newest first; never the keys themselves."""
    rows, total = service.list_keys(session, project, limit, offset)
    return Page(items=[KeyOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.delete("/{key_id}", response_model=KeyOut, responses=errors(404, 409, 429))
def revoke_key(key_id: uuid.UUID, caller: AdminCaller, session: SessionDep) -> KeyOut:
    """Revoke a key: it answers 401 from the next request on (409 for the last live admin key)."""
    return KeyOut.model_validate(service.revoke_key(session, caller, str(key_id)))
