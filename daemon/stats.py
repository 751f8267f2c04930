"""Live numbers for the console: an addon that folds every closed flow into
in-memory aggregates, and streams them to any number of subscribers.

Hot path: ``flow_closed`` adds a handful of numbers to three aggregates (total,
model, session), stamps them with a version and, only if a subscriber is waiting,
sets one shared event. It never touches a subscriber's queue, so a slow console
cannot slow requests down.

Streaming: each subscriber remembers the version it last sent and, at most every
``min_interval`` seconds, sends a delta of what changed since: the aggregates
stamped later, the decisions appended later. A slow subscriber therefore just
gets a bigger, coalesced delta (latest state wins); nothing queues up.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from switchman_daemon.proxy.flow import Flow

_RECENT = 50
_SESSIONS = 500  # most recently active sessions kept live; older ones evicted


class _Agg:
    __slots__ = (
        "baseline_cost_usd",
        "cache_read_tokens",
        "cache_write_1h_tokens",
        "cache_write_tokens",
        "cancelled",
        "cost_usd",
        "errors",
        "input_tokens",
        "output_tokens",
        "requests",
        "version",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.cancelled = 0
        self.cost_usd = self.baseline_cost_usd = 0.0
        self.input_tokens = self.cache_read_tokens = self.cache_write_tokens = 0
        self.cache_write_1h_tokens = self.output_tokens = 0
        self.version = 0

    def to_dict(self) -> dict[str, Any]:
        prompt = (
            self.input_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
            + self.cache_write_1h_tokens
        )
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "cost_usd": self.cost_usd,
            "baseline_cost_usd": self.baseline_cost_usd,
            "baseline_usd": self.baseline_cost_usd,  # the admin plane's name for it
            "savings_usd": self.baseline_cost_usd - self.cost_usd,
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "output_tokens": self.output_tokens,
            "prompt_tokens": prompt,
            # share of the whole prompt (uncached + read + writes) read from cache
            "cache_hit_rate": self.cache_read_tokens / prompt if prompt else 0.0,
        }


class StatsHub:
    """Addon: ``daemon.ctx.addons.append(hub)``; the admin plane serves
    ``snapshot()`` and ``subscribe()``."""

    def __init__(self, min_interval: float = 0.25, max_sessions: int = _SESSIONS) -> None:
        self.min_interval = min_interval  # 0.25 s = at most ~4 updates a second
        self.max_sessions = max_sessions
        self.started_at = time.time()
        self.version = 0
        self.totals = _Agg()
        self.by_model: dict[str, _Agg] = {}
        self.by_session: OrderedDict[str, _Agg] = OrderedDict()
        self._recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=_RECENT)
        self._evicted: deque[tuple[int, str]] = deque(maxlen=_SESSIONS)
        self._wake: asyncio.Event | None = None
        self.subscribers = 0

    # ---- Addon protocol (event loop, hot path) ------------------------------------

    def flow_opened(self, flow: Flow) -> None:
        pass

    def flow_closed(self, flow: Flow) -> None:
        self.version = v = self.version + 1
        d = flow.decision
        model = flow.served_model or (d.model.name if d else None) or "-"
        session = flow.signals.session_id or "-"
        cost = flow.cost_usd
        base = flow.notes.get("baseline_cost_usd")
        if base is None:
            base = cost
        u = flow.usage
        err = flow.status not in ("ok", "cancelled")
        cancelled = flow.status == "cancelled"

        m = self.by_model.get(model)
        if m is None:
            m = self.by_model[model] = _Agg()
        s = self.by_session.get(session)
        if s is None:
            s = self.by_session[session] = _Agg()
            if len(self.by_session) > self.max_sessions:
                gone, _ = self.by_session.popitem(last=False)
                self._evicted.append((v, gone))
        else:
            self.by_session.move_to_end(session)
        for a in (self.totals, m, s):
            a.requests += 1
            a.errors += err
            a.cancelled += cancelled
            a.cost_usd += cost
            a.baseline_cost_usd += base
            a.input_tokens += u.input_tokens
            a.cache_read_tokens += u.cache_read_tokens
            a.cache_write_tokens += u.cache_write_tokens
            a.cache_write_1h_tokens += u.cache_write_1h_tokens
            a.output_tokens += u.output_tokens
            a.version = v
        # Keys follow the ledger's column names (what the admin plane maps already).
        self._recent.append((v, {
            "id": flow.id,
            "at": time.time(),
            "started_at": flow.started_at,
            "session_id": flow.signals.session_id,
            "requested_model": flow.signals.requested_model,
            "served_model": model,
            "how": d.how if d else "",
            "reasons": list(d.reasons) if d else [],
            "cost_usd": cost,
            "baseline_usd": base,
            "status": flow.status,
        }))
        w = self._wake
        if w is not None:
            self._wake = None
            w.set()

    # ---- reads ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain data."""
        return {
            "type": "snapshot",
            "version": self.version,
            "started_at": self.started_at,
            "totals": self.totals.to_dict(),
            "by_model": {k: a.to_dict() for k, a in self.by_model.items()},
            "by_session": {k: a.to_dict() for k, a in self.by_session.items()},
            "recent": [r for _, r in self._recent],
        }

    def delta(self, since: int) -> dict[str, Any]:
        """Only what changed after version ``since`` (empty parts left out)."""
        out: dict[str, Any] = {"type": "delta", "version": self.version}
        if self.totals.version > since:
            out["totals"] = self.totals.to_dict()
        models = {k: a.to_dict() for k, a in self.by_model.items() if a.version > since}
        if models:
            out["by_model"] = models
        # Newest sessions are at the end: stop at the first one not changed since.
        sessions: dict[str, Any] = {}
        for k in reversed(self.by_session):
            a = self.by_session[k]
            if a.version <= since:
                break
            sessions[k] = a.to_dict()
        if sessions:
            out["by_session"] = sessions
        removed = [k for ver, k in self._evicted if ver > since and k not in self.by_session]
        if removed:
            out["removed_sessions"] = removed
        recent = [r for ver, r in self._recent if ver > since]
        if recent:
            out["recent"] = recent
        return out

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """A snapshot, then coalesced deltas, forever (until the consumer stops)."""
        loop = asyncio.get_running_loop()
        self.subscribers += 1
        try:
            sent = self.version
            yield self.snapshot()
            last = loop.time()
            while True:
                if self.version == sent:
                    if self._wake is None:
                        self._wake = asyncio.Event()
                    await self._wake.wait()
                wait = last + self.min_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # let more changes pile up into one delta
                out = self.delta(sent)
                sent = out["version"]
                last = loop.time()
                yield out
        finally:
            self.subscribers -= 1


__all__ = ["StatsHub"]
