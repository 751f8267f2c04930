"""Upgrades keep data: a ledger written by an older release (the current schema,
standing in for the one before a future release) is migrated forward when the new
daemon starts, exactly once, rows intact."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from switchman_daemon import paths
from switchman_daemon.ledger import schema
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon


def test_ledger_migrates_forward_once_on_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               mem_keyring: MemoryKeyring) -> None:
    data = tmp_path / "data"
    data.mkdir()
    url = paths.ledger_url(data)
    old = schema.make_engine(url)  # what the v1 release left behind
    current = schema.SCHEMA_VERSION
    assert schema.ensure_schema(old) == current
    with old.begin() as conn:
        conn.execute(sa.insert(schema.requests).values(
            id="r-v1", started_at=1.0, ended_at=2.0, client="old", client_format="anthropic",
            requested_model="m", status="ok"))
    old.dispose()

    ran: list[int] = []

    def to_next(conn: Connection) -> None:
        ran.append(1)
        conn.execute(sa.text("ALTER TABLE requests ADD COLUMN v2_note TEXT"))

    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(schema.MIGRATIONS, current, to_next)

    for _ in range(2):  # the upgrade's first start migrates; the next one does not
        d = RunningDaemon(tmp_path)
        try:
            assert d.daemon.data_dir == data
        finally:
            d.stop()
    assert ran == [1]

    eng = sa.create_engine(url)
    try:
        with eng.connect() as conn:
            stored = conn.execute(sa.text(
                "SELECT value FROM meta WHERE key='schema_version'")).scalar_one()
            assert stored == str(current + 1)
            row = conn.execute(sa.text(
                "SELECT client, status, v2_note FROM requests WHERE id='r-v1'")).one()
    finally:
        eng.dispose()
    assert tuple(row) == ("old", "ok", None)
