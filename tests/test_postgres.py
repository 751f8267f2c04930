"""Scale-out on PostgreSQL (issue #7 item 6): the ledger, migrations, shared
budgets and team keys with several daemons on one database.

Needs a server: ``SWITCHMAN_TEST_PG_URL`` (``.ci/run`` starts one with
scripts/postgres.sh and ``make test`` reads the URL from .pg.env). Each test gets
its own PostgreSQL schema, dropped afterwards. The SQLite half of the migration
test always runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
import sqlalchemy as sa

from switchman_daemon import jobs
from switchman_daemon.budgets import BudgetExceeded, Budgets
from switchman_daemon.ledger import Ledger, RequestClose
from switchman_daemon.ledger import schema as ledger_schema
from tests import test_ledger
from tests.support.running import RunningDaemon

PG_URL = os.environ.get("SWITCHMAN_TEST_PG_URL", "")
needs_pg = pytest.mark.skipif(
    not PG_URL,
    reason="SWITCHMAN_TEST_PG_URL is unset (run scripts/postgres.sh, or .ci/run)",
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections live in a fresh, private schema."""
    if not PG_URL:
        pytest.skip("SWITCHMAN_TEST_PG_URL is unset (run scripts/postgres.sh, or .ci/run)")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {name}"))
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    led = Ledger(pg_url)
    led.start()
    yield led
    led.stop()


# The SQLite ledger tests that are not about SQLite itself, run against PostgreSQL
# (the `ledger` fixture above replaces test_ledger's).
test_pg_totals = test_ledger.test_totals
test_pg_rows_since_limit_order = test_ledger.test_rows_since_limit_order
test_pg_export_jsonl_round_trip = test_ledger.test_export_jsonl_round_trip
test_pg_orphan_close_is_recorded = test_ledger.test_orphan_close_is_recorded


def test_pg_round_trip_batches_and_threads(ledger: Ledger) -> None:
    assert ledger.engine.dialect.name == "postgresql"
    now = time.time()
    ledger.open(test_ledger._open("a", now, decision={"x": 1}, stream=True))
    ledger.close(RequestClose(id="a", ended_at=now + 1, status="ok", cost_usd=0.25,
                              input_tokens=7, http_status=200))  # same batch: one INSERT

    def worker(k: int) -> None:
        for i in range(50):
            rid = f"t{k}-{i}"
            ledger.open(test_ledger._open(rid, now + i))
            ledger.close(RequestClose(id=rid, ended_at=now + i + 1, status="ok",
                                      cost_usd=0.001, output_tokens=1))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.flush()
    rows = {r["id"]: r for r in ledger.rows()}
    assert len(rows) == 401 and ledger.write_errors == 0
    a = rows["a"]
    assert (a["status"], a["stream"], a["input_tokens"], a["owner"]) == ("ok", True, 7, "local")
    assert json.loads(a["decision"]) == {"x": 1}
    tot = ledger.totals()
    assert tot["requests"] == 401 and tot["cost_usd"] == pytest.approx(0.25 + 0.4)


def test_pg_recover_touches_only_own_rows(pg_url: str) -> None:
    a, b = Ledger(pg_url, owner="da"), Ledger(pg_url, owner="db")
    for led, rid in ((a, "a-open"), (b, "b-open")):
        led.start()
        led.open(test_ledger._open(rid, time.time() - 5))
        led.flush()
    a.stop()  # "crash" of daemon a; daemon b keeps serving b-open
    again = Ledger(pg_url, owner="da")
    assert again.recover_interrupted() == 1
    rows = {r["id"]: r["status"] for r in again.rows()}
    assert rows == {"a-open": "interrupted", "b-open": "open"}
    again.stop()
    b.stop()


def _v1_database(url: str) -> None:
    """What a v1 release left: requests without ``owner``, schema_version 1."""
    md = sa.MetaData()
    cols = [c._copy() for c in ledger_schema.requests.columns if c.name != "owner"]
    sa.Table("requests", md, *cols)
    sa.Table("meta", md, *(c._copy() for c in ledger_schema.meta.columns))
    eng = ledger_schema.make_engine(url)
    md.create_all(eng)
    with eng.begin() as conn:
        conn.execute(sa.text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(sa.text(
            "INSERT INTO requests (id, started_at, client, client_format, requested_model,"
            " stream, status, input_tokens, cache_read_tokens, cache_write_tokens,"
            " cache_write_1h_tokens, output_tokens, cost_usd, attempts) VALUES"
            " ('old', 1.0, 'c', 'anthropic', 'm', false, 'open', 0, 0, 0, 0, 0, 0, 1)"))
    eng.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_v1_to_v2(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'ledger.db'}" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    _v1_database(url)
    led = Ledger(url, owner="me")  # opening migrates
    with led.engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT value FROM meta WHERE key='schema_version'")).scalar_one() == "2"
    assert "owner" in {c["name"] for c in sa.inspect(led.engine).get_columns("requests")}
    assert "ix_requests_owner" in {i["name"] for i in sa.inspect(led.engine).get_indexes(
        "requests")}
    # a pre-v2 row has no owner: the (single) daemon that upgraded recovers it
    assert led.recover_interrupted() == 1
    led.start()
    led.open(test_ledger._open("new", time.time()))
    led.flush()
    assert {r["id"]: r["owner"] for r in led.rows()} == {"old": None, "new": "me"}
    led.stop()
    assert Ledger(url).engine.dispose() is None  # a second open does not migrate again


@needs_pg
def test_shared_budget_reserve_is_atomic_across_instances(pg_url: str) -> None:
    """Two Budgets (two daemons) on one database, 8 threads each, against one hard
    limit: the holds in the database admit exactly floor(limit / estimate)."""
    led = Ledger(pg_url)
    one = Budgets(led.engine, owner="d1")
    two = Budgets(led.engine, owner="d2")
    one.set("global", "total", hard_usd=1.0)
    two.reload()
    admitted: list[int] = []

    def worker(b: Budgets) -> None:
        for _ in range(10):
            try:
                r = b.reserve(None, None, 0.03)
            except BudgetExceeded:
                continue
            admitted.append(1)
            b.settle(r, 0.03)

    threads = [threading.Thread(target=worker, args=(b,)) for b in (one, two) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 33  # 33 * 0.03 = 0.99 <= 1.0 < 34 * 0.03
    for b in (one, two):
        (row,) = b.status()
        assert row["spent_usd"] == pytest.approx(0.99) and row["reserved_usd"] == 0
    led.stop()


@pytest.fixture
def pair(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[tuple[RunningDaemon, RunningDaemon]]:
    """Two daemons (own data dir, loop, engine and instance id) on one database."""
    monkeypatch.setitem(jobs.DEFAULT_INTERVALS, "shared_reload", 1.0)
    ov = {"ledger": {"url": pg_url}, "daemon": {"local_open": False}}
    a = RunningDaemon(tmp_path / "a", overrides=ov)
    try:
        b = RunningDaemon(tmp_path / "b", overrides=ov)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()


@needs_pg
def test_two_daemons_one_budget_keys_and_spend(pair: tuple[RunningDaemon, RunningDaemon]
                                               ) -> None:
    a, b = pair
    assert a.ctx.ledger.owner != b.ctx.ledger.owner
    info, key = a.ctx.teamkeys.issue("load", "ci")
    limit = 0.05
    a.ctx.budgets.set("global", "daily", hard_usd=limit)
    deadline = time.monotonic() + 5
    while b.ctx.teamkeys.verify(key) is None or not b.ctx.budgets.list():
        assert time.monotonic() < deadline, "daemon b never saw the key and budget"
        time.sleep(0.1)

    body = json.dumps({"model": "sim-claude-strong", "max_tokens": 200, "messages": [
        {"role": "user", "content": "write a long answer " * 200}]}).encode()
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01",
               "x-api-key": key}

    async def fire() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one(url: str) -> int:
                async with s.post(url + "/v1/messages", data=body, headers=headers) as r:
                    await r.read()
                    return r.status
            return await asyncio.gather(*(one(d.url) for _ in range(60) for d in (a, b)))

    statuses = asyncio.run(fire())
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    a.ledger_rows()
    rows = b.ledger_rows()  # the same shared table, whichever daemon reads it
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["owner"] for r in ok} == {a.ctx.ledger.owner, b.ctx.ledger.owner}
    spent = sum(r["cost_usd"] for r in ok)
    assert spent <= limit + max(r["cost_usd"] for r in ok)
    # the console/CLI of either daemon sees the same spend
    assert a.ctx.ledger.totals() == b.ctx.ledger.totals()
    sa_, sb = a.ctx.budgets.status(), b.ctx.budgets.status()
    assert sa_[0]["spent_usd"] == pytest.approx(spent) == sb[0]["spent_usd"]
    assert sa_[0]["reserved_usd"] == 0 == sb[0]["reserved_usd"]

    # a key revoked through daemon a is refused by daemon b within the reload interval
    assert a.ctx.teamkeys.revoke(info.id)
    client = openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 3  # interval 1 s here (5 s by default)
    while True:
        try:
            client.chat.completions.create(model="sim-gpt-cheap",
                                           messages=[{"role": "user", "content": "x"}])
        except openai.AuthenticationError:
            break
        except openai.RateLimitError:  # budget exhausted: still authenticated
            pass
        assert time.monotonic() < deadline, "daemon b still accepts a revoked key"
        time.sleep(0.2)
