"""tests/servers.py: the configured PostgreSQL and Redis when they answer, throwaway ones when they do not."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from tests import servers
from tests.processes import REPO, free_port


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_session_servers_answer():
    pg, redis = servers.postgres_url(), servers.redis_url()
    assert servers.probe_postgres(pg) is None and servers.probe_redis(redis) is None
    assert os.environ[servers.PG_ENV] == pg and os.environ[servers.REDIS_ENV] == redis  # seen by subprocesses


def test_probes_say_what_is_wrong():
    port = free_port()
    assert "refused" in servers.probe_postgres(f"postgresql://postgres@127.0.0.1:{port}/test").lower()
    assert "refused" in servers.probe_redis(f"redis://127.0.0.1:{port}").lower()
    # Something listens, but it is not PostgreSQL.
    host, redis_port = servers._host_port(servers.redis_url(), 6379)
    assert servers.probe_postgres(f"postgresql://postgres@{host}:{redis_port}/test") is not None


@pytest.mark.timeout(120)
def test_a_session_without_servers_starts_and_stops_throwaway_ones():
    pg_port, redis_port = free_port(), free_port()
    env = {
        **os.environ,
        servers.PG_ENV: f"postgresql://postgres@127.0.0.1:{pg_port}/test",
        servers.REDIS_ENV: f"redis://127.0.0.1:{redis_port}",
    }
    tests = ["tests/test_servers.py::test_the_session_servers_answer", "tests/test_migrations.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *tests, "-v", "-p", "no:cacheprovider", "-k", "not command_line"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    pg = re.search(rf"^postgresql: throwaway \(.+\) on 127\.0\.0\.1:(\d+) \(127\.0\.0\.1:{pg_port}: ", out, re.M)
    rd = re.search(rf"^redis: throwaway \(.+\) on 127\.0\.0\.1:(\d+) \(127\.0\.0\.1:{redis_port}: ", out, re.M)
    assert pg and rd, out[:3000]
    assert re.search(r"test_migration_matches_models\[postgresql\] PASSED", out), out[-3000:]
    assert not port_open(int(pg[1])) and not port_open(int(rd[1]))  # stopped with the session
