"""Scale-out on PostgreSQL (issue #7 item 6): shared budgets and team keys with
several daemons on one database, and reservations that wait for row locks off the
event loop.

Needs a server: ``SWITCHMAN_TEST_PG_URL`` (``.ci/run`` starts one with
scripts/postgres.sh and ``make test`` reads the URL from .pg.env). Each test gets
its own PostgreSQL schema, dropped afterwards (``pg_url``, tests/support/
backends.py). The ledger and budget suites (tests/test_ledger.py,
tests/test_budgets.py) run on PostgreSQL as well as SQLite; this file holds what
only a shared database has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import aiohttp
import openai
import pytest
import sqlalchemy as sa

from switchman_daemon import jobs
from switchman_daemon.budgets import BudgetExceeded, Budgets, Reservation
from switchman_daemon.ledger import Ledger, RequestClose
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.proxy.gate import BudgetAddon
from switchman_daemon.store_tables import budget_counters, budget_holds
from tests import test_ledger
from tests.support.running import RunningDaemon


@pytest.fixture
def ledger(pg_url: str) -> Iterator[Ledger]:
    led = Ledger(pg_url)
    led.start()
    yield led
    led.stop()


def test_pg_round_trip_batches_and_threads(ledger: Ledger) -> None:
    assert ledger.engine.dialect.name == "postgresql"
    now = time.time()
    ledger.open(test_ledger._open("a", now, decision={"x": 1}, stream=True))
    ledger.close(
        RequestClose(
            id="a", ended_at=now + 1, status="ok", cost_usd=0.25, input_tokens=7, http_status=200
        )
    )  # same batch: one INSERT

    def worker(k: int) -> None:
        for i in range(50):
            rid = f"t{k}-{i}"
            ledger.open(test_ledger._open(rid, now + i))
            ledger.close(
                RequestClose(
                    id=rid, ended_at=now + i + 1, status="ok", cost_usd=0.001, output_tokens=1
                )
            )

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


async def test_async_reservations_from_two_daemons_admit_exactly_the_limit(pg_url: str) -> None:
    """The proxy's path (``areserve``, worker threads) keeps the same promise."""
    led = Ledger(pg_url)
    one, two = Budgets(led.engine, owner="d1"), Budgets(led.engine, owner="d2")
    one.set("global", "total", hard_usd=1.0)
    two.reload()
    held: list[tuple[Budgets, Reservation]] = []

    async def attempt(b: Budgets) -> None:
        with contextlib.suppress(BudgetExceeded):
            held.append((b, await b.areserve(None, None, 0.03)))

    await asyncio.gather(*(attempt(b) for _ in range(25) for b in (one, two)))
    assert len(held) == 33  # all 50 in flight at once: 33 * 0.03 <= 1.0 < 34 * 0.03
    assert {b.owner for b, _ in held} == {"d1", "d2"}
    (row,) = one.status()
    assert row["reserved_usd"] == pytest.approx(0.99) and row["spent_usd"] == 0
    for b, r in held:
        b.settle(r, 0.03)
    (row,) = two.status()
    assert row["spent_usd"] == pytest.approx(0.99) and row["reserved_usd"] == pytest.approx(0)
    led.stop()


class _RowLock:
    """Another daemon's transaction holding the budget counter rows (FOR UPDATE).
    A timer releases them after ``valve_s`` in any case: if a reservation blocked
    the event loop, the test itself could never release them."""

    def __init__(self, engine: sa.Engine, valve_s: float = 15.0) -> None:
        self.conn = engine.connect()
        self.tx = self.conn.begin()
        self.pid = self.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        self.conn.execute(sa.select(budget_counters).with_for_update())
        self._once = threading.Lock()
        self._valve = threading.Timer(valve_s, self.release)
        self._valve.start()

    def release(self) -> None:
        if self._once.acquire(blocking=False):
            self._valve.cancel()
            self.tx.rollback()
            self.conn.close()

    async def wait_for_waiter(self, engine: sa.Engine, timeout_s: float = 5.0) -> None:
        """Poll, from the event loop, until some backend waits on our lock."""
        stmt = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
        )
        deadline = time.monotonic() + timeout_s
        while True:
            with engine.connect() as conn:
                if conn.execute(stmt, {"pid": self.pid}).scalar_one():
                    return
            assert time.monotonic() < deadline, "no reservation is waiting on the row lock"
            await asyncio.sleep(0.01)


async def test_a_reservation_waits_for_a_row_lock_off_the_event_loop(pg_url: str) -> None:
    led = Ledger(pg_url)
    b = Budgets(led.engine, owner="d1")
    b.set("global", "total", hard_usd=1.0)
    b.settle(b.reserve(None, None, 0.1), 0.1)  # the counter row exists
    lock = _RowLock(led.engine)
    try:
        task = asyncio.create_task(b.areserve(None, None, 0.2))
        # this coroutine keeps running while the reservation waits in PostgreSQL
        await lock.wait_for_waiter(led.engine)
        assert not task.done()
    finally:
        lock.release()
    r = await task
    (row,) = b.status()
    assert row["reserved_usd"] == pytest.approx(0.2) and row["spent_usd"] == pytest.approx(0.1)
    b.settle(r, 0.2)
    led.stop()


async def test_a_settle_waits_for_a_row_lock_off_the_event_loop(pg_url: str) -> None:
    """The proxy's close hook (``BudgetAddon.flow_closed``) queues the settling
    transaction on the budget threads: a row lock held by another daemon must not
    stall the event loop, and ``drain`` waits for the settle to land."""
    led = Ledger(pg_url)
    b = Budgets(led.engine, owner="d1")
    b.set("global", "total", hard_usd=1.0)
    b.settle(b.reserve(None, None, 0.1), 0.1)  # the counter row exists
    r = await b.areserve(None, None, 0.2)
    flow = cast(Flow, SimpleNamespace(notes={"reservation": r}, cost_usd=0.15))
    lock = _RowLock(led.engine)
    try:
        BudgetAddon(b).flow_closed(flow)  # returns at once: the transaction is queued
        # this coroutine keeps running while the settle waits in PostgreSQL
        await lock.wait_for_waiter(led.engine)
        assert not b.drain(0)
    finally:
        lock.release()
    assert await asyncio.to_thread(b.drain, 10)
    (row,) = await asyncio.to_thread(b.status)
    assert row["spent_usd"] == pytest.approx(0.25) and row["reserved_usd"] == pytest.approx(0)
    BudgetAddon(b).flow_closed(flow)  # idempotent: nothing queued twice
    assert b.drain(0)
    assert b.close()
    led.stop()


async def test_a_cancelled_reservation_is_released_once_it_lands(pg_url: str) -> None:
    """A client that disconnects while its reservation waits on a lock: the
    transaction still commits on the worker thread, and must then be undone."""
    led = Ledger(pg_url)
    booked = threading.Event()
    b = Budgets(led.engine, owner="d1", journal=lambda rid, usd: booked.set())
    b.set("global", "total", hard_usd=1.0)
    b.settle(b.reserve(None, None, 0.1), 0.1)
    lock = _RowLock(led.engine)
    try:
        task = asyncio.create_task(b.areserve(None, None, 0.5, request_id="gone"))
        await lock.wait_for_waiter(led.engine)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        lock.release()
    deadline = time.monotonic() + 10
    while True:  # the worker books the hold, then the release settles it with 0
        landed = booked.is_set()  # before reading: the hold may commit in between
        (row,) = b.status()
        if landed and row["reserved_usd"] == 0:
            break
        assert time.monotonic() < deadline, f"abandoned reservation still held: {row}"
        await asyncio.sleep(0.02)
    assert row["spent_usd"] == pytest.approx(0.1)
    b.reserve(None, None, 0.9)  # all the room is back
    led.stop()


def test_a_restarted_daemon_turns_only_its_own_holds_into_spend(pg_url: str) -> None:
    led = Ledger(pg_url)
    one, two = Budgets(led.engine, owner="d1"), Budgets(led.engine, owner="d2")
    one.set("global", "total", hard_usd=1.0)
    two.reload()
    one.reserve(None, None, 0.3)  # in flight when d1 is killed
    live = two.reserve(None, None, 0.2)  # d2 keeps serving this one
    restarted = Budgets(led.engine, owner="d1")
    (row,) = restarted.status()
    assert row["spent_usd"] == pytest.approx(0.3) and row["reserved_usd"] == pytest.approx(0.2)
    with led.engine.connect() as conn:
        owners = {o for (o,) in conn.execute(sa.select(budget_holds.c.owner))}
    assert owners == {"d2"}
    two.settle(live, 0.1)
    (row,) = one.status()
    assert row["spent_usd"] == pytest.approx(0.4) and row["reserved_usd"] == 0
    led.stop()


@pytest.fixture
def pair(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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


def test_two_daemons_one_budget_keys_and_spend(pair: tuple[RunningDaemon, RunningDaemon]) -> None:
    a, b = pair
    assert a.ctx.ledger.owner != b.ctx.ledger.owner
    info, key = a.ctx.teamkeys.issue("load", "ci")
    limit = 0.05
    a.ctx.budgets.set("global", "daily", hard_usd=limit)
    deadline = time.monotonic() + 5
    while b.ctx.teamkeys.verify(key) is None or not b.ctx.budgets.list():
        assert time.monotonic() < deadline, "daemon b never saw the key and budget"
        time.sleep(0.1)

    body = json.dumps(
        {
            "model": "sim-claude-strong",
            "max_tokens": 200,
            "messages": [{"role": "user", "content": "write a long answer " * 200}],
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": key,
    }

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
            client.chat.completions.create(
                model="sim-gpt-cheap", messages=[{"role": "user", "content": "x"}]
            )
        except openai.AuthenticationError:
            break
        except openai.RateLimitError:  # budget exhausted: still authenticated
            pass
        assert time.monotonic() < deadline, "daemon b still accepts a revoked key"
        time.sleep(0.2)
