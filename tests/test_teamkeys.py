from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from switchman_daemon.ledger.schema import make_engine
from switchman_daemon.store_tables import team_keys
from switchman_daemon.teamkeys import TeamKeys, key_from_headers


class Clock:
    def __init__(self, t: float = 1_780_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_issue_verify_and_storage_is_hashed(url: str) -> None:
    eng = make_engine(url)
    keys = TeamKeys(eng)
    info, plain = keys.issue("ci bot", "ana", pools=["cheap"])
    assert re.fullmatch(r"sk-sw-[0-9A-Za-z]{40}", plain)
    assert info.prefix == plain[:12] and info.pools == ("cheap",)
    assert keys.verify(plain) == info
    assert keys.verify(plain[:-1] + ("a" if plain[-1] != "a" else "b")) is None
    assert keys.verify("sk-ant-whatever") is None
    assert keys.verify("") is None
    assert info.allows("cheap") and not info.allows("frontier")

    with eng.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(team_keys)).mappings()]
    assert len(rows) == 1
    # The plaintext is nowhere in the table; only its display prefix is.
    assert all(plain not in str(v) for v in rows[0].values())
    assert rows[0]["prefix"] == plain[:12]
    eng.dispose()


def test_keys_survive_restart_and_pepper_matters(url: str) -> None:
    eng = make_engine(url)
    info, plain = TeamKeys(eng).issue("dev", "bo")
    eng.dispose()

    eng2 = make_engine(url)
    again = TeamKeys(eng2)
    assert again.verify(plain) is not None and again.verify(plain).id == info.id
    # Same table, different pepper: the stored hashes no longer match.
    assert TeamKeys(eng2, pepper=b"x" * 32).verify(plain) is None
    eng2.dispose()


def test_revoke_is_immediate(url: str) -> None:
    eng = make_engine(url)
    keys = TeamKeys(eng)
    info, plain = keys.issue("agent", "cy")
    other, plain2 = keys.issue("agent 2", "cy")
    assert keys.verify(plain) is not None
    assert keys.revoke(info.id) is True
    assert keys.verify(plain) is None
    assert keys.verify(plain2) is not None
    assert keys.revoke(info.id) is False
    assert keys.revoke("tk_nope") is False
    listed = {k.id: k for k in keys.list()}
    assert listed[info.id].revoked_at is not None and listed[other.id].revoked_at is None
    assert [k.id for k in keys.list(include_revoked=False)] == [other.id]
    # And after a restart too.
    assert TeamKeys(eng).verify(plain) is None
    eng.dispose()


def test_expiry_uses_the_clock(url: str) -> None:
    clock = Clock()
    eng = make_engine(url)
    keys = TeamKeys(eng, clock=clock)
    _, plain = keys.issue("temp", "dee", expires_at=clock.t + 60)
    assert keys.verify(plain) is not None
    clock.t += 61
    assert keys.verify(plain) is None
    with pytest.raises(ValueError):
        keys.issue("late", "dee", expires_at=clock.t - 1)
    with pytest.raises(ValueError):
        keys.issue("  ", "dee")
    eng.dispose()


def test_touch_is_batched(url: str) -> None:
    clock = Clock()
    eng = make_engine(url)
    keys = TeamKeys(eng, clock=clock)
    info, _ = keys.issue("busy", "ed")
    for _ in range(1000):
        clock.t += 1
        keys.touch(info.id)

    def stored() -> float | None:
        with eng.connect() as conn:
            return conn.execute(
                sa.select(team_keys.c.last_used_at).where(team_keys.c.id == info.id)
            ).scalar_one()

    assert stored() is None  # no write per request
    assert keys.list()[0].last_used_at == clock.t  # but reads see it
    assert keys.flush_touches() == 1
    assert stored() == clock.t
    assert keys.flush_touches() == 0
    assert keys.get(info.id) is not None and keys.get(info.id).last_used_at == clock.t
    eng.dispose()


def test_reload_sees_another_daemons_changes(url: str) -> None:
    eng = make_engine(url)
    a, b = TeamKeys(eng), TeamKeys(eng)
    info, plain = a.issue("shared", "fi")
    assert b.verify(plain) is None
    b.reload()
    assert b.verify(plain) is not None
    a.revoke(info.id)
    b.reload()
    assert b.verify(plain) is None
    eng.dispose()


def test_key_from_headers() -> None:
    assert key_from_headers({"x-api-key": "sk-sw-abc"}) == "sk-sw-abc"
    assert key_from_headers({"authorization": "Bearer sk-sw-abc"}) == "sk-sw-abc"
    assert key_from_headers({"authorization": "Bearer sk-ant-abc"}) is None
    assert key_from_headers({}) is None
