"""Dollar budgets that actually stop spend: reserve before forwarding, settle after.

Scopes: ``global`` (every request), ``team_key`` and ``session``. A team-key or
session budget with ``subject=None`` is a template: it applies to *each* key or
session separately (e.g. "every session may spend $5 a day"). Periods ``daily``,
``weekly`` (from Monday), ``monthly`` and ``total`` start at local midnight in the
budget's own time zone.

Concurrency: ``reserve`` checks every applicable budget and books the estimate on
all of them under one lock, so concurrent requests cannot all pass the same
check. A request is admitted only if ``spent + reserved + estimate <= hard``; as
long as a request's real cost does not exceed its estimate, a hard limit is never
overspent, and each request that does exceed it overspends by at most its excess.
``settle`` releases the reservation and books the real cost.

Counters (spent and reserved in the current period) live in memory; spent is
loaded from the ledger's ``requests`` table when the budget is loaded or created,
and reset to zero when the period rolls over (checked lazily on each call and by
``sweep``). A request's cost belongs to the period in which it was reserved, like
the ledger's ``started_at``: a request straddling midnight counts for the old day.

Crashes: each reservation is also written to its ledger row (``journal``, the
ledger's batched ``hold``), and a row left ``interrupted`` by a crash counts as
the larger of its recorded cost and that estimate: the request may have reached
the provider and been billed, so a restart must not hand the money out again.

Shared mode (the default when the ledger is not SQLite, i.e. several daemons may
share it): the counters that matter live in the database. ``reserve`` locks one
``budget_counters`` row per applicable budget (``SELECT ... FOR UPDATE``, in a fixed
order so daemons cannot deadlock), adds every daemon's holds, and books its own
hold in the same transaction, so two daemons cannot both pass the last dollar;
``settle`` moves the hold into ``spent``. The in-memory counters become a mirror
that only feeds ``check`` (a routing hint); ``status`` reads the database. A
restarting daemon turns the holds it left behind into spend, for the same reason
as above. The proxy calls ``areserve``, which runs that locking transaction on a
worker thread so the event loop never waits on another daemon's row lock, and
``settle_nowait``, which queues the settling transaction on the same threads (its
reservation has committed before the request was forwarded, so the settle can only
follow it); ``drain`` waits for the queued settles and ``close`` drains, then stops
the threads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from switchman_daemon.ledger.schema import requests
from switchman_daemon.store_tables import (
    budget_counters,
    budget_holds,
    ensure_admin_tables,
    insert_ignore,
    upsert_add,
)
from switchman_daemon.store_tables import budgets as budgets_table

Scope = Literal["global", "team_key", "session"]
Period = Literal["daily", "weekly", "monthly", "total"]
State = Literal["ok", "soft", "hard"]
SCOPES: tuple[str, ...] = ("global", "team_key", "session")
PERIODS: tuple[str, ...] = ("daily", "weekly", "monthly", "total")

# Forecast model knobs (see ``Budgets.forecast``).
_RECENT_TURNS = 10
_MAX_REMAINING_TURNS = 200
_SESSION_TRAILS = 10_000
# Worker threads for shared-mode reservations: few, since reservations of one budget
# serialise on its row lock anyway, and well under the engine's connection pool.
_RESERVE_WORKERS = 4
# How long ``status`` (off the event loop) waits for this daemon's queued settles.
_STATUS_DRAIN_S = 5.0

log = logging.getLogger(__name__)

Journal = Callable[[str, float], None]  # (request id, estimate): see Ledger.hold


class _Prices(Protocol):
    input: float
    output: float
    cache_write_5m: float


def estimate_usd(prompt_tokens: int, max_output_tokens: int, prices: _Prices) -> float:
    """A cautious upper estimate of a request's cost, for ``reserve``: the whole
    prompt priced as a 5-minute cache write (the dearest common case; a cache hit
    only makes it cheaper) plus the full output allowance. Prices are USD per
    million tokens, as in ``models.Prices``."""
    per_in = max(prices.input, prices.cache_write_5m)
    return (max(prompt_tokens, 0) * per_in + max(max_output_tokens, 0) * prices.output) / 1e6


def period_bounds(period: str, tz: ZoneInfo, now: float) -> tuple[float, float]:
    """[start, end) of the period containing ``now``, as epoch seconds, with the
    boundaries at local midnight in ``tz`` (DST-aware)."""
    if period == "total":
        return 0.0, math.inf
    today = datetime.fromtimestamp(now, tz).date()
    if period == "daily":
        first, nxt = today, today + timedelta(days=1)
    elif period == "weekly":
        first = today - timedelta(days=today.weekday())
        nxt = first + timedelta(days=7)
    elif period == "monthly":
        first = today.replace(day=1)
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    start = datetime.combine(first, dtime(0), tzinfo=tz).timestamp()
    end = datetime.combine(nxt, dtime(0), tzinfo=tz).timestamp()
    return min(start, now), end


class BudgetExceeded(Exception):
    """A hard limit would be crossed. ``str(exc)`` is the user-facing message; the
    relay renders it as a 429 in the client's error format."""

    def __init__(
        self,
        scope: str,
        limit: float,
        spent: float,
        reason: str,
        *,
        budget_id: str = "",
        reserved: float = 0.0,
        estimate: float = 0.0,
        resets_at: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.scope = scope
        self.limit = limit
        self.spent = spent
        self.reason = reason
        self.budget_id = budget_id
        self.reserved = reserved
        self.estimate = estimate
        self.resets_at = resets_at

    def retry_after_s(self, now: float | None = None) -> float | None:
        """Seconds until the period resets (None for a ``total`` budget)."""
        if self.resets_at is None or math.isinf(self.resets_at):
            return None
        return max(0.0, self.resets_at - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    scope: Scope
    period: Period
    soft_usd: float | None = None
    hard_usd: float | None = None
    subject: str | None = None  # key id / session id; None = each one separately
    timezone: str = "UTC"
    name: str = ""
    created_at: float = 0.0

    def subject_for(self, team_key_id: str | None, session_id: str | None) -> str | None:
        """The counter this budget charges for a request, or None if it does not apply."""
        if self.scope == "global":
            return ""
        who = team_key_id if self.scope == "team_key" else session_id
        if who is None or (self.subject is not None and self.subject != who):
            return None
        return who

    def label(self) -> str:
        if self.name:
            return f"{self.scope.replace('_', ' ')} budget '{self.name}'"
        if self.scope == "global":
            return "global budget"
        return f"{self.scope.replace('_', ' ')} budget"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scope": self.scope,
            "subject": self.subject,
            "period": self.period,
            "timezone": self.timezone,
            "soft_usd": self.soft_usd,
            "hard_usd": self.hard_usd,
            "created_at": self.created_at,
        }


class _Counter:
    __slots__ = ("reserved", "spent")

    def __init__(self, spent: float = 0.0) -> None:
        self.spent = spent
        self.reserved = 0.0


@dataclass(slots=True)
class _Live:
    """A budget with its current period and one counter per subject."""

    budget: Budget
    tz: ZoneInfo
    start: float
    end: float
    counters: dict[str, _Counter] = field(default_factory=dict)


@dataclass(slots=True)
class Reservation:
    id: int
    team_key_id: str | None
    session_id: str | None
    estimate_usd: float
    created_at: float
    state: State  # "soft" if any soft limit is reached with this request
    soft_budgets: tuple[str, ...]  # ids of the budgets in their soft zone
    _entries: list[tuple[_Counter, float]] = field(default_factory=list, repr=False)
    # shared mode: the (budget id, subject, period start) counters holding the estimate
    _db: list[tuple[str, str, float]] = field(default_factory=list, repr=False)
    settled: bool = False


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """What routing needs before choosing a model."""

    state: State
    soft_budgets: tuple[str, ...]
    headroom_usd: float  # smallest room left under an applicable hard limit (inf if none)


class _Trail:
    __slots__ = ("count", "recent", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=_RECENT_TURNS)

    def add(self, cost: float) -> None:
        self.count += 1
        self.total += cost
        self.recent.append(cost)


class Budgets:
    """Budget definitions (persisted) and their live counters (in memory).

    ``journal`` (the daemon passes ``Ledger.hold``) records each reservation's
    estimate on its ledger row, for requests a crash will leave interrupted."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        *,
        shared: bool | None = None,
        owner: str = "local",
        journal: Journal | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        # SQLite means one daemon: in-memory counters are exact and cost no I/O.
        self.shared = engine.dialect.name != "sqlite" if shared is None else shared
        self.owner = owner
        self.journal = journal
        ensure_admin_tables(engine)
        if self.shared:
            self._absorb_leftover_holds()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._pending: set[Future[None]] = set()  # queued settles (shared mode)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._live: dict[str, _Live] = {}
        self._trails: OrderedDict[str, _Trail] = OrderedDict()
        with engine.connect() as conn:
            rows = list(conn.execute(sa.select(budgets_table)).mappings())
        now = clock()
        for r in rows:
            b = Budget(**{k: r[k] for k in Budget.__slots__})  # type: ignore[attr-defined]
            self._live[b.id] = self._load(b, now)

    @property
    def configured(self) -> bool:
        """Whether any budget exists (the proxy skips budget work otherwise)."""
        return bool(self._live)

    # ---- definitions ------------------------------------------------------------

    def set(
        self,
        scope: Scope,
        period: Period,
        *,
        soft_usd: float | None = None,
        hard_usd: float | None = None,
        subject: str | None = None,
        timezone: str = "UTC",
        name: str = "",
        budget_id: str | None = None,
    ) -> Budget:
        """Create a budget, or replace the one with ``budget_id``. Changing only the
        limits keeps its counters; changing what it covers reloads them."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}")
        if soft_usd is None and hard_usd is None:
            raise ValueError("a budget needs a soft or a hard limit")
        for v in (soft_usd, hard_usd):
            if v is not None and (v < 0 or not math.isfinite(v)):
                raise ValueError("limits must be finite and non-negative")
        if soft_usd is not None and hard_usd is not None and soft_usd > hard_usd:
            raise ValueError("the soft limit must not be above the hard limit")
        if scope == "global" and subject is not None:
            raise ValueError("a global budget has no subject")
        try:
            ZoneInfo(timezone)
        except Exception as e:
            raise ValueError(f"unknown time zone {timezone!r}") from e
        old = self._live.get(budget_id) if budget_id else None
        b = Budget(
            id=budget_id or "bg_" + uuid.uuid4().hex[:16],
            scope=scope,
            period=period,
            soft_usd=soft_usd,
            hard_usd=hard_usd,
            subject=subject,
            timezone=timezone,
            name=name,
            created_at=old.budget.created_at if old else self.clock(),
        )
        values = b.to_dict()
        with self.engine.begin() as conn:
            if (
                conn.execute(
                    sa.update(budgets_table).where(budgets_table.c.id == b.id).values(values)
                ).rowcount
                == 0
            ):
                conn.execute(sa.insert(budgets_table).values(values))
        same_cover = old is not None and (
            (old.budget.scope, old.budget.subject, old.budget.period, old.budget.timezone)
            == (scope, subject, period, timezone)
        )
        live = None if same_cover else self._load(b, self.clock())  # DB read outside lock
        with self._lock:
            cur = self._live.get(b.id)
            if live is None and cur is not None:
                cur.budget = b
            else:
                self._live[b.id] = live or self._load(b, self.clock())
        return b

    def get(self, budget_id: str) -> Budget | None:
        live = self._live.get(budget_id)
        return live.budget if live else None

    def list(self) -> list[Budget]:
        return sorted((lv.budget for lv in self._live.values()), key=lambda b: b.created_at)

    def remove(self, budget_id: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.delete(budgets_table).where(budgets_table.c.id == budget_id)
            ).rowcount
        with self._lock:
            gone = self._live.pop(budget_id, None)
        return bool(n) or gone is not None

    # ---- hot path -----------------------------------------------------------------

    def check(self, team_key_id: str | None, session_id: str | None) -> BudgetCheck:
        """Soft/hard state for a request before routing (reserves nothing)."""
        now = self.clock()
        state: State = "ok"
        soft: list[str] = []
        headroom = math.inf
        with self._lock:
            for live in self._live.values():
                b = live.budget
                who = b.subject_for(team_key_id, session_id)
                if who is None:
                    continue
                self._roll(live, now)
                c = live.counters.get(who)
                used = (c.spent + c.reserved) if c else 0.0
                if b.hard_usd is not None:
                    headroom = min(headroom, b.hard_usd - used)
                    if used >= b.hard_usd:
                        state = "hard"
                if b.soft_usd is not None and used >= b.soft_usd:
                    soft.append(b.id)
                    if state == "ok":
                        state = "soft"
        return BudgetCheck(state, tuple(soft), max(headroom, 0.0))

    def reserve(
        self,
        team_key_id: str | None,
        session_id: str | None,
        estimate_usd: float,
        *,
        request_id: str | None = None,
    ) -> Reservation:
        """Book ``estimate_usd`` on every applicable budget, or raise BudgetExceeded
        (booking nothing) if any hard limit would be crossed. With ``request_id``,
        the estimate is also written to that ledger row (see ``journal``).

        Blocking on a shared database (a row lock another daemon may hold): from the
        event loop, call ``areserve``."""
        est = max(float(estimate_usd), 0.0)
        now = self.clock()
        if self.shared:
            r = self._reserve_shared(team_key_id, session_id, est, now)
        else:
            r = self._reserve_local(team_key_id, session_id, est, now)
        if request_id is not None and self.journal is not None and est > 0:
            self.journal(request_id, est)
        return r

    async def areserve(
        self,
        team_key_id: str | None,
        session_id: str | None,
        estimate_usd: float,
        *,
        request_id: str | None = None,
    ) -> Reservation:
        """``reserve`` for the event loop. In memory (SQLite) it runs inline, no
        thread hop; on a shared database the transaction runs on a worker thread.
        If the caller is cancelled meanwhile, the reservation is released as soon
        as it completes, so an abandoned request never pins budget."""
        if not self.shared:
            return self.reserve(team_key_id, session_id, estimate_usd, request_id=request_id)
        job = self._pool().submit(
            self.reserve, team_key_id, session_id, estimate_usd, request_id=request_id
        )
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # cancelling the wrapper cancels ``job`` only if it had not started yet
            job.add_done_callback(self._release_abandoned)
            raise

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        _RESERVE_WORKERS, thread_name_prefix="switchman-budget"
                    )
        return self._executor

    def _release_abandoned(self, job: Future[Reservation]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        # settle locks rows: never on the caller's (a worker's or the loop's) thread
        self.settle_nowait(job.result(), 0.0)

    def _reserve_local(
        self, team_key_id: str | None, session_id: str | None, est: float, now: float
    ) -> Reservation:
        with self._lock:
            hits: list[tuple[_Live, _Counter]] = []
            for live in self._live.values():
                b = live.budget
                who = b.subject_for(team_key_id, session_id)
                if who is None:
                    continue
                self._roll(live, now)
                c = live.counters.get(who)
                if c is None:
                    c = live.counters[who] = _Counter()
                if b.hard_usd is not None and c.spent + c.reserved + est > b.hard_usd:
                    raise _exceeded(live, c, est)
                hits.append((live, c))
            soft = tuple(
                lv.budget.id
                for lv, c in hits
                if lv.budget.soft_usd is not None
                and c.spent + c.reserved + est >= lv.budget.soft_usd
            )
            for _, c in hits:
                c.reserved += est
            return Reservation(
                id=next(self._ids),
                team_key_id=team_key_id,
                session_id=session_id,
                estimate_usd=est,
                created_at=now,
                state="soft" if soft else "ok",
                soft_budgets=soft,
                _entries=[(c, est) for _, c in hits],
            )

    def _reserve_shared(
        self, team_key_id: str | None, session_id: str | None, est: float, now: float
    ) -> Reservation:
        with self._lock:
            hits: list[tuple[_Live, str]] = []
            for live in self._live.values():
                who = live.budget.subject_for(team_key_id, session_id)
                if who is not None:
                    self._roll(live, now)
                    hits.append((live, who))
        # one lock order on every daemon, so two reservations cannot deadlock
        hits.sort(key=lambda h: (h[0].budget.id, h[1]))
        seen: list[tuple[_Live, str, float, float]] = []
        if hits:
            with self.engine.begin() as conn:
                for live, who in hits:
                    key = _key(live, who)
                    spent = self._lock_counter(conn, live, who)
                    held = float(
                        conn.execute(
                            sa.select(
                                sa.func.coalesce(sa.func.sum(budget_holds.c.reserved), 0.0)
                            ).where(*_match(budget_holds, key))
                        ).scalar_one()
                    )
                    hard = live.budget.hard_usd
                    if hard is not None and spent + held + est > hard:
                        c = _Counter(spent)
                        c.reserved = held
                        raise _exceeded(live, c, est)  # rolls the transaction back
                    seen.append((live, who, spent, held))
                for live, who, _, _ in seen:
                    upsert_add(
                        conn,
                        budget_holds,
                        {**_key(live, who), "owner": self.owner},
                        "reserved",
                        est,
                    )
        soft = tuple(
            lv.budget.id
            for lv, _, spent, held in seen
            if lv.budget.soft_usd is not None and spent + held + est >= lv.budget.soft_usd
        )
        with self._lock:
            for live, who, spent, held in seen:  # refresh the mirror check() reads
                c = live.counters.get(who)
                if c is None:
                    c = live.counters[who] = _Counter()
                c.spent, c.reserved = spent, held + est
        return Reservation(
            id=next(self._ids),
            team_key_id=team_key_id,
            session_id=session_id,
            estimate_usd=est,
            created_at=now,
            state="soft" if soft else "ok",
            soft_budgets=soft,
            _db=[(lv.budget.id, who, lv.start) for lv, who, _, _ in seen],
        )

    def _lock_counter(self, conn: Connection, live: _Live, who: str) -> float:
        """Lock this period's counter row (creating it, seeded from the ledger like
        ``_load``, on first use by any daemon) and return its spent."""
        key = _key(live, who)
        stmt = (
            sa.select(budget_counters.c.spent)
            .where(*_match(budget_counters, key))
            .with_for_update()
        )
        spent = conn.execute(stmt).scalar_one_or_none()
        if spent is None:
            end = live.end if math.isfinite(live.end) else None
            seed = self._ledger_spent(conn, live.budget, live.start, live.end).get(who, 0.0)
            insert_ignore(conn, budget_counters, {**key, "period_end": end, "spent": seed})
            spent = conn.execute(stmt).scalar_one()
        return float(spent)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Release the reservation and book the real cost (idempotent). Call it for
        every reservation, with 0.0 when the request failed before costing anything.

        Blocking on a shared database (a row lock another daemon may hold): from the
        event loop, call ``settle_nowait``."""
        actual = max(float(actual_usd), 0.0)
        booked = self._settle_memory(reservation, actual)
        if booked is not None:
            self._settle_shared(reservation, actual, booked)

    def settle_nowait(self, reservation: Reservation, actual_usd: float) -> None:
        """``settle`` for the event loop (the proxy's close hook). In memory (SQLite)
        it runs inline; on a shared database the in-memory part (mirror, session
        trail) runs here and the transaction is queued on the worker threads, where
        it waits for row locks without holding up the loop. A failing transaction
        is logged, never raised: the request it settles has already been answered.
        ``drain`` waits for the queued transactions."""
        actual = max(float(actual_usd), 0.0)
        if not self.shared:
            self.settle(reservation, actual)
            return
        booked = self._settle_memory(reservation, actual)
        if booked is None:
            return
        with self._lock:
            closed = self._closed
        if closed:  # after close(): nothing will drain a queue, so settle here
            self._settle_logged(reservation, actual, booked)
            return
        try:
            job = self._pool().submit(self._settle_logged, reservation, actual, booked)
        except RuntimeError:  # the pool shut down under us
            log.exception("could not queue settlement of reservation %d", reservation.id)
            return
        with self._lock:
            self._pending.add(job)
        job.add_done_callback(self._settled)

    def _settle_logged(
        self, r: Reservation, actual: float, booked: list[tuple[str, str, float]]
    ) -> None:
        try:
            self._settle_shared(r, actual, booked)
        except Exception:  # logged before the job completes, so drain() sees it done
            log.exception("settling budget reservation %d failed", r.id)

    def _settled(self, job: Future[None]) -> None:
        with self._lock:
            self._pending.discard(job)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every settle queued before this call has committed (or failed).
        Returns False if some are still running after ``timeout`` seconds. Blocking:
        from the event loop, ``await asyncio.to_thread(budgets.drain, t)``."""
        with self._lock:
            jobs = list(self._pending)
        if not jobs:
            return True
        _, left = futures_wait(jobs, timeout)
        return not left

    def close(self, timeout: float | None = 10.0) -> bool:
        """Drain the queued settles (up to ``timeout`` seconds), then stop the worker
        threads; call before disposing of the engine. A settle arriving later runs
        inline. Returns whether everything drained."""
        with self._lock:
            self._closed = True
        done = self.drain(timeout)
        if not done:
            log.warning("budget settlements still pending at shutdown")
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=done, cancel_futures=not done)
        return done

    def _settle_memory(self, r: Reservation, actual: float) -> list[tuple[str, str, float]] | None:
        """``settle``'s in-memory part; returns the counters to book in the shared
        database (None: nothing to write, or already settled)."""
        now = self.clock()
        with self._lock:
            if r.settled:
                return None
            r.settled = True
            for c, amt in r._entries:
                c.reserved = max(c.reserved - amt, 0.0)
            booked: list[tuple[str, str, float]] = []
            # Book on every budget that covers the request now and whose period holds
            # the request's start (a budget created meanwhile counts it too; a period
            # that has since rolled over is not charged).
            for live in self._live.values():
                who = live.budget.subject_for(r.team_key_id, r.session_id)
                if who is None:
                    continue
                self._roll(live, now)
                if live.start <= r.created_at < live.end:
                    c = live.counters.get(who)
                    if c is None:
                        c = live.counters[who] = _Counter()
                    c.spent += actual
                    if self.shared:
                        key = (live.budget.id, who, live.start)
                        booked.append(key)
                        if key in r._db:
                            c.reserved = max(c.reserved - r.estimate_usd, 0.0)
            if r.session_id is not None and actual > 0:
                trail = self._trails.get(r.session_id)
                if trail is None:
                    trail = self._trails[r.session_id] = _Trail()
                    if len(self._trails) > _SESSION_TRAILS:
                        self._trails.popitem(last=False)
                else:
                    self._trails.move_to_end(r.session_id)
                trail.add(actual)
        return booked if self.shared and (r._db or booked) else None

    def _settle_shared(
        self, r: Reservation, actual: float, booked: list[tuple[str, str, float]]
    ) -> None:
        h, bc = budget_holds, budget_counters
        left = h.c.reserved - r.estimate_usd
        with self.engine.begin() as conn:
            # same lock order as reserve: counters (sorted), then holds
            if actual > 0:
                for bid, who, start in sorted(booked):
                    key = {"budget_id": bid, "subject": who, "period_start": start}
                    conn.execute(
                        sa.update(bc).where(*_match(bc, key)).values(spent=bc.c.spent + actual)
                    )
            for bid, who, start in r._db:
                key = {"budget_id": bid, "subject": who, "period_start": start}
                conn.execute(
                    sa.update(h)
                    .where(*_match(h, key), h.c.owner == self.owner)
                    .values(reserved=sa.case((left > 0, left), else_=0.0))
                )

    def _absorb_leftover_holds(self) -> None:
        """Turn the holds this daemon left behind (a crash mid-request) into spend,
        then drop them: those requests may have reached the provider and cost up to
        their estimate, and nothing of ours is in flight before we start serving."""
        h, bc = budget_holds, budget_counters
        mine = h.c.owner == self.owner
        with self.engine.begin() as conn:
            left = conn.execute(
                sa.select(h.c.budget_id, h.c.subject, h.c.period_start, h.c.reserved)
                .where(mine, h.c.reserved > 0)
                .order_by(h.c.budget_id, h.c.subject, h.c.period_start)
            ).all()
            for bid, who, start, held in left:  # counters first, sorted: reserve's order
                key = {"budget_id": bid, "subject": who, "period_start": start}
                conn.execute(sa.update(bc).where(*_match(bc, key)).values(spent=bc.c.spent + held))
            conn.execute(sa.delete(h).where(mine))

    def reload(self) -> int:
        """Pick up budgets another daemon created, changed or removed in the shared
        database. Returns how many changed here."""
        with self.engine.connect() as conn:
            rows = list(conn.execute(sa.select(budgets_table)).mappings())
        found = {
            r["id"]: Budget(**{k: r[k] for k in Budget.__slots__})  # type: ignore[attr-defined]
            for r in rows
        }
        now = self.clock()
        changed = 0
        for bid, b in found.items():
            cur = self._live.get(bid)
            if cur is not None and cur.budget == b:
                continue
            same_cover = cur is not None and (
                (cur.budget.scope, cur.budget.subject, cur.budget.period, cur.budget.timezone)
                == (b.scope, b.subject, b.period, b.timezone)
            )
            live = None if same_cover else self._load(b, now)
            with self._lock:
                if live is None and bid in self._live:
                    self._live[bid].budget = b
                else:
                    self._live[bid] = live or self._load(b, now)
            changed += 1
        with self._lock:
            for bid in [k for k in self._live if k not in found]:
                del self._live[bid]
                changed += 1
        return changed

    # ---- reporting ------------------------------------------------------------------

    def status(self, max_subjects: int = 50) -> list[dict[str, Any]]:
        """One row per budget and subject: spent, reserved, limits, period, state.
        Templates list their ``max_subjects`` biggest spenders this period. On a
        shared database, called off the event loop, it first waits (briefly) for
        this daemon's queued settles, so a finished request shows as spent."""
        now = self.clock()
        out: list[dict[str, Any]] = []
        if self.shared and not _on_event_loop():
            # read our own settles (queued by settle_nowait); the loop never waits here
            self.drain(_STATUS_DRAIN_S)
        shared = self._shared_counters() if self.shared else None
        with self._lock:
            for live in sorted(self._live.values(), key=lambda lv: lv.budget.created_at):
                self._roll(live, now)
                b = live.budget
                if shared is not None:
                    # every daemon's spend and holds; our mirror (loaded from the ledger)
                    # only for subjects no daemon has reserved for yet this period
                    counters = dict(live.counters)
                    counters.update(
                        (who, c)
                        for (bid, who, start), c in shared.items()
                        if bid == b.id and start == live.start
                    )
                    live = _Live(b, live.tz, live.start, live.end, counters)
                if b.scope == "global" or b.subject is not None:
                    key = "" if b.scope == "global" else b.subject
                    items = [(key, live.counters.get(key or "") or _Counter())]
                else:
                    items = sorted(
                        live.counters.items(),
                        key=lambda kv: kv[1].spent + kv[1].reserved,
                        reverse=True,
                    )[:max_subjects]
                for who, c in items:
                    out.append(self._row(live, who or None, c))
        return out

    def _shared_counters(self) -> dict[tuple[str, str, float], _Counter]:
        bc, h = budget_counters, budget_holds
        out: dict[tuple[str, str, float], _Counter] = {}
        with self.engine.connect() as conn:
            for bid, who, start, spent in conn.execute(
                sa.select(bc.c.budget_id, bc.c.subject, bc.c.period_start, bc.c.spent)
            ):
                out[(bid, who, float(start))] = _Counter(float(spent))
            for bid, who, start, held in conn.execute(
                sa.select(
                    h.c.budget_id, h.c.subject, h.c.period_start, sa.func.sum(h.c.reserved)
                ).group_by(h.c.budget_id, h.c.subject, h.c.period_start)
            ):
                c = out.setdefault((bid, who, float(start)), _Counter())
                c.reserved = float(held or 0.0)
        return out

    def _row(self, live: _Live, who: str | None, c: _Counter) -> dict[str, Any]:
        b = live.budget
        used = c.spent + c.reserved
        state: State = "ok"
        if b.hard_usd is not None and used >= b.hard_usd:
            state = "hard"
        elif b.soft_usd is not None and used >= b.soft_usd:
            state = "soft"
        return {
            **b.to_dict(),
            "subject": who,
            "template": b.scope != "global" and b.subject is None,
            "spent_usd": c.spent,
            "reserved_usd": c.reserved,
            "period_start": live.start,
            "period_end": None if math.isinf(live.end) else live.end,
            "state": state,
        }

    def forecast(self, session_id: str) -> dict[str, Any]:
        """Cost-to-finish estimate for a session.

        Model (deliberately simple, and only a guess): per-turn cost is the mean of
        the session's last 10 priced requests (recent, because each turn resends a
        growing context); the number of turns still to come is the number already
        taken (the Copernican guess: with no other knowledge, something that has
        lasted n steps is as likely to be in its first half as its second), capped
        at 200. Every priced request counts as a turn, sub-agent calls included.
        """
        with self._lock:
            trail = self._trails.get(session_id)
            snap = (trail.count, trail.total, list(trail.recent)) if trail else None
        if snap is None:
            snap = self._trail_from_ledger(session_id)
        turns, spent, recent = snap
        per_turn = sum(recent) / len(recent) if recent else 0.0
        remaining_turns = min(turns, _MAX_REMAINING_TURNS)
        remaining = per_turn * remaining_turns
        headroom = self.check(None, session_id).headroom_usd
        return {
            "session_id": session_id,
            "turns": turns,
            "spent_usd": spent,
            "cost_per_turn_usd": per_turn,
            "expected_remaining_turns": remaining_turns,
            "forecast_remaining_usd": remaining,
            "forecast_total_usd": spent + remaining,
            "budget_headroom_usd": None if math.isinf(headroom) else headroom,
            "turns_left_in_budget": (
                None if math.isinf(headroom) or per_turn <= 0 else int(headroom // per_turn)
            ),
            "method": "mean of last 10 turns x turns so far (capped at 200)",
        }

    def _trail_from_ledger(self, session_id: str) -> tuple[int, float, list[float]]:
        c = requests.c
        with self.engine.connect() as conn:
            n, total = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0)).where(
                    c.session_id == session_id, c.cost_usd > 0
                )
            ).one()
            recent = list(
                conn.execute(
                    sa.select(c.cost_usd)
                    .where(c.session_id == session_id, c.cost_usd > 0)
                    .order_by(c.started_at.desc())
                    .limit(_RECENT_TURNS)
                ).scalars()
            )
        return int(n), float(total), recent

    # ---- periods --------------------------------------------------------------------

    def sweep(self) -> int:
        """Roll every budget whose period has ended (a job calls this; every other
        call also rolls lazily). Returns how many rolled."""
        now = self.clock()
        with self._lock:
            return sum(self._roll(live, now) for live in self._live.values())

    @staticmethod
    def _roll(live: _Live, now: float) -> bool:
        if now < live.end:
            return False
        live.start, live.end = period_bounds(live.budget.period, live.tz, now)
        # Fresh counters: in-flight reservations keep pointing at the old ones, so
        # releasing them later cannot touch the new period.
        live.counters = {}
        return True

    def _load(self, b: Budget, now: float) -> _Live:
        tz = ZoneInfo(b.timezone)
        start, end = period_bounds(b.period, tz, now)
        live = _Live(b, tz, start, end)
        with self.engine.connect() as conn:
            for who, spent in self._ledger_spent(conn, b, start, end).items():
                live.counters[who] = _Counter(spent)
        return live

    @staticmethod
    def _ledger_spent(conn: Connection, b: Budget, start: float, end: float) -> dict[str, float]:
        """Spend per subject recorded in the ledger for [start, end); an interrupted
        row counts at least the estimate reserved for it (module docs, Crashes)."""
        c = requests.c
        window = [c.started_at >= start] + ([c.started_at < end] if math.isfinite(end) else [])
        charge = sa.case(
            (sa.and_(c.status == "interrupted", c.reserved_usd > c.cost_usd), c.reserved_usd),
            else_=c.cost_usd,
        )
        if b.scope == "global":
            spent = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(charge), 0.0)).where(*window)
            ).scalar_one()
            return {"": float(spent)}
        col = c.team_key_id if b.scope == "team_key" else c.session_id
        stmt = sa.select(col, sa.func.sum(charge)).where(*window).group_by(col)
        stmt = (
            stmt.where(col == b.subject) if b.subject is not None else stmt.where(col.is_not(None))
        )
        return {who: float(spent or 0.0) for who, spent in conn.execute(stmt)}


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _key(live: _Live, who: str) -> dict[str, Any]:
    return {"budget_id": live.budget.id, "subject": who, "period_start": live.start}


def _match(table: sa.Table, key: dict[str, Any]) -> list[Any]:
    return [table.c[k] == v for k, v in key.items()]


def _exceeded(live: _Live, c: _Counter, est: float) -> BudgetExceeded:
    b = live.budget
    assert b.hard_usd is not None
    left = max(b.hard_usd - c.spent - c.reserved, 0.0)
    per = {"daily": "per day", "weekly": "per week", "monthly": "per month", "total": "in total"}
    msg = (
        f"Switchman {b.label()} exhausted: hard limit ${b.hard_usd:.2f} {per[b.period]}, "
        f"${c.spent:.2f} spent"
        + (f" and ${c.reserved:.2f} held by requests in flight" if c.reserved > 0 else "")
        + f"; this request could cost up to ${est:.4f} but only ${left:.4f} is left."
    )
    if math.isfinite(live.end):
        when = datetime.fromtimestamp(live.end, live.tz).strftime("%Y-%m-%d %H:%M")
        msg += f" The budget resets at {when} ({b.timezone})."
    else:
        msg += " Raise the limit in the Switchman console to continue."
    return BudgetExceeded(
        b.scope,
        b.hard_usd,
        c.spent,
        msg,
        budget_id=b.id,
        reserved=c.reserved,
        estimate=est,
        resets_at=live.end,
    )


__all__ = [
    "Budget",
    "BudgetCheck",
    "BudgetExceeded",
    "Budgets",
    "Reservation",
    "estimate_usd",
    "period_bounds",
]
