"""GET /audit: every change with who made it, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminCaller, SessionDep
from app.api.docs import errors
from app.schemas import MAX_OFFSET, AuditEventOut, Page
from app.services import audit as service

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=Page[AuditEventOut], responses=errors())
def list_audit(
    caller: AdminCaller,
    session: SessionDep,
    project: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")] = None,
    action: Annotated[str | None, Query(max_length=50, description="e.g. job.submit, key.revoke")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[AuditEventOut]:
    """Newest first: key, action, object and time of every change (every project, or one)."""
    rows, total = service.list_events(session, project, action, limit, offset)
    return Page(items=[AuditEventOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)
