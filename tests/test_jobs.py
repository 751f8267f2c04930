"""Rollups (idempotent buckets, charts) and the job runner (restart-safe schedule)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from switchman_daemon.budgets import Budgets
from switchman_daemon.jobs import JobRunner, start_jobs
from switchman_daemon.ledger import Ledger
from switchman_daemon.ledger.schema import make_engine, requests
from switchman_daemon.rollups import Rollups
from switchman_daemon.store_tables import job_runs, rollups
from switchman_daemon.teamkeys import TeamKeys

NY = ZoneInfo("America/New_York")
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=ZoneInfo("UTC")).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    ledger = Ledger(url)
    yield ledger.engine
    ledger.engine.dispose()


def add_row(engine: Engine, t: float, model: str = "sonnet", cost: float = 0.01,
            baseline: float | None = None, status: str = "ok", inp: int = 100,
            read: int = 300, out: int = 10) -> str:
    rid = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(sa.insert(requests).values(
            id=rid, started_at=t, client_format="chat", requested_model="auto",
            served_model=model, status=status, cost_usd=cost, baseline_cost_usd=baseline,
            input_tokens=inp, cache_read_tokens=read, output_tokens=out,
        ))
    return rid


def table(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(rollups)))


# ---- rollups ----------------------------------------------------------------------


def test_rollups_buckets_series_and_idempotence(engine: Engine) -> None:
    add_row(engine, T0 + 5, "sonnet", cost=0.02, baseline=0.05)
    add_row(engine, T0 + 50, "haiku", cost=0.01, status="error")
    add_row(engine, T0 + 65, "sonnet", cost=0.03, baseline=None)  # next minute
    add_row(engine, T0 + 3700, "sonnet", cost=0.04)  # next hour
    r = Rollups(engine)
    r.compute("minute", T0, T0 + 7200)
    r.compute("hour", T0, T0 + 7200)
    first = table(engine)
    r.compute("minute", T0, T0 + 7200)  # again: replaced, not added
    r.compute("hour", T0 + 10, T0 + 20)  # a sub-range recomputes its whole bucket
    assert table(engine) == first

    mins = r.series("minute", T0, T0 + 7200)
    assert [m["bucket_start"] for m in mins] == [T0, T0 + 60, T0 + 3660]
    assert mins[0]["requests"] == 2 and mins[0]["errors"] == 1
    assert mins[0]["cost_usd"] == pytest.approx(0.03)
    assert mins[0]["baseline_cost_usd"] == pytest.approx(0.06)  # haiku w/o baseline: own cost
    assert mins[0]["savings_usd"] == pytest.approx(0.03)
    assert mins[0]["cache_hit_rate"] == pytest.approx(600 / 800)
    hours = r.series("hour", T0, T0 + 7200, by_model=True)
    assert [(h["bucket_start"], h["model"], h["requests"]) for h in hours] == [
        (T0, "haiku", 1), (T0, "sonnet", 2), (T0 + 3600, "sonnet", 1)]

    # A late close changes a row: recomputing its bucket picks it up.
    with engine.begin() as conn:
        conn.execute(sa.update(requests).where(requests.c.started_at == T0 + 3700)
                     .values(cost_usd=1.0))
    r.compute("hour", T0 + 3600, T0 + 3601)
    assert r.series("hour", T0 + 3600, T0 + 7200)[0]["cost_usd"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        r.series("week", T0, T0 + 1)


def test_day_buckets_follow_the_local_calendar(engine: Engine) -> None:
    may10_ny = datetime(2026, 5, 10, tzinfo=NY).timestamp()
    add_row(engine, datetime(2026, 5, 11, 3, 0, tzinfo=ZoneInfo("UTC")).timestamp())  # May 10 NY
    add_row(engine, datetime(2026, 5, 11, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp())  # May 11 NY
    r = Rollups(engine, tz="America/New_York")
    r.compute("day", may10_ny, may10_ny + 3 * 86400)
    days = r.series("day", 0, 2e9)
    assert [(d["bucket_start"], d["requests"]) for d in days] == [
        (may10_ny, 1), (datetime(2026, 5, 11, tzinfo=NY).timestamp(), 1)]


# ---- job runner -------------------------------------------------------------------


def runs_of(engine: Engine, job: str) -> tuple[float, int] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(job_runs.c.last_period_end, job_runs.c.runs)
                           .where(job_runs.c.job == job)).one_or_none()
    return None if row is None else (row[0], row[1])


async def test_rollup_job_catches_up_after_downtime_without_double_counting(
    engine: Engine,
) -> None:
    clock = Clock(T0 + 30)
    add_row(engine, T0 - 3 * 3600)  # history from before the first run: backfilled
    add_row(engine, T0 + 1)
    runner = JobRunner(engine, None, clock=clock)
    await runner.run_job("rollup_recent")
    assert runs_of(engine, "rollup_minute") == (T0, 1)
    assert len(Rollups(engine).series("hour", 0, 2e9)) == 2

    # The daemon is down for three hours; requests logged meanwhile (another daemon,
    # or rows whose close landed late) must not be skipped on restart.
    for k in range(1, 4):
        add_row(engine, T0 + k * 3600 + 10)
    clock.t = T0 + 3 * 3600 + 600
    restarted = JobRunner(engine, None, clock=clock)
    await restarted.run_job("rollup_recent")
    mins = Rollups(engine).series("minute", T0 - 86400, 2e9)
    assert sum(m["requests"] for m in mins) == 5  # nothing skipped, nothing doubled
    hours = Rollups(engine).series("hour", 0, 2e9)
    assert sum(h["requests"] for h in hours) == 5
    snapshot = table(engine)
    await restarted.run_job("rollup_recent")  # a repeat (e.g. a coalesced misfire)
    assert table(engine) == snapshot
    assert runs_of(engine, "rollup_minute") == (T0 + 3 * 3600 + 600, 3)
    await restarted.run_job("rollup_daily")
    assert sum(d["requests"] for d in Rollups(engine).series("day", 0, 2e9)) == 5


async def test_retention_runs_once_a_day(engine: Engine) -> None:
    clock = Clock(T0)
    old = add_row(engine, T0 - 40 * 86400)
    keep = add_row(engine, T0 - 10 * 86400)
    Rollups(engine).compute("minute", T0 - 40 * 86400, T0 - 40 * 86400 + 60)
    runner = JobRunner(engine, None, retention_days=30, clock=clock)
    # one ledger row + that minute's rollup rows (the model's and the all-models total)
    assert await runner.run_job("retention") == 3
    with engine.connect() as conn:
        ids = set(conn.execute(sa.select(requests.c.id)).scalars())
    assert ids == {keep} and old not in ids
    assert await runner.run_job("retention") == -1  # today's run is done
    clock.t += 86400
    assert await runner.run_job("retention") == 0
    # Off by default: the ledger is kept forever.
    clock.t += 86400 * 60
    assert await JobRunner(engine, None, clock=clock).run_job("retention") == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(requests)).scalar() == 1


async def test_hooks_budgets_and_keys(engine: Engine) -> None:
    calls: list[str] = []

    async def expire() -> int:
        calls.append("expire")
        return 3

    def refresh() -> None:
        calls.append("refresh")
        raise RuntimeError("catalog unreachable")

    clock = Clock(T0)
    budgets = Budgets(engine, clock=clock)
    budgets.set("global", "daily", hard_usd=1)
    keys = TeamKeys(engine, clock=clock)
    info, _ = keys.issue("k", "o")
    keys.touch(info.id)
    runner = JobRunner(engine, budgets, teamkeys=keys, cache_expiry=expire,
                       price_refresh=refresh, clock=clock)
    assert await runner.run_job("cache_expiry") == 3
    assert await runner.run_job("price_refresh") is None  # logged, not raised
    assert calls == ["expire", "refresh"]
    assert runner.runs == {"cache_expiry": 1}
    assert await runner.run_job("teamkey_touch") == 1
    assert TeamKeys(engine).get(info.id).last_used_at == T0  # type: ignore[union-attr]
    assert await runner.run_job("budget_sweep") == 0
    clock.t += 86400
    assert await runner.run_job("budget_sweep") == 1


def stored_jobs(url: str) -> dict[str, float | None]:
    eng = make_engine(url)
    try:
        with eng.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, next_run_time FROM apscheduler_jobs"))
            return {r[0]: r[1] for r in rows}
    finally:
        eng.dispose()


async def test_schedule_is_persistent_and_not_duplicated(url: str, engine: Engine) -> None:
    budgets = Budgets(engine)
    runner = start_jobs(engine, budgets, cache_expiry=lambda: None)
    first = stored_jobs(url)
    assert set(first) == {"budget_sweep", "rollup_recent", "rollup_daily", "cache_expiry",
                          "retention"}
    runner.shutdown()

    again = start_jobs(engine, budgets, cache_expiry=lambda: None)
    assert stored_jobs(url) == first  # kept as stored: same ids, same next run times
    again.shutdown()

    # A changed interval replaces that job; a job no longer wanted is removed.
    third = start_jobs(engine, budgets, intervals={"budget_sweep": 5.0})
    now = stored_jobs(url)
    assert "cache_expiry" not in now and now["budget_sweep"] != first["budget_sweep"]
    assert now["rollup_recent"] == first["rollup_recent"]
    with pytest.raises(RuntimeError):
        start_jobs(engine, budgets)  # one runner per database
    third.shutdown()


async def test_scheduler_fires_jobs(engine: Engine) -> None:
    fired = asyncio.Event()
    count = 0

    def expire() -> None:
        nonlocal count
        count += 1
        fired.set()

    runner = start_jobs(engine, None, cache_expiry=expire, intervals={"cache_expiry": 0.05})
    try:
        await asyncio.wait_for(fired.wait(), 5)
    finally:
        runner.shutdown()
    assert count >= 1 and runner.runs.get("cache_expiry", 0) >= 1
