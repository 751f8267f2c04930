"""One database fixture for both ledger backends (issue #7: the PostgreSQL path
passes the same ledger and budget tests as SQLite).

``db_url`` is parametrized: a fresh SQLite file always, and a private PostgreSQL
schema (created for the test, dropped after it) when ``SWITCHMAN_TEST_PG_URL`` is
set (``scripts/postgres.sh`` or ``.ci/run`` start a server and write it to
.pg.env); otherwise the PostgreSQL variant is skipped with the reason. A test
that needs PostgreSQL alone takes ``pg_url``; ``backend_daemon`` is a running
daemon on each backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.running import RunningDaemon

PG_URL = os.environ.get("SWITCHMAN_TEST_PG_URL", "")
PG_SKIP = "SWITCHMAN_TEST_PG_URL is unset (run scripts/postgres.sh, or .ci/run)"
BACKENDS = ("sqlite", "postgresql")


@contextmanager
def pg_schema(base_url: str = PG_URL) -> Iterator[str]:
    """A URL whose connections live in a fresh schema of their own (via the
    connection's search_path), so tests never see each other's rows."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base_url, poolclass=sa.pool.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
        url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={name}"})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
    finally:
        admin.dispose()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'ledger.db'}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not PG_URL:
        pytest.skip(PG_SKIP)
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A ledger URL on each backend, empty and private to the test."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path)
        return
    with pg_schema() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """PostgreSQL only: a private schema, or a skip when no server is configured."""
    if not PG_URL:
        pytest.skip(PG_SKIP)
    with pg_schema() as url:
        yield url


@contextmanager
def daemon_on(
    backend: str, tmp_path: Path, overrides: dict[str, Any] | None = None
) -> Iterator[RunningDaemon]:
    """A real daemon on 127.0.0.1 whose ledger, budgets and team keys live on
    ``backend``: its data dir's SQLite file, or a private PostgreSQL schema."""
    with ExitStack() as stack:
        ov = dict(overrides or {})
        if backend == "postgresql":
            ov["ledger"] = {"url": stack.enter_context(pg_schema())}
        d = RunningDaemon(tmp_path, overrides=ov)
        try:
            yield d
        finally:
            d.stop()


@pytest.fixture
def backend_daemon(backend: str, tmp_path: Path) -> Iterator[RunningDaemon]:
    """Like the ``daemon`` fixture, on each backend."""
    with daemon_on(backend, tmp_path) as d:
        yield d
