"""A Flow is one proxied request on its way through the daemon (in the manner of
mitmproxy's flows): everything known about it, filled in stage by stage, and
handed to addons (ledger, later budgets and stats) at open and close."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from switchman_daemon.protocol.ir import Usage
from switchman_daemon.routing.router import Decision
from switchman_daemon.routing.signals import Signals

_ids = random.Random(os.urandom(16))


@dataclass(slots=True)
class Flow:
    client_format: str
    signals: Signals
    # not a secret, just unique: a private generator seeded once from the OS
    # (uuid4's os.urandom per request is a syscall; the global random can be
    # re-seeded by other code, which would repeat ids)
    id: str = field(default_factory=lambda: f"{_ids.getrandbits(128):032x}")
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    decision: Decision | None = None
    served_model: str | None = None  # pool name of the model that answered
    provider: str | None = None
    upstream_format: str | None = None
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    status: str = "open"  # open | ok | error | cancelled
    http_status: int | None = None
    error: str | None = None
    ttfb_ms: float | None = None
    latency_ms: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def mark_first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = (time.perf_counter() - self.t0) * 1000.0


class Addon(Protocol):
    """Hooks called on the event loop; they must not block."""

    def flow_opened(self, flow: Flow) -> None: ...

    def flow_closed(self, flow: Flow) -> None: ...
