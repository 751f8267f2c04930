"""Who may send a request, and whether the budget allows it.

Team keys: a request carrying an ``sk-sw-`` key must present a live one, and
may only ask for the pools/models the key allows. Without one, the request is
let in only in local-open mode (loopback binding only). Budgets: soft limits
tell routing to downgrade; hard limits reject. Cost is reserved before
forwarding and settled from real usage when the flow closes, so concurrent
requests at the limit overspend by at most one estimate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from switchman_daemon.budgets import BudgetExceeded, Budgets, estimate_usd
from switchman_daemon.errors import ApiError, ErrorKind
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.signals import Signals
from switchman_daemon.teamkeys import TeamKeys, key_from_headers

# a reservation's output allowance: enough for a long answer, not max_tokens
# (Claude Code asks for 64K on every turn and would pin budgets needlessly)
_OUTPUT_ALLOWANCE = 4096


class Gate:
    def __init__(self, teamkeys: TeamKeys, budgets: Budgets, local_open: bool) -> None:
        self.teamkeys = teamkeys
        self.budgets = budgets
        self.local_open = local_open

    def admit(self, headers: Mapping[str, str], requested_model: str) -> str | None:
        """The team key id for the request (None in local-open mode), or ApiError."""
        key = key_from_headers(headers)
        if key is None:
            if self.local_open:
                return None
            raise ApiError(ErrorKind.authentication,
                           "a Switchman team key is required: send it as x-api-key or "
                           "'Authorization: Bearer sk-sw-...' (issue one with "
                           "'switchman teamkeys issue')")
        info = self.teamkeys.verify(key)
        if info is None:
            raise ApiError(ErrorKind.authentication,
                           "invalid, revoked or expired Switchman team key")
        if not info.allows(requested_model):
            raise ApiError(ErrorKind.permission,
                           f"team key {info.prefix}… may not use {requested_model!r} "
                           f"(allowed: {', '.join(info.pools or ())})")
        self.teamkeys.touch(info.id)
        return info.id

    def precheck(self, team_key_id: str | None, s: Signals) -> None:
        """Soft limit: routing downgrades. Hard limit already reached: reject now."""
        if not self.budgets.configured:
            return
        chk = self.budgets.check(team_key_id, s.session_id)
        if chk.state == "soft":
            s.extra["budget_soft"] = True
        elif chk.state == "hard":
            s.extra["budget_soft"] = True  # reserve() below gives the precise reason

    async def reserve(self, flow: Flow, team_key_id: str | None, body: dict[str, Any]) -> None:
        """Reserve the request's estimate (on a shared database, off the event loop)."""
        if not self.budgets.configured:
            return
        d = flow.decision
        assert d is not None
        max_out = body.get("max_tokens") or body.get("max_output_tokens") or \
            body.get("max_completion_tokens") or _OUTPUT_ALLOWANCE
        est = estimate_usd(flow.signals.approx_input_tokens,
                           min(int(max_out) if isinstance(max_out, int) else _OUTPUT_ALLOWANCE,
                               _OUTPUT_ALLOWANCE), d.model.prices)
        if d.predicted_cost is not None:
            est = max(est, d.predicted_cost)
        try:
            flow.notes["reservation"] = await self.budgets.areserve(
                team_key_id, flow.signals.session_id, est, request_id=flow.id)
        except BudgetExceeded as e:
            raise ApiError(ErrorKind.budget_exceeded, f"budget exceeded: {e}",
                           retry_after=e.retry_after_s(time.time())) from None


class BudgetAddon:
    """Settles each flow's reservation with what it really cost."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets

    def flow_opened(self, flow: Flow) -> None:
        pass

    def flow_closed(self, flow: Flow) -> None:
        res = flow.notes.get("reservation")
        if res is not None:  # on a shared database the transaction runs off the loop
            self.budgets.settle_nowait(res, flow.cost_usd)
