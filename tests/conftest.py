"""Fixtures on real servers: a fresh PostgreSQL database per test session, SQLite files, the local Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.auth import new_key
from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.migrate import upgrade
from tests import servers
from tests.factories import color_images_zip

# The configured servers (VISIONTUNE_TEST_PG_URL / VISIONTUNE_TEST_REDIS_URL, default the local ones) when they
# answer, else throwaway ones started here for the session; exported to os.environ for subprocesses too.
PG_ADMIN_URL = servers.postgres_url()
REDIS_URL = servers.redis_url()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return servers.header_lines()


def pytest_unconfigure(config: pytest.Config) -> None:
    servers.stop_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


@contextmanager
def _new_pg_database() -> Iterator[str]:
    """A new PostgreSQL database on the local server, migrated to head, dropped afterwards."""
    name = f"visiontune_test_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    upgrade(url)
    try:
        yield url
    finally:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The session's PostgreSQL database, shared by the tests that use it."""
    with _new_pg_database() as url:
        yield url


@pytest.fixture
def own_pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test alone: the shared one holds other tests' unfinished jobs, which the
    reaper of a real `visiontune worker` re-sends to its worker (right in production, noise in a test that
    counts what its worker trained)."""
    with _new_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on a migrated SQLite file and on the PostgreSQL test database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'visiontune.db'}"
        upgrade(url)
        return url
    return request.getfixturevalue("pg_database")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url=f"{REDIS_URL}/0",
        queue=f"test-{uuid.uuid4().hex[:8]}",
        dataset_root=tmp_path / "server-datasets",
        lease_seconds=30,
        admin_key=new_key(),
        rate_limit_write="100000/minute",
        max_active_jobs=100_000,  # PostgreSQL's database (and its default project) is shared by the session
        rate_limit_predict="100000/minute",
        # The in-process apps of these tests run the forward on a thread: a model host per app would spawn a child
        # (seconds of importing torch) for every test that predicts. The host itself is tested in
        # tests/serving/test_model_host.py, and every test that starts a real `visiontune api` runs with it.
        predict_isolation="thread",
    )


class Enqueued(list[uuid.UUID]):
    """Records job ids the API enqueued (tests run the runner themselves)."""


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's database (SQLite file or the session's PostgreSQL database)."""
    engine = make_engine(settings.resolved_database_url())
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def enqueued() -> Enqueued:
    return Enqueued()


@pytest.fixture
def client(settings: Settings, enqueued: Enqueued) -> Iterator[TestClient]:
    """A TestClient that sends the settings' admin key (project default) on every request."""
    app = create_app(settings, enqueue=enqueued.append)
    headers = {"Authorization": f"Bearer {settings.admin_key}"}
    with TestClient(app, raise_server_exceptions=False, headers=headers) as c:
        yield c


@pytest.fixture
def dataset_id(client: TestClient, tmp_path: Path) -> str:
    """A three-colour image dataset (12 images per class, 16 px) uploaded through the API."""
    path = color_images_zip(tmp_path / "rgb.zip", {"red": 12, "green": 12, "blue": 12}, size=16)
    r = client.post("/datasets", files={"file": ("rgb.zip", path.read_bytes())})
    assert r.status_code == 201, r.text
    return r.json()["id"]
