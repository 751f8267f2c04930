"""Background jobs on the daemon's event loop (APScheduler 3 ``AsyncIOScheduler``).

Restart safety comes from two layers:

* The schedule lives in a persistent job store (``apscheduler_jobs`` on the ledger's
  database) with ``coalesce=True``, ``max_instances=1`` and no misfire limit: a job
  whose run fell into downtime runs once on start, not once per missed tick. A
  stored job whose trigger is unchanged is kept as is, so its next run time
  survives the restart.
* Each job is idempotent and remembers, in ``job_runs``, the last period it
  completed. Rollups resume from that watermark (catching up downtime, never
  skipping a bucket) and replace buckets rather than add to them (so a repeat is
  harmless); retention runs at most once per local day.

Stored jobs reference ``_dispatch`` by name with plain-string arguments (they must
pickle); ``_dispatch`` finds the live ``JobRunner`` for that database in a registry.
Database work runs in a thread so the event loop keeps serving requests.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from switchman_daemon.budgets import Budgets
from switchman_daemon.ledger.schema import requests
from switchman_daemon.rollups import Rollups
from switchman_daemon.store_tables import (
    budget_counters,
    budget_holds,
    ensure_admin_tables,
    read_watermark,
    write_watermark,
)
from switchman_daemon.store_tables import budgets as budgets_table
from switchman_daemon.teamkeys import TeamKeys

log = logging.getLogger("switchman.jobs")

Hook = Callable[[], Any]  # sync or async; its result is ignored

DEFAULT_INTERVALS: dict[str, float] = {
    "budget_sweep": 60.0,
    "teamkey_touch": 30.0,
    "rollup_recent": 60.0,  # minute + hour buckets
    "rollup_daily": 3600.0,  # day buckets (recent two local days)
    "cache_expiry": 30.0,
    "price_refresh": 24 * 3600.0,
    "retention": 3600.0,  # checks hourly, works once per local day
    # shared database only: team keys and budgets changed by another daemon (a
    # revoked key stops working here within this many seconds)
    "shared_reload": 5.0,
}
# How far back each rollup re-runs even if its watermark is newer: requests are
# bucketed by start but priced at close, so a long stream lands after its bucket.
_LOOKBACK = {"minute": 10 * 60.0, "hour": 2 * 3600.0, "day": 86400.0}
_DAY = 86400.0

_RUNNERS: dict[str, JobRunner] = {}


async def _dispatch(key: str, name: str) -> None:
    runner = _RUNNERS.get(key)
    if runner is None:  # a stored job from a runner that is gone
        log.debug("no job runner for %s; skipping %s", key, name)
        return
    await runner.run_job(name)


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        budgets: Budgets | None,
        *,
        rollups: Rollups | None = None,
        teamkeys: TeamKeys | None = None,
        cache_expiry: Hook | None = None,
        price_refresh: Hook | None = None,
        retention_days: float | None = None,
        minute_rollup_days: float = 14.0,
        hour_rollup_days: float = 400.0,
        intervals: dict[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        key: str | None = None,
        owner: str = "local",
        shared: bool | None = None,
    ) -> None:
        ensure_admin_tables(engine)
        # Several daemons on one (non-SQLite) database: see ``start`` and shared_reload.
        self.shared = engine.dialect.name != "sqlite" if shared is None else shared
        self.owner = owner
        self.engine = engine
        self.budgets = budgets
        self.rollups = rollups or Rollups(engine)
        self.teamkeys = teamkeys
        self.cache_expiry = cache_expiry
        self.price_refresh = price_refresh
        self.retention_days = retention_days  # None = keep the ledger forever
        self.minute_rollup_days = minute_rollup_days
        self.hour_rollup_days = hour_rollup_days
        self.intervals = {**DEFAULT_INTERVALS, **(intervals or {})}
        self.clock = clock
        self.key = key or engine.url.render_as_string(hide_password=True) + (
            f"#{owner}" if self.shared else ""
        )
        self.scheduler: AsyncIOScheduler | None = None
        self.runs: dict[str, int] = {}  # completed runs per job in this process

    # ---- lifecycle --------------------------------------------------------------------

    def enabled_jobs(self) -> list[str]:
        on = {
            "budget_sweep": self.budgets is not None,
            "teamkey_touch": self.teamkeys is not None,
            "rollup_recent": True,
            "rollup_daily": True,
            "cache_expiry": self.cache_expiry is not None,
            "price_refresh": self.price_refresh is not None,
            "retention": True,
            "shared_reload": self.shared
            and (self.teamkeys is not None or self.budgets is not None),
        }
        return [n for n, v in on.items() if v]

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        if self.key in _RUNNERS and _RUNNERS[self.key] is not self:
            raise RuntimeError(f"jobs are already running for {self.key}")
        _RUNNERS[self.key] = self
        # Each daemon keeps its own schedule: in a shared store one daemon's scheduler
        # would run (and advance) the others' per-process jobs (cache expiry, reload).
        table = "apscheduler_jobs"
        if self.shared:
            table += "_" + "".join(ch if ch.isalnum() else "_" for ch in self.owner)[:40]
        sched = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=table)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        sched.start(paused=True)  # reconcile the stored schedule before anything runs
        wanted = set(self.enabled_jobs())
        for job in sched.get_jobs():
            if job.id not in wanted:
                job.remove()
        for name in wanted:
            trigger = IntervalTrigger(seconds=self.intervals[name], timezone="UTC")
            args = (self.key, name)
            job = sched.get_job(name)
            if job is not None and str(job.trigger) == str(trigger) and tuple(job.args) == args:
                continue  # unchanged: keep its stored next run time
            sched.add_job(_dispatch, trigger, args=args, id=name, name=name, replace_existing=True)
        sched.resume()
        self.scheduler = sched

    def shutdown(self) -> None:
        """Stop scheduling (the stored schedule stays) and flush pending key touches."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if _RUNNERS.get(self.key) is self:
            del _RUNNERS[self.key]
        if self.teamkeys is not None:
            try:
                self.teamkeys.flush_touches()
            except Exception:
                log.exception("could not write team-key last-used times")

    # ---- jobs ---------------------------------------------------------------------------

    async def run_job(self, name: str) -> Any:
        """Run one job now (the scheduler calls this too). Errors are logged, not
        raised, so one bad run does not unschedule the job."""
        try:
            if name == "budget_sweep":
                result = self.budgets.sweep() if self.budgets else 0
            elif name == "teamkey_touch":
                result = (
                    await asyncio.to_thread(self.teamkeys.flush_touches) if (self.teamkeys) else 0
                )
            elif name == "rollup_recent":
                result = await asyncio.to_thread(self.rollup_recent)
            elif name == "rollup_daily":
                result = await asyncio.to_thread(self.rollup_daily)
            elif name == "cache_expiry":
                # in-memory tracker state owned by the loop: call it on the loop
                result = await _call(self.cache_expiry, in_thread=False)
            elif name == "price_refresh":
                result = await _call(self.price_refresh, in_thread=True)
            elif name == "retention":
                result = await asyncio.to_thread(self.retention)
            elif name == "shared_reload":
                result = await asyncio.to_thread(self.shared_reload)
            else:
                raise ValueError(f"unknown job {name!r}")
        except Exception:
            log.exception("job %s failed", name)
            return None
        self.runs[name] = self.runs.get(name, 0) + 1
        return result

    def shared_reload(self) -> int:
        """Re-read team keys and budget definitions other daemons may have changed."""
        if self.teamkeys is not None:
            self.teamkeys.reload()
        return self.budgets.reload() if self.budgets is not None else 0

    def rollup_recent(self) -> int:
        return self._rollup("minute") + self._rollup("hour")

    def rollup_daily(self) -> int:
        return self._rollup("day")

    def _rollup(self, resolution: str) -> int:
        """Recompute buckets from the job's watermark (or the lookback, if older) up to
        now, then move the watermark to the start of the current (partial) bucket."""
        job = f"rollup_{resolution}"
        now = self.clock()
        current = self.rollups.floor(resolution, now)
        mark = read_watermark(self.engine, job)
        if mark is None:  # first run ever: backfill from the first ledger row
            with self.engine.connect() as conn:
                first = conn.execute(sa.select(sa.func.min(requests.c.started_at))).scalar()
            since = current if first is None else float(first)
            if resolution == "minute":
                since = max(since, now - self.minute_rollup_days * _DAY)
        else:
            since = min(mark, current - _LOOKBACK[resolution])
        written = self.rollups.compute(resolution, since, now)
        write_watermark(self.engine, job, current, now)
        return written

    def retention(self) -> int:
        """Once per local day: drop ledger rows older than ``retention_days`` (if set),
        fine-grained rollups past their keep time and shared budget counters that no
        longer count (see ``prune_budget_counters``). Returns rows deleted, or -1
        when today's run already happened."""
        now = self.clock()
        today = self.rollups.floor("day", now)
        mark = read_watermark(self.engine, "retention")
        if mark is not None and mark >= today:
            return -1
        deleted = 0
        if self.retention_days is not None:
            cutoff = now - self.retention_days * _DAY
            with self.engine.begin() as conn:
                deleted += (
                    conn.execute(
                        sa.delete(requests).where(
                            requests.c.started_at < cutoff, requests.c.status != "open"
                        )
                    ).rowcount
                    or 0
                )
        deleted += self.rollups.prune("minute", now - self.minute_rollup_days * _DAY)
        deleted += self.rollups.prune("hour", now - self.hour_rollup_days * _DAY)
        deleted += self.prune_budget_counters(now)
        write_watermark(self.engine, "retention", today, now)
        return deleted

    def prune_budget_counters(self, now: float) -> int:
        """Delete budget counters and holds of periods that ended over a day ago
        (budgets only read the current period; the ledger keeps the history), and
        those of budgets that were removed. The day of grace covers a request still
        in flight across the boundary: its settle then finds its old rows. Returns
        rows deleted."""
        bc, h = budget_counters, budget_holds
        ended = sa.and_(bc.c.period_end.is_not(None), bc.c.period_end < now - _DAY)
        removed = bc.c.budget_id.not_in(sa.select(budgets_table.c.id))
        # a hold is created only after its counter (reserve, one transaction), so a
        # hold without one belongs to a pruned counter
        orphan = ~sa.exists().where(
            bc.c.budget_id == h.c.budget_id,
            bc.c.subject == h.c.subject,
            bc.c.period_start == h.c.period_start,
        )
        with self.engine.begin() as conn:
            # counters, then holds: reserve's lock order, so the two cannot deadlock
            deleted = conn.execute(sa.delete(bc).where(sa.or_(ended, removed))).rowcount or 0
            deleted += conn.execute(sa.delete(h).where(orphan)).rowcount or 0
        return deleted


async def _call(hook: Hook | None, *, in_thread: bool) -> Any:
    if hook is None:
        return None
    if inspect.iscoroutinefunction(hook):
        return await hook()
    # A plain callable that may do I/O (e.g. a catalog download) runs off the loop.
    result = await asyncio.to_thread(hook) if in_thread else hook()
    return await result if inspect.isawaitable(result) else result


def start_jobs(
    engine: Engine,
    budgets: Budgets | None,
    *,
    rollups: Rollups | None = None,
    teamkeys: TeamKeys | None = None,
    cache_expiry: Hook | None = None,
    price_refresh: Hook | None = None,
    retention_days: float | None = None,
    intervals: dict[str, float] | None = None,
    clock: Callable[[], float] = time.time,
    owner: str = "local",
) -> JobRunner:
    """Create and start the job runner; call from inside the daemon's event loop."""
    runner = JobRunner(
        engine,
        budgets,
        rollups=rollups,
        teamkeys=teamkeys,
        cache_expiry=cache_expiry,
        price_refresh=price_refresh,
        retention_days=retention_days,
        intervals=intervals,
        clock=clock,
        owner=owner,
    )
    runner.start()
    return runner


__all__ = ["DEFAULT_INTERVALS", "JobRunner", "start_jobs"]
