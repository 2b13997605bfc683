"""The Alembic migration builds exactly the schema the models declare, up and down, on both databases."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import make_engine
from app.migrate import downgrade, upgrade
from app.models import Base
from tests.factories import REPO


def test_migration_matches_models(database_url):
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_downgrade_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    downgrade(url, "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade(url)
    assert {"datasets", "jobs", "epochs", "checkpoints", "registered_models", "model_versions"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


def test_alembic_command_line_uses_the_configured_database(tmp_path):
    env = {"VISIONTUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    engine = make_engine(env["VISIONTUNE_DATABASE_URL"])
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()
