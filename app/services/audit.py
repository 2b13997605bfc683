"""The audit log: every change, with the key that made it, the action, the object and the time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Actor
from app.models import AuditEvent


def record(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object,
    details: dict[str, Any] | None = None,
    project: str | None = None,
) -> None:
    """Add an event to the unit of work (it commits, or rolls back, with the change it describes)."""
    session.add(
        AuditEvent(
            project=project or actor.project,
            key_id=actor.key_id,
            actor=actor.name[:120],
            action=action,
            object_type=object_type,
            object_id=str(object_id)[:200],
            details=details,
        )
    )


def list_events(
    session: Session, project: str | None, action: str | None, limit: int, offset: int
) -> tuple[list[AuditEvent], int]:
    """Newest first, optionally of one project or one action."""
    query = select(AuditEvent)
    count = select(func.count()).select_from(AuditEvent)
    if project is not None:
        query, count = query.where(AuditEvent.project == project), count.where(AuditEvent.project == project)
    if action is not None:
        query, count = query.where(AuditEvent.action == action), count.where(AuditEvent.action == action)
    total = session.scalar(count) or 0
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), total
