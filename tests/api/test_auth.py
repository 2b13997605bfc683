"""API keys: every route × {no key, malformed, unknown, revoked, expired, each scope}; keys never stored or shown
in plaintext after creation; the CLI works with the API down; the audit log records every change."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, select, update

from app.auth import hash_key, new_key, server_secret
from app.db import make_engine, make_sessionmaker, session_scope
from app.models import ApiKey, AuditEvent
from tests.factories import REPO

# The scope each route needs (None: public). A route missing here fails test_every_route_is_in_the_table, so a
# new route is never left without a decision.
ROUTE_SCOPES: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): None,
    ("POST", "/datasets"): "train",
    ("POST", "/datasets/register"): "admin",
    ("GET", "/datasets"): "read",
    ("GET", "/datasets/{dataset_id}"): "read",
    ("DELETE", "/datasets/{dataset_id}"): "train",
    ("GET", "/datasets/{dataset_id}/samples"): "read",
    ("GET", "/datasets/{dataset_id}/images/{ref}"): "read",
    ("POST", "/jobs"): "train",
    ("GET", "/jobs"): "read",
    ("GET", "/jobs/{job_id}"): "read",
    ("DELETE", "/jobs/{job_id}"): "train",
    ("POST", "/jobs/{job_id}/cancel"): "train",
    ("GET", "/jobs/{job_id}/metrics"): "read",
    ("GET", "/jobs/{job_id}/confusion.png"): "read",
    ("GET", "/jobs/{job_id}/curves.png"): "read",
    ("GET", "/jobs/{job_id}/events"): "read",
    ("GET", "/jobs/{job_id}/confusion"): "read",
    ("POST", "/jobs/estimate"): "train",
    ("GET", "/models"): "read",
    ("GET", "/models/{name}"): "read",
    ("POST", "/models/{name}/versions/{version}/promote"): "train",
    ("DELETE", "/models/{name}/pin"): "train",
    ("PUT", "/models/{name}/aliases/{alias}"): "train",
    ("DELETE", "/models/{name}/aliases/{alias}"): "train",
    ("GET", "/models/{name}/history"): "read",
    ("POST", "/models/{name}/rollback"): "train",
    ("POST", "/predict"): "predict",
    ("POST", "/models/{name}/versions/{version}/exports"): "train",
    ("GET", "/models/{name}/versions/{version}/exports"): "read",
    ("GET", "/models/{name}/versions/{version}/exports/{format}"): "read",
    ("POST", "/keys"): "admin",
    ("GET", "/keys"): "admin",
    ("DELETE", "/keys/{key_id}"): "admin",
    ("GET", "/audit"): "admin",
}
GRANTED_BY = {"admin": {"admin", "train", "predict", "read"}, "train": {"train", "read"}}


def api_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the OpenAPI schema documents."""
    return [(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops]


def concrete(path: str) -> str:
    return (
        path.replace("{dataset_id}", str(uuid.uuid4()))
        .replace("{job_id}", str(uuid.uuid4()))
        .replace("{key_id}", str(uuid.uuid4()))
        .replace("{name}", "nosuchmodel")
        .replace("{version}", "1")
        .replace("{format}", "onnx")
        .replace("{alias}", "production")
        .replace("{ref}", "0")
    )


def call(client, method: str, path: str, headers: dict[str, str] | None):
    """One request with a body that is valid enough to get past parsing to the scope check."""
    url = concrete(path)
    if method == "GET":
        return client.get(url, headers=headers)
    if method == "DELETE":
        return client.delete(url, headers=headers)
    if method == "PUT":
        return client.put(url, headers=headers, json={"version": 1})
    if path in ("/datasets", "/predict"):
        field = "file" if path == "/datasets" else "files"
        return client.post(url, headers=headers, files={field: ("x.zip", b"PK\x05\x06" + b"\x00" * 18)})
    bodies = {
        "/jobs": {"dataset_id": str(uuid.uuid4())},
        "/jobs/estimate": {"dataset_id": str(uuid.uuid4())},
        "/keys": {"name": "k", "scopes": ["read"]},
        "/datasets/register": {"path": "nothing-here"},
        "/models/{name}/versions/{version}/exports": {"format": "onnx"},
    }
    return client.post(url, headers=headers, json=bodies.get(path, {}))


def make_key(client, scopes: list[str], project: str | None = None, name: str = "k") -> dict:
    body: dict = {"name": name, "scopes": scopes}
    if project:
        body["project"] = project
    r = client.post("/keys", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_is_in_the_table(client):
    assert sorted(api_routes(client.app)) == sorted(ROUTE_SCOPES)


def test_route_matrix(client, settings):
    keys = {scope: make_key(client, [scope], name=scope)["key"] for scope in ("admin", "train", "predict", "read")}
    revoked = make_key(client, ["admin"], name="revoked")
    assert client.delete(f"/keys/{revoked['id']}").status_code == 200
    expired = make_key(client, ["admin"], name="expired")
    engine = make_engine(settings.resolved_database_url())
    with session_scope(make_sessionmaker(engine)) as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(expired["id"]))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    engine.dispose()
    bad = {
        "no key": None,
        "not bearer": {"Authorization": f"Basic {keys['admin']}"},
        "malformed": bearer("hunter2"),
        "unknown": bearer(new_key()),
        "revoked": bearer(revoked["key"]),
        "expired": bearer(expired["key"]),
    }
    anon = TestClient(client.app, raise_server_exceptions=False)  # no default key: each call names its own
    for (method, path), needed in ROUTE_SCOPES.items():
        for label, headers in bad.items():
            r = call(anon, method, path, headers)
            if needed is None:
                assert r.status_code == 200, (method, path, label, r.text)
                continue
            assert r.status_code == 401, (method, path, label, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer", (method, path, label)
            assert r.json()["error"]["code"] == "unauthorized"
        for scope, key in keys.items():
            r = call(anon, method, path, bearer(key))
            allowed = needed is None or needed in GRANTED_BY.get(scope, {scope})
            if allowed:
                assert r.status_code not in (401, 403), (method, path, scope, r.status_code, r.text)
                assert r.status_code < 500, (method, path, scope, r.text)
            else:
                assert r.status_code == 403, (method, path, scope, r.status_code, r.text)
                assert f"'{needed}' scope" in r.json()["error"]["message"]


def test_no_plaintext_key_after_creation(client, settings, caplog):
    caplog.set_level(logging.DEBUG)
    created = make_key(client, ["read"], name="secretive")
    plaintext = created["key"]
    assert plaintext.startswith("vt_") and len(plaintext) == 46  # 32 random bytes, URL-safe base64
    # Usable, and what it shows afterwards never includes it; its use is recorded.
    assert client.get("/datasets", headers=bearer(plaintext)).status_code == 200
    listed = client.get("/keys").text
    [shown] = [k for k in client.get("/keys", params={"limit": 500}).json()["items"] if k["id"] == created["id"]]
    assert shown["last_used_at"] is not None
    assert created["id"] in listed and plaintext not in listed
    assert plaintext not in client.get("/audit").text
    # Not in any table: only its keyed hash is.
    engine = make_engine(settings.resolved_database_url())
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        dump = json.dumps([[list(map(str, row)) for row in conn.execute(t.select())] for t in meta.sorted_tables])
        stored = conn.execute(select(ApiKey.key_hash).where(ApiKey.id == uuid.UUID(created["id"]))).scalar_one()
    engine.dispose()
    assert plaintext not in dump and plaintext[3:] not in dump
    assert stored == hash_key(server_secret(settings), plaintext) and stored in dump
    # Not in the logs either (the request log included).
    assert plaintext not in caplog.text and settings.admin_key not in caplog.text


def test_keys_with_expiry_and_projects(client):
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = client.post("/keys", json={"name": "temp", "scopes": ["predict"], "expires_at": soon, "project": "team-b"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["project"] == "team-b" and out["scopes"] == ["predict"] and out["expires_at"]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = client.post("/keys", json={"name": "old", "scopes": ["read"], "expires_at": past})
    assert r.status_code == 422 and "future" in r.json()["error"]["message"]
    r = client.post("/keys", json={"name": "x", "scopes": ["root"]})
    assert r.status_code == 422
    r = client.post("/keys", json={"name": "x", "scopes": ["read"], "project": "Not A Project!"})
    assert r.status_code == 422
    listed = client.get("/keys", params={"project": "team-b"}).json()
    assert [k["name"] for k in listed["items"]] == ["temp"]
    assert client.get("/keys", headers=bearer(out["key"])).status_code == 403


def test_audit_log_records_changes_with_the_key(client, dataset_id):
    trainer = make_key(client, ["train"], name="trainer")
    body = {"dataset_id": dataset_id, "arch": "resnet18", "weights": "none"}
    r = client.post("/jobs", json=body, headers=bearer(trainer["key"]))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel", headers=bearer(trainer["key"])).status_code == 200
    events = client.get("/audit", params={"limit": 500}).json()["items"]
    by_action = {(e["action"], e["object_id"]): e for e in events}
    submitted = by_action[("job.submit", job_id)]
    assert (
        submitted["key_id"] == trainer["id"] and submitted["actor"] == "trainer" and submitted["project"] == "default"
    )
    assert ("job.cancel", job_id) in by_action
    assert ("dataset.upload", dataset_id) in by_action
    assert ("key.create", trainer["id"]) in by_action
    page = client.get("/audit", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == len(events) and len(page["items"]) == 1
    assert client.get("/audit", params={"action": "job.cancel"}).json()["items"][0]["object_id"] == job_id


def test_keys_cli_works_with_the_api_down(tmp_path):
    env = {
        "VISIONTUNE_DATA_DIR": str(tmp_path / "d"),
        "PATH": "/usr/bin:/bin",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "launcher.cli", "keys", *args], cwd=REPO, env=env, capture_output=True, text=True
        )

    made = cli("create", "--name", "ops", "--scope", "train", "--scope", "read", "--project", "ops", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["key"].startswith("vt_") and key["scopes"] == ["read", "train"] and key["project"] == "ops"
    listed = cli("list")
    assert listed.returncode == 0 and key["id"] in listed.stdout and key["key"] not in listed.stdout
    assert "active" in listed.stdout
    revoked = cli("revoke", key["prefix"])
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "revoked" in cli("list").stdout
    assert cli("revoke", "vt_nothing").returncode == 2
    fresh = cli("new")
    assert fresh.returncode == 0 and fresh.stdout.strip().startswith("vt_")
    engine = make_engine(f"sqlite:///{tmp_path / 'd' / 'visiontune.db'}")
    with session_scope(make_sessionmaker(engine)) as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    engine.dispose()
    assert actions == ["key.create", "key.revoke"]
    assert (tmp_path / "d" / "secret_key").stat().st_mode & 0o077 == 0


def test_auth_off_only_on_loopback(tmp_path):
    from app.config import Settings
    from app.main import create_app

    with pytest.raises(SystemExit, match="loopback"):
        create_app(Settings(data_dir=tmp_path, auth="off", host="0.0.0.0"))
    create_app(Settings(data_dir=tmp_path, auth="off", host="127.0.0.1"))
    create_app(Settings(data_dir=tmp_path, auth="off", host="::1"))


def test_the_last_admin_key_cannot_be_revoked_over_the_api(tmp_path):
    from app.config import Settings
    from app.main import create_app
    from app.migrate import upgrade

    settings = Settings(data_dir=tmp_path / "d", database_url=f"sqlite:///{tmp_path / 'k.db'}", admin_key=new_key())
    upgrade(settings.resolved_database_url())
    with TestClient(create_app(settings, enqueue=lambda _id: None), headers=bearer(settings.admin_key)) as c:
        mine = c.get("/keys").json()["items"][0]
        r = c.delete(f"/keys/{mine['id']}")
        assert r.status_code == 409 and "last live admin key" in r.json()["error"]["message"]
        other = make_key(c, ["admin"], name="second admin")
        assert c.delete(f"/keys/{mine['id']}").json()["revoked_at"] is not None
        assert c.get("/keys").status_code == 401  # the revoked key no longer works
        assert c.get("/keys", headers=bearer(other["key"])).status_code == 200
