"""BudgetService: budget definitions and their live status over ``ctx.budgets``.

Proto <-> domain:

* ``soft_usd`` / ``hard_usd`` of 0 mean "none" (the domain's None), as the proto says.
* ``scope_id`` is the domain's ``subject``: empty on a team-key or session budget
  means a template that applies to each key / session separately. In a status row
  of a template, ``budget.scope_id`` names the key or session that row is about.
* ``action`` is not stored: the daemon always downgrades past the soft limit and
  blocks past the hard one. Replies report BLOCK when a hard limit is set, else
  DOWNGRADE; the value in a request is ignored.
* An empty ``timezone`` means the daemon's local zone.

Writes are synchronous SQL, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from switchman_daemon.budgets import Budgets, period_bounds
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

SCOPES = {pb.BUDGET_SCOPE_GLOBAL: "global", pb.BUDGET_SCOPE_TEAM_KEY: "team_key",
          pb.BUDGET_SCOPE_SESSION: "session"}
PERIODS = {pb.BUDGET_PERIOD_DAILY: "daily", pb.BUDGET_PERIOD_WEEKLY: "weekly",
           pb.BUDGET_PERIOD_MONTHLY: "monthly", pb.BUDGET_PERIOD_TOTAL: "total"}
_SCOPE_PB = {v: k for k, v in SCOPES.items()}
_PERIOD_PB = {v: k for k, v in PERIODS.items()}
_STATE_PB = {"ok": pb.BUDGET_STATE_OK, "soft": pb.BUDGET_STATE_SOFT_EXCEEDED,
             "hard": pb.BUDGET_STATE_HARD_EXCEEDED}
# Run-rate forecasts treat at least this much of the period as elapsed, so a few
# cents spent in the first minutes after a reset do not project to hundreds.
_MIN_ELAPSED_S = 3600.0


def budget_msg(b: dict[str, Any]) -> pb.Budget:
    """A ``Budget.to_dict()`` (or status row) as a proto."""
    hard = b.get("hard_usd")
    return pb.Budget(
        id=b["id"], scope=_SCOPE_PB[b["scope"]], scope_id=b.get("subject") or "",
        period=_PERIOD_PB[b["period"]], timezone=b.get("timezone") or "",
        soft_usd=b.get("soft_usd") or 0.0, hard_usd=hard or 0.0,
        action=pb.BUDGET_ACTION_BLOCK if hard is not None else pb.BUDGET_ACTION_DOWNGRADE)


def status_rows(budgets: Budgets, ids: list[str] | None = None,
                now: float | None = None) -> list[dict[str, Any]]:
    """``Budgets.status()`` rows (in memory, no I/O), plus a zero row for each template
    that has no subject spending yet, so every budget appears at least once."""
    now = time.time() if now is None else now
    rows = budgets.status()
    seen = {r["id"] for r in rows}
    for b in budgets.list():
        if b.id not in seen:
            start, end = period_bounds(b.period, ZoneInfo(b.timezone), now)
            rows.append({**b.to_dict(), "template": True, "spent_usd": 0.0,
                         "reserved_usd": 0.0, "period_start": start,
                         "period_end": None if math.isinf(end) else end, "state": "ok"})
    if ids:
        wanted = set(ids)
        rows = [r for r in rows if r["id"] in wanted]
    return rows


def forecast_usd(budgets: Budgets, row: dict[str, Any], now: float) -> float:
    """Projected spend at the end of the row's period (may read the ledger).

    A session row uses the domain's session forecast (cost per recent turn x turns
    still expected); any other row extrapolates its run rate over the period.
    """
    spent = float(row["spent_usd"])
    if row["scope"] == "session" and row.get("subject"):
        return spent + float(budgets.forecast(row["subject"])["forecast_remaining_usd"])
    end = row.get("period_end")
    if end is None:  # a total budget has no period end to project to
        return spent
    start = float(row["period_start"])
    elapsed = min(max(now - start, _MIN_ELAPSED_S), end - start)
    return spent * (end - start) / elapsed if elapsed > 0 else spent


def status_msg(budgets: Budgets, row: dict[str, Any], now: float) -> pb.BudgetStatus:
    return pb.BudgetStatus(
        budget=budget_msg(row), spent_usd=row["spent_usd"], reserved_usd=row["reserved_usd"],
        period_start=row["period_start"], period_end=row.get("period_end") or 0.0,
        forecast_usd=forecast_usd(budgets, row, now), state=_STATE_PB[row["state"]])


def statuses(budgets: Budgets, ids: list[str] | None = None) -> list[pb.BudgetStatus]:
    """Every status row as a proto. Blocking (forecasts may read the ledger)."""
    now = time.time()
    return [status_msg(budgets, r, now) for r in status_rows(budgets, ids, now)]


class BudgetServicer(budgets_pb2_grpc.BudgetServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def _budgets(self) -> Budgets:
        assert self.daemon.ctx is not None
        return self.daemon.ctx.budgets

    def _local_zone(self) -> str:
        tz = self.daemon.rollups.tz if self.daemon.rollups is not None else None
        return getattr(tz, "key", None) or "UTC"

    async def SetBudget(self, request: pb.SetBudgetRequest, context: Any) -> pb.Budget:
        b = request.budget
        scope = SCOPES.get(b.scope)
        period = PERIODS.get(b.period)
        if scope is None:
            raise ValueError("budget scope is required (global, team_key or session)")
        if period is None:
            raise ValueError("budget period is required (daily, weekly, monthly or total)")
        assert self.daemon.ctx is not None
        ledger = self.daemon.ctx.ledger

        def run() -> Any:
            # A new budget loads its period's spend from the ledger: write the
            # batched rows of requests that just finished first, or they'd be missed.
            with contextlib.suppress(TimeoutError, RuntimeError):
                ledger.flush(timeout=2.0)
            return self._budgets.set(
                scope, period,  # type: ignore[arg-type]
                soft_usd=b.soft_usd or None, hard_usd=b.hard_usd or None,
                subject=b.scope_id or None, timezone=b.timezone or self._local_zone(),
                budget_id=b.id or None)

        saved = await asyncio.to_thread(run)
        return budget_msg(saved.to_dict())

    async def ListBudgets(self, request: pb.ListBudgetsRequest, context: Any
                          ) -> pb.ListBudgetsReply:
        return pb.ListBudgetsReply(budgets=[budget_msg(b.to_dict())
                                            for b in self._budgets.list()])

    async def RemoveBudget(self, request: pb.RemoveBudgetRequest, context: Any
                           ) -> pb.RemoveBudgetReply:
        if not await asyncio.to_thread(self._budgets.remove, request.id):
            raise LookupError(f"no budget {request.id!r}")
        return pb.RemoveBudgetReply()

    async def GetStatus(self, request: pb.GetBudgetStatusRequest, context: Any
                        ) -> pb.GetBudgetStatusReply:
        ids = list(request.ids)
        missing = [i for i in ids if self._budgets.get(i) is None]
        if missing:
            raise LookupError(f"no budget {', '.join(map(repr, missing))}")
        rows = await asyncio.to_thread(statuses, self._budgets, ids or None)
        return pb.GetBudgetStatusReply(statuses=rows)
