"""StatsService: a live snapshot-then-deltas stream and time-bucketed rollups.

Watch is fed by the in-memory hub (``ctx.stats``): its ``subscribe()`` gives a
snapshot, then deltas coalesced by the hub; no database work per update.

The window: the hub counts from the daemon's start. When the requested ``since``
(default: the last 24 h) reaches back before that, the requests of earlier runs
[since, hub start) are read from the ledger once, when the stream opens, and added
to the hub's numbers. When ``since`` is later than the daemon's start the hub
cannot narrow its counters, so the numbers cover the daemon's whole run; either
way ``StatsUpdate.since`` states the window actually covered. Keyed lists leave
out requests without a model or session id, as the ledger queries always did.

Budgets: the snapshot carries every budget status row; a delta carries the rows
that changed. Budget changes without traffic (an admin edit, a period roll) are
noticed by polling the in-memory budget state every couple of seconds. A row that
disappears (budget removed) cannot be expressed in a delta, so the stream then
sends a fresh full snapshot built from its own state.

GetRollups reads the rollup table (``daemon.rollups.series``); buckets the jobs have
not finished yet (from the job's watermark on, or everything if they never ran)
are computed on demand first, so a fresh daemon's charts are not empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from switchman_daemon import __version__
from switchman_daemon.admin.servicers.budgets import status_msg, status_rows
from switchman_daemon.admin.servicers.ledger import decision_msg
from switchman_daemon.ledger import queries
from switchman_daemon.store_tables import read_watermark
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2, stats_pb2_grpc
from switchman_shared.proto_gen.switchman.v1 import stats_pb2 as pb

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon, DaemonContext

log = logging.getLogger("switchman.admin")

_RESOLUTIONS = {pb.RESOLUTION_MINUTE: "minute", pb.RESOLUTION_HOUR: "hour",
                pb.RESOLUTION_DAY: "day"}
_BUCKET_S = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
_DAY = 86400.0
_BUDGET_POLL_S = 2.0
_NONE_KEY = "-"  # the hub's key for "no model" / "no session"
_SUMS = ("requests", "errors", "cost_usd", "baseline_usd", "input_tokens",
         "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens")


def totals_msg(t: dict[str, Any]) -> pb.Totals:
    return pb.Totals(requests=t["requests"], errors=t["errors"], spend_usd=t["cost_usd"],
                     baseline_usd=t["baseline_usd"], savings_usd=t["savings_usd"],
                     cache_hit_rate=t["cache_hit_rate"], input_tokens=t["input_tokens"],
                     cache_read_tokens=t["cache_read_tokens"],
                     cache_write_tokens=t["cache_write_tokens"] + t["cache_write_1h_tokens"],
                     output_tokens=t["output_tokens"])


def decision_feed_msg(row: dict[str, Any]) -> pb.RecentDecision:
    """A ledger row (``queries.recent``) as a feed entry."""
    d = decision_msg(row.get("decision"))
    return pb.RecentDecision(
        request_id=row["id"], at=row["ended_at"] or row["started_at"],
        session_id=row["session_id"] or "", requested_model=row["requested_model"] or "",
        served_model=row["served_model"] or "", how=d.how if d else "",
        reasons=list(d.reasons) if d else [], cost_usd=row["cost_usd"] or 0.0)


def hub_decision_msg(r: dict[str, Any]) -> pb.RecentDecision:
    """A hub ``recent`` entry as a feed entry."""
    served = r.get("served_model") or ""
    return pb.RecentDecision(
        request_id=r["id"], at=r["at"], session_id=r.get("session_id") or "",
        requested_model=r.get("requested_model") or "",
        served_model="" if served == _NONE_KEY else served, how=r.get("how") or "",
        reasons=list(r.get("reasons") or ()), cost_usd=r.get("cost_usd") or 0.0)


def add_totals(base: dict[str, Any] | None, live: dict[str, Any]) -> dict[str, Any]:
    """Ledger totals (earlier runs) + hub totals (this run), ratios recomputed."""
    if not base:
        return live
    out: dict[str, Any] = {k: base[k] + live[k] for k in _SUMS}
    prompt = (out["input_tokens"] + out["cache_read_tokens"] + out["cache_write_tokens"]
              + out["cache_write_1h_tokens"])
    out["cache_hit_rate"] = out["cache_read_tokens"] / prompt if prompt else 0.0
    out["savings_usd"] = out["baseline_usd"] - out["cost_usd"]
    return out


def _keyed(d: dict[str, dict[str, Any]]) -> list[pb.KeyedTotals]:
    return [pb.KeyedTotals(key=k, totals=totals_msg(v)) for k, v in d.items()]


class _Base:
    """What the ledger says about [since, hub start): read once per stream."""

    def __init__(self, totals: dict[str, Any] | None = None,
                 by_model: dict[str, dict[str, Any]] | None = None,
                 by_session: dict[str, dict[str, Any]] | None = None,
                 decisions: list[pb.RecentDecision] | None = None) -> None:
        self.totals = totals
        self.by_model = by_model or {}
        self.by_session = by_session or {}
        self.decisions = decisions or []


class _View:
    """One stream's current full state (base + hub), and what it last sent of the
    budgets; deltas are computed against it."""

    def __init__(self, base: _Base, n_dec: int) -> None:
        self.base = base
        self.totals: dict[str, Any] = {}
        self.by_model: dict[str, dict[str, Any]] = {}
        self.by_session: dict[str, dict[str, Any]] = {}
        self.decisions: deque[pb.RecentDecision] = deque(maxlen=n_dec)  # newest first
        self.budgets: dict[tuple[str, str], dict[str, Any]] = {}
        self.budget_msgs: dict[tuple[str, str], budgets_pb2.BudgetStatus] = {}

    def apply(self, item: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
        """Fold a hub snapshot or delta in; returns the changed model and session
        keys and the new decisions (newest first)."""
        b = self.base
        if "totals" in item:
            self.totals = add_totals(b.totals, item["totals"])
        changed: list[list[str]] = []
        for name, mine, theirs in (("by_model", self.by_model, b.by_model),
                                   ("by_session", self.by_session, b.by_session)):
            keys = [k for k in item.get(name, {}) if k != _NONE_KEY]
            for k in keys:
                mine[k] = add_totals(theirs.get(k), item[name][k])
            changed.append(keys)
        for k in item.get("removed_sessions", ()):  # evicted from the hub's LRU
            if k in b.by_session:
                self.by_session[k] = b.by_session[k]
            else:
                self.by_session.pop(k, None)
        new = [hub_decision_msg(r) for r in reversed(item.get("recent", ()))]
        new = new[:self.decisions.maxlen]
        for m in reversed(new):
            self.decisions.appendleft(m)
        return changed[0], changed[1], new

    def snapshot_msg(self, since: float) -> pb.StatsUpdate:
        return pb.StatsUpdate(
            snapshot=True, at=time.time(), since=since, totals=totals_msg(self.totals),
            by_model=_keyed(self.by_model), by_session=_keyed(self.by_session),
            budgets=list(self.budget_msgs.values()), decisions=list(self.decisions),
            daemon_version=__version__)


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def _ctx(self) -> DaemonContext:
        assert self.daemon.ctx is not None
        return self.daemon.ctx

    # ---- Watch ------------------------------------------------------------------------

    def _ledger_base(self, since: float, until: float, n_dec: int) -> _Base:
        e = self._ctx.ledger.engine
        return _Base(queries.totals(e, since, until),
                     queries.totals_by(e, "served_model", since, until),
                     queries.totals_by(e, "session_id", since, until),
                     [decision_feed_msg(r) for r in
                      queries.recent(e, n_dec, started_before=until)])

    async def _budget_changes(self, view: _View) -> tuple[list[Any], bool]:
        """(changed status messages, whether a row disappeared) since the last call."""
        budgets = self._ctx.budgets
        now = time.time()
        rows = {(r["id"], r.get("subject") or ""): r for r in status_rows(budgets, now=now)}
        changed = {k: r for k, r in rows.items() if view.budgets.get(k) != r}
        gone = [k for k in view.budgets if k not in rows]
        msgs: dict[tuple[str, str], Any] = {}
        if changed:  # forecasts may read the ledger: off the loop
            msgs = await asyncio.to_thread(
                lambda: {k: status_msg(budgets, r, now) for k, r in changed.items()})
        view.budgets = rows
        for k in gone:
            view.budget_msgs.pop(k, None)
        view.budget_msgs.update(msgs)
        return list(msgs.values()), bool(gone)

    async def Watch(self, request: pb.WatchRequest, context: Any
                    ) -> AsyncIterator[pb.StatsUpdate]:
        hub = self._ctx.stats
        want = request.since or time.time() - _DAY
        n_dec = request.max_decisions or 20
        interval = max(request.interval_s or 1.0, 0.2)
        since = min(want, hub.started_at)  # see the module docstring
        base = _Base()
        if want < hub.started_at:
            base = await asyncio.to_thread(self._ledger_base, want, hub.started_at, n_dec)
        view = _View(base, n_dec)
        loop = asyncio.get_running_loop()
        feed = hub.subscribe()
        pending: asyncio.Future[dict[str, Any]] | None = None
        try:
            view.apply(await feed.__anext__())  # the hub's snapshot
            view.by_model = {**base.by_model, **view.by_model}  # keys only older runs used
            view.by_session = {**base.by_session, **view.by_session}
            for d in base.decisions[:n_dec - len(view.decisions)]:
                view.decisions.append(d)  # older runs' decisions after this run's
            await self._budget_changes(view)
            yield view.snapshot_msg(since)
            last = loop.time()
            while True:
                wait = last + interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if pending is None:
                    pending = asyncio.ensure_future(feed.__anext__())
                # The hub item stays pending across timeouts; meanwhile the budgets
                # are polled so admin edits show without traffic.
                done, _ = await asyncio.wait({pending}, timeout=_BUDGET_POLL_S)
                models: list[str] = []
                sessions: list[str] = []
                decisions: list[Any] = []
                got = pending in done
                if got:
                    item = pending.result()
                    pending = None
                    models, sessions, decisions = view.apply(item)
                budgets, gone = await self._budget_changes(view)
                if gone:
                    yield view.snapshot_msg(since)
                elif got or budgets:
                    yield pb.StatsUpdate(
                        at=time.time(), since=since, totals=totals_msg(view.totals),
                        by_model=_keyed({k: view.by_model[k] for k in models}),
                        by_session=_keyed({k: view.by_session[k] for k in sessions
                                           if k in view.by_session}),
                        budgets=budgets, decisions=decisions)
                else:
                    continue
                last = loop.time()
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await pending
            await feed.aclose()

    # ---- GetRollups -------------------------------------------------------------------

    def _series(self, resolution: str, since: float, until: float) -> list[dict[str, Any]]:
        rollups = self.daemon.rollups
        assert rollups is not None
        ctx = self._ctx
        mark = read_watermark(ctx.ledger.engine, f"rollup_{resolution}")
        # From the watermark on, buckets are partial or not computed at all.
        lo = since if mark is None else max(since, mark)
        if lo < until:
            try:
                with contextlib.suppress(TimeoutError, RuntimeError):
                    ctx.ledger.flush(timeout=1.0)  # include requests that just closed
                rollups.compute(resolution, lo, until)
            except Exception:  # e.g. racing the job on PostgreSQL: serve what is stored
                log.warning("on-demand %s rollup failed", resolution, exc_info=True)
        return rollups.series(resolution, since, until)

    async def GetRollups(self, request: pb.GetRollupsRequest, context: Any
                         ) -> pb.GetRollupsReply:
        resolution = _RESOLUTIONS.get(request.resolution, "hour")
        until = request.until or time.time()
        since = request.since or until - _BUCKET_S[resolution] * 48
        if since >= until:
            raise ValueError("since must be before until")
        rows = await asyncio.to_thread(self._series, resolution, since, until)
        return pb.GetRollupsReply(rollups=[
            pb.Rollup(bucket_start=r["bucket_start"], totals=totals_msg(r)) for r in rows])
