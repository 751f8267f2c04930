"""Budgets on both backends (tests/support/backends.py): in memory over SQLite,
shared in the database over PostgreSQL. Reserve-then-settle, hard limits under
concurrency, local-midnight periods, spend reloaded from the ledger (crashes
included) and pruning of past counters."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from switchman_daemon.budgets import BudgetExceeded, Budgets, estimate_usd, period_bounds
from switchman_daemon.jobs import JobRunner
from switchman_daemon.ledger import Ledger, RequestClose, RequestOpen
from switchman_daemon.ledger.schema import requests
from switchman_daemon.models import Prices
from switchman_daemon.store_tables import budget_counters, budget_holds

NY = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
UTC = ZoneInfo("UTC")


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, tz: ZoneInfo = NY) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=tz).timestamp()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The ledger's engine on each backend. On PostgreSQL, Budgets run in shared mode
    (counters and holds in the database, as with several daemons)."""
    ledger = Ledger(db_url)  # creates the requests table
    yield ledger.engine
    ledger.engine.dispose()


def add_row(
    engine: Engine,
    started_at: float,
    cost: float,
    *,
    key: str | None = None,
    session: str | None = None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(requests).values(
                id=uuid.uuid4().hex,
                started_at=started_at,
                client_format="chat",
                requested_model="m",
                status="ok",
                cost_usd=cost,
                team_key_id=key,
                session_id=session,
            )
        )


def test_period_bounds_local_midnight() -> None:
    now = ts(2026, 3, 8, 15)  # DST starts in New York that morning: a 23-hour day
    start, end = period_bounds("daily", NY, now)
    assert (start, end) == (ts(2026, 3, 8), ts(2026, 3, 9))
    assert end - start == 23 * 3600
    assert period_bounds("weekly", NY, now) == (ts(2026, 3, 2), ts(2026, 3, 9))  # Monday
    assert period_bounds("monthly", TOKYO, ts(2026, 12, 31, 23, tz=TOKYO)) == (
        ts(2026, 12, 1, tz=TOKYO),
        ts(2027, 1, 1, tz=TOKYO),
    )
    assert period_bounds("total", NY, now)[0] == 0.0


def test_reserve_settle_status_and_soft(engine: Engine) -> None:
    clock = Clock(ts(2026, 5, 10, 12))
    b = Budgets(engine, clock=clock)
    g = b.set("global", "daily", soft_usd=0.5, hard_usd=1.0, timezone="America/New_York")
    r = b.reserve("tk1", "s1", 0.3)
    assert r.state == "ok"
    [row] = b.status()
    assert row["id"] == g.id and row["reserved_usd"] == pytest.approx(0.3)
    assert row["spent_usd"] == 0 and row["state"] == "ok"
    assert row["period_start"] == ts(2026, 5, 10) and row["period_end"] == ts(2026, 5, 11)
    b.settle(r, 0.25)
    b.settle(r, 0.25)  # idempotent
    [row] = b.status()
    assert row["spent_usd"] == pytest.approx(0.25) and row["reserved_usd"] == 0
    r2 = b.reserve(None, None, 0.3)
    assert r2.state == "soft" and r2.soft_budgets == (g.id,)
    assert b.check(None, None).state == "soft"
    assert b.check(None, None).headroom_usd == pytest.approx(0.45)
    b.settle(r2, 0.3)
    assert b.status()[0]["state"] == "soft"


def test_hard_limit_message_and_atomicity(engine: Engine) -> None:
    clock = Clock(ts(2026, 5, 10, 12))
    b = Budgets(engine, clock=clock)
    b.set("global", "monthly", hard_usd=100.0)
    b.set("session", "daily", hard_usd=1.0, name="per session", timezone="America/New_York")
    b.settle(b.reserve(None, "s1", 0.9), 0.95)
    with pytest.raises(BudgetExceeded) as ei:
        b.reserve(None, "s1", 0.1)
    e = ei.value
    assert e.scope == "session" and e.limit == 1.0 and e.spent == pytest.approx(0.95)
    msg = str(e)
    assert "hard limit $1.00 per day" in msg and "$0.95 spent" in msg
    assert "resets at 2026-05-11 00:00 (America/New_York)" in msg
    assert e.retry_after_s(clock.t) == pytest.approx(12 * 3600)
    # Nothing was booked on the global budget by the refused request.
    glob = next(r for r in b.status() if r["scope"] == "global")
    assert glob["reserved_usd"] == 0 and glob["spent_usd"] == pytest.approx(0.95)
    # The template applies to each session on its own.
    b.settle(b.reserve(None, "s2", 0.9), 0.9)
    sessions = {r["subject"]: r for r in b.status() if r["scope"] == "session"}
    assert sessions["s1"]["state"] == "ok" and sessions["s1"]["spent_usd"] == pytest.approx(0.95)
    assert set(sessions) == {"s1", "s2"}
    # Requests without a session are not held by a session budget.
    b.settle(b.reserve(None, None, 5.0), 5.0)


LIMIT = 1.0
EST = 0.013  # 76 fit under the limit (76 * 0.013 = 0.988), the 77th does not


@pytest.mark.parametrize("actual_factor", [1.0, 0.6])
async def test_200_concurrent_asyncio_reservations(engine: Engine, actual_factor: float) -> None:
    b = Budgets(engine)
    b.set("team_key", "total", hard_usd=LIMIT, subject="tk1")
    rng = random.Random(7)
    refused: list[BudgetExceeded] = []
    admitted: list[float] = []

    async def one() -> None:
        await asyncio.sleep(rng.random() / 1000)
        try:
            r = await b.areserve("tk1", None, EST)  # the proxy's call
        except BudgetExceeded as e:
            refused.append(e)
            return
        admitted.append(EST)
        await asyncio.sleep(rng.random() / 1000)  # "forwarding"
        b.settle(r, EST * actual_factor)

    for _wave in range(2):  # the second wave starts once the first has settled
        await asyncio.gather(*(one() for _ in range(100)))
    [row] = b.status()
    assert row["reserved_usd"] == pytest.approx(0.0)
    assert row["spent_usd"] <= LIMIT + EST  # the promise
    assert row["spent_usd"] <= LIMIT + 1e-9  # and, with actual <= estimate, no overspend
    if actual_factor == 1.0:
        assert len(admitted) == 76 and len(refused) == 124
    else:  # settled requests free room for later ones (at least the second wave's)
        assert len(admitted) > 76
        assert row["spent_usd"] == pytest.approx(len(admitted) * EST * actual_factor)


def test_200_concurrent_thread_reservations(engine: Engine) -> None:
    b = Budgets(engine)
    b.set("global", "daily", hard_usd=LIMIT)
    b.set("session", "daily", hard_usd=LIMIT * 10)
    start = threading.Barrier(200)
    admitted: list[int] = []
    refused: list[int] = []
    held = threading.Barrier(200)

    def one(i: int) -> None:
        start.wait()
        r = None
        try:
            r = b.reserve("tk1", f"s{i % 7}", EST)
            admitted.append(i)
        except BudgetExceeded:
            refused.append(i)
        held.wait()  # every reservation is in flight before anyone settles
        if r is not None:
            b.settle(r, EST)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(admitted) == 76 and len(refused) == 124
    glob = next(r for r in b.status() if r["scope"] == "global")
    assert glob["spent_usd"] == pytest.approx(76 * EST) and glob["reserved_usd"] == pytest.approx(0)
    sess = sum(r["spent_usd"] for r in b.status() if r["scope"] == "session")
    assert sess == pytest.approx(76 * EST)


def test_spent_is_loaded_from_the_ledger(engine: Engine) -> None:
    now = ts(2026, 5, 10, 12)
    add_row(engine, ts(2026, 5, 10, 1), 2.0, key="tk1", session="a")
    add_row(engine, ts(2026, 5, 10, 2), 3.0, key="tk2", session="a")
    add_row(engine, ts(2026, 5, 9, 23, 59), 7.0, key="tk1", session="b")  # yesterday
    b = Budgets(engine, clock=Clock(now))
    b.set("team_key", "daily", hard_usd=10, subject="tk1", timezone="America/New_York")
    b.set("global", "daily", hard_usd=10, timezone="America/New_York")
    b.set("global", "daily", hard_usd=100, timezone="UTC", name="utc")  # 23:59 NY is May 10 UTC
    b.set("team_key", "monthly", soft_usd=1, hard_usd=10)
    spent = {
        (r["scope"], r["subject"], r["timezone"], r["period"]): r["spent_usd"] for r in b.status()
    }
    assert spent[("team_key", "tk1", "America/New_York", "daily")] == 2.0
    assert spent[("global", None, "America/New_York", "daily")] == 5.0
    assert spent[("global", None, "UTC", "daily")] == 12.0
    assert spent[("team_key", "tk1", "UTC", "monthly")] == 9.0
    assert spent[("team_key", "tk2", "UTC", "monthly")] == 3.0
    # And budgets persist: a new instance (a restart) reloads definitions and spend.
    again = Budgets(engine, clock=Clock(now))
    assert {x.id for x in again.list()} == {x.id for x in b.list()}
    assert sorted(r["spent_usd"] for r in again.status()) == sorted(spent.values())
    with pytest.raises(BudgetExceeded):
        again.reserve("tk1", None, 8.5)


def test_rollover_at_local_midnight(engine: Engine) -> None:
    clock = Clock(ts(2026, 5, 10, 23, 59, 50))
    b = Budgets(engine, clock=clock)
    b.set("global", "daily", hard_usd=1.0, timezone="America/New_York")
    b.settle(b.reserve(None, None, 0.9), 0.9)
    late = b.reserve(None, None, 0.1)  # starts before midnight...
    with pytest.raises(BudgetExceeded):
        b.reserve(None, None, 0.1)
    clock.t = ts(2026, 5, 11, 0, 0, 10)
    [row] = b.status()
    assert row["spent_usd"] == 0 and row["reserved_usd"] == 0
    assert row["period_start"] == ts(2026, 5, 11)
    b.settle(late, 0.1)  # ...so its cost belongs to yesterday, not today
    assert b.status()[0]["spent_usd"] == 0
    r = b.reserve(None, None, 0.9)
    b.settle(r, 0.9)
    assert b.status()[0]["spent_usd"] == pytest.approx(0.9)
    # 04:00 UTC is still May 11 in New York: no reset yet.
    clock.t = ts(2026, 5, 12, 3, 59, 59, tz=ZoneInfo("UTC"))
    assert b.sweep() == 0
    clock.t = ts(2026, 5, 12, 0, 0, 0)
    assert b.sweep() == 1


def test_monthly_rollover_in_tokyo_not_utc(engine: Engine) -> None:
    clock = Clock(ts(2026, 1, 31, 23, 50, tz=TOKYO))
    b = Budgets(engine, clock=clock)
    tokyo = b.set("global", "monthly", hard_usd=50, timezone="Asia/Tokyo")
    utc = b.set("global", "monthly", hard_usd=50, timezone="UTC")
    b.settle(b.reserve(None, None, 10), 10)
    clock.t = ts(2026, 2, 1, 0, 10, tz=TOKYO)  # Feb in Tokyo, still Jan 31 in UTC
    by_id = {r["id"]: r for r in b.status()}
    assert by_id[tokyo.id]["spent_usd"] == 0
    assert by_id[tokyo.id]["period_start"] == ts(2026, 2, 1, tz=TOKYO)
    assert by_id[tokyo.id]["period_end"] == ts(2026, 3, 1, tz=TOKYO)
    assert by_id[utc.id]["spent_usd"] == 10
    clock.t = ts(2026, 2, 1, 0, 0, 1, tz=ZoneInfo("UTC"))
    by_id = {r["id"]: r for r in b.status()}
    assert by_id[utc.id]["spent_usd"] == 0


def test_set_list_remove_and_validation(engine: Engine) -> None:
    b = Budgets(engine)
    x = b.set("session", "weekly", soft_usd=2, hard_usd=5, subject="s1", name="spike")
    b.settle(b.reserve(None, "s1", 1), 1)
    y = b.set("session", "weekly", soft_usd=3, hard_usd=6, subject="s1", budget_id=x.id)
    assert y.id == x.id and y.created_at == x.created_at
    assert b.status()[0]["spent_usd"] == 1  # limits changed, counters kept
    assert [z.hard_usd for z in Budgets(engine).list()] == [6]
    assert b.remove(x.id) is True and b.list() == [] and Budgets(engine).list() == []
    assert b.remove(x.id) is False
    for kwargs in (
        {"scope": "team", "period": "daily", "hard_usd": 1},
        {"scope": "global", "period": "hourly", "hard_usd": 1},
        {"scope": "global", "period": "daily"},
        {"scope": "global", "period": "daily", "soft_usd": 3, "hard_usd": 1},
        {"scope": "global", "period": "daily", "hard_usd": -1},
        {"scope": "global", "period": "daily", "hard_usd": 1, "subject": "x"},
        {"scope": "global", "period": "daily", "hard_usd": 1, "timezone": "Mars/Olympus"},
    ):
        with pytest.raises(ValueError):
            b.set(**kwargs)  # type: ignore[arg-type]


def test_forecast(engine: Engine) -> None:
    b = Budgets(engine)
    b.set("session", "total", hard_usd=10.0)
    for cost in (0.1, 0.2, 0.3, 0.4):
        b.settle(b.reserve(None, "s1", 1.0), cost)
    f = b.forecast("s1")
    assert f["turns"] == 4 and f["spent_usd"] == pytest.approx(1.0)
    assert f["cost_per_turn_usd"] == pytest.approx(0.25)
    assert f["expected_remaining_turns"] == 4
    assert f["forecast_remaining_usd"] == pytest.approx(1.0)
    assert f["forecast_total_usd"] == pytest.approx(2.0)
    assert f["budget_headroom_usd"] == pytest.approx(9.0)
    assert f["turns_left_in_budget"] == 36
    # A session this process never saw is read from the ledger.
    for i, cost in enumerate((0.5, 0.5, 1.0)):
        add_row(engine, 1000.0 + i, cost, session="old")
    f = b.forecast("old")
    assert f["turns"] == 3 and f["cost_per_turn_usd"] == pytest.approx(2 / 3)
    assert b.forecast("never")["forecast_remaining_usd"] == 0


def test_estimate_is_an_upper_bound() -> None:
    p = Prices(input=3.0, output=15.0, cache_read=0.3, cache_write_5m=3.75, cache_write_1h=6.0)
    assert estimate_usd(100_000, 4_000, p) == pytest.approx(0.375 + 0.06)


def test_a_restart_counts_what_a_crash_left_reserved(db_url: str) -> None:
    """Requests in flight at a crash may have been billed: after the restart they
    count their reserved estimate (SQLite: from their ledger rows; PostgreSQL: from
    the holds the crashed daemon left), so the budget is not handed out twice."""
    clock = Clock(ts(2026, 5, 10, 12))
    led = Ledger(db_url)
    led.start()
    b = Budgets(led.engine, clock=clock, journal=led.hold)
    b.set("global", "daily", hard_usd=1.0, timezone="America/New_York")
    b.set("session", "daily", hard_usd=1.0, timezone="America/New_York")
    for rid, est in (("done", 0.2), ("a", 0.3), ("b", 0.25)):
        led.open(
            RequestOpen(
                id=rid,
                started_at=clock.t,
                client_format="chat",
                requested_model="m",
                session_id="s1",
            )
        )
        r = b.reserve(None, "s1", est, request_id=rid)
        if rid == "done":  # finished before the crash: counts its real cost only
            b.settle(r, 0.1)
            led.close(RequestClose(id=rid, ended_at=clock.t, cost_usd=0.1))
    led.flush()
    # kill -9: nothing settles "a" and "b"; the next process recovers their rows
    again = Ledger(db_url)
    assert again.recover_interrupted(before=clock.t + 1) == 2
    rows = {r["id"]: r for r in again.rows()}
    assert {k: (r["status"], r["reserved_usd"]) for k, r in rows.items()} == {
        "done": ("ok", 0.2),
        "a": ("interrupted", 0.3),
        "b": ("interrupted", 0.25),
    }
    restarted = Budgets(again.engine, clock=clock)
    for row in restarted.status():
        assert row["spent_usd"] == pytest.approx(0.65) and row["reserved_usd"] == 0
    with pytest.raises(BudgetExceeded):
        restarted.reserve(None, "s1", 0.4)
    restarted.reserve(None, "s1", 0.3)
    led.stop()
    again.stop()


async def test_areserve_leaves_the_loop_only_on_a_shared_database(
    engine: Engine, backend: str
) -> None:
    seen: list[tuple[str, float, int]] = []
    b = Budgets(engine, journal=lambda rid, usd: seen.append((rid, usd, threading.get_ident())))
    b.set("global", "daily", hard_usd=1.0)
    r = await b.areserve(None, None, 0.4, request_id="r1")
    assert [(rid, usd) for rid, usd, _ in seen] == [("r1", 0.4)]
    # SQLite: in memory on the caller's thread (no hop); PostgreSQL: a worker thread
    assert (seen[0][2] == threading.get_ident()) == (backend == "sqlite")
    with pytest.raises(BudgetExceeded):
        await b.areserve(None, None, 0.7, request_id="r2")
    assert len(seen) == 1  # a refused reservation is not written to the ledger
    b.settle(r, 0.25)
    await b.areserve(None, None, 0.7, request_id="r3")
    [row] = b.status()
    assert row["spent_usd"] == pytest.approx(0.25) and row["reserved_usd"] == pytest.approx(0.7)


async def test_settle_nowait_leaves_the_loop_only_on_a_shared_database(
    engine: Engine, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    b = Budgets(engine)
    b.set("global", "daily", hard_usd=1.0)
    threads: list[int] = []
    settle_shared = b._settle_shared

    def spy(*args: Any) -> None:
        threads.append(threading.get_ident())
        settle_shared(*args)

    b._settle_shared = spy  # type: ignore[method-assign]
    r = await b.areserve(None, None, 0.4)
    b.settle_nowait(r, 0.3)
    # the mirror routing reads is up to date at once; the database once drained
    assert b.check(None, None).headroom_usd == pytest.approx(0.7)
    assert await asyncio.to_thread(b.drain, 10)
    # SQLite: nothing to write (no thread hop); PostgreSQL: one transaction, on a worker
    assert len(threads) == (backend == "postgresql") and threading.get_ident() not in threads
    [row] = await asyncio.to_thread(b.status)
    assert row["spent_usd"] == pytest.approx(0.3) and row["reserved_usd"] == pytest.approx(0)

    def broken(*args: Any) -> None:
        raise RuntimeError("database gone")

    b._settle_shared = broken  # type: ignore[method-assign]
    b.settle_nowait(await b.areserve(None, None, 0.1), 0.1)  # logged, never raised
    assert await asyncio.to_thread(b.drain, 10)
    assert ("failed" in caplog.text) == (backend == "postgresql")
    b._settle_shared = spy  # type: ignore[method-assign]
    assert b.close()
    b.settle_nowait(b.reserve(None, None, 0.2), 0.2)  # after close: inline
    assert b.drain(0)
    [row] = b.status()
    assert row["spent_usd"] == pytest.approx(0.6 if backend == "sqlite" else 0.5)


def _counter_keys(engine: Engine) -> set[tuple[str, str, float]]:
    with engine.connect() as conn:
        return {
            (bid, who, float(start))
            for bid, who, start in conn.execute(
                sa.select(
                    budget_counters.c.budget_id,
                    budget_counters.c.subject,
                    budget_counters.c.period_start,
                )
            )
        }


def _hold_keys(engine: Engine) -> set[tuple[str, str, float]]:
    with engine.connect() as conn:
        return {
            (bid, who, float(start))
            for bid, who, start in conn.execute(
                sa.select(
                    budget_holds.c.budget_id, budget_holds.c.subject, budget_holds.c.period_start
                )
            )
        }


def test_retention_prunes_past_budget_counters(engine: Engine) -> None:
    clock = Clock(ts(2026, 5, 10, 12, tz=UTC))
    may10, may11 = ts(2026, 5, 10, tz=UTC), ts(2026, 5, 11, tz=UTC)
    b = Budgets(engine, clock=clock, shared=True)  # counters in the database on both
    day = b.set("global", "daily", hard_usd=10)
    total = b.set("global", "total", hard_usd=100)
    gone = b.set("session", "daily", hard_usd=10)
    b.settle(b.reserve(None, "s1", 1), 1)
    stuck = b.reserve(None, None, 2)  # still held when its day ends
    assert b.remove(gone.id)
    clock.t += 86400
    b.settle(b.reserve(None, None, 1), 1)
    assert _counter_keys(engine) == {
        (day.id, "", may10),
        (day.id, "", may11),
        (total.id, "", 0.0),
        (gone.id, "s1", may10),
    }
    runner = JobRunner(engine, None, clock=clock)
    # May 10 ended only 12 hours ago (a day of grace); the removed budget's rows go
    assert runner.retention() == 2
    assert _counter_keys(engine) == {(day.id, "", may10), (day.id, "", may11), (total.id, "", 0.0)}
    assert runner.retention() == -1  # once a day
    clock.t += 86400
    late = b.reserve(None, None, 0.5)  # in flight across the next prune
    assert runner.retention() == 2  # May 10's counter and the hold left on it
    assert _counter_keys(engine) == {
        (day.id, "", may11),
        (day.id, "", ts(2026, 5, 12, tz=UTC)),
        (total.id, "", 0.0),
    }
    assert (day.id, "", may10) not in _hold_keys(engine)
    b.settle(stuck, 0.0)  # its rows are gone: harmless
    b.settle(late, 0.5)
    by_id = {r["id"]: r for r in b.status()}
    assert by_id[total.id]["spent_usd"] == pytest.approx(2.5)
    assert by_id[total.id]["reserved_usd"] == 0
    assert by_id[day.id]["spent_usd"] == pytest.approx(0.5)
