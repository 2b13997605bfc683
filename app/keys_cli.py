"""`visiontune keys ...`: manage API keys straight in the database (works with the API down)."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from app.auth import SCOPES, cli_actor, new_key, server_secret
from app.config import Settings
from app.db import make_engine, make_sessionmaker, session_scope
from app.errors import VisiontuneError
from app.schemas import KeyOut
from app.services import keys as service

ADMIN_KEY_FILE = "admin_key"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke (on the server; the API may be down)")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="make a key and print it (shown this once)")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", action="append", choices=SCOPES, required=True, help="repeat for several")
    create.add_argument("--project", default="default")
    create.add_argument("--expires-in-days", type=float, default=None)
    create.add_argument("--json", action="store_true")
    lst = ksub.add_parser("list", help="every key (never the keys themselves)")
    lst.add_argument("--project", default=None)
    lst.add_argument("--json", action="store_true")
    revoke = ksub.add_parser("revoke", help="revoke a key by id or shown prefix")
    revoke.add_argument("key")
    ksub.add_parser("new", help="print a fresh random key without storing it (for VISIONTUNE_ADMIN_KEY)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.keys_command == "new":
        print(new_key())
        return 0
    from app.migrate import upgrade

    url = settings.resolved_database_url()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            return _run(session, settings, args)
    except VisiontuneError as exc:
        print(f"error: {exc.message}")
        return 2
    finally:
        engine.dispose()


def _run(session: Session, settings: Settings, args: argparse.Namespace) -> int:
    actor = cli_actor()
    if args.keys_command == "create":
        expires = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
        row, plaintext = service.create_key(
            session, server_secret(settings), actor, args.name, args.scope, args.project, expires
        )
        out = KeyOut.model_validate(row).model_dump(mode="json")
        if args.json:
            print(json.dumps({**out, "key": plaintext}))
        else:
            print(f"key {row.id} ({row.name}, project {row.project}, scopes {', '.join(row.scopes)})")
            print(plaintext)
            print("Store it now: it is not shown again.")
        return 0
    if args.keys_command == "list":
        rows, _ = service.list_keys(session, args.project, 10_000, 0)
        items = [KeyOut.model_validate(r).model_dump(mode="json") for r in rows]
        if args.json:
            print(json.dumps(items))
            return 0
        print(f"{'id':36}  {'prefix':10}  {'project':12}  {'name':20}  {'scopes':22}  state")
        for r in items:
            state = "revoked" if r["revoked_at"] else ("expires " + r["expires_at"] if r["expires_at"] else "active")
            scopes = ",".join(r["scopes"])
            print(f"{r['id']:36}  {r['prefix']:10}  {r['project'][:12]:12}  {r['name'][:20]:20}  {scopes:22}  {state}")
        return 0
    row = service.revoke_key(session, actor, args.key, allow_last_admin=True)
    print(f"revoked key {row.id} ({row.name})")
    return 0


def first_admin_key(settings: Settings) -> str | None:
    """On a first start (no live admin key): make one, write it to data_dir/admin_key (mode 600), return it."""
    engine = make_engine(settings.resolved_database_url())
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            if service.any_admin_key(session):
                return None
            row, plaintext = service.create_key(
                session, server_secret(settings), cli_actor(), "first admin", ["admin"], "default"
            )
    finally:
        engine.dispose()
    path = Path(settings.data_dir) / ADMIN_KEY_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plaintext + "\n")
    return plaintext
