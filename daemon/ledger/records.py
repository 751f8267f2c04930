"""What the proxy hands the ledger: one record when a request starts, one when it ends,
and (with budgets) one in between with the estimate reserved for it.

Token fields follow ``switchman_daemon.protocol.ir.Usage``: the four input kinds are
disjoint (``input_tokens`` is uncached and not written to cache; ``cache_write_tokens``
holds 5-minute writes only; ``cache_write_1h_tokens`` the 1-hour writes), so a request's
whole prompt is their sum.

Both classes are keyword-only so a caller can never shift a value into the wrong
column by position. Instances are handed to a writer thread: do not mutate one (or the
``decision`` mapping inside it) after passing it to the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ClientFormat = Literal["anthropic", "chat", "responses"]
RequestRole = Literal["main", "subagent", "utility", "compaction"]
Status = Literal["open", "ok", "error", "cancelled", "interrupted"]


@dataclass(slots=True, kw_only=True)
class RequestOpen:
    id: str
    started_at: float  # UTC epoch seconds
    client_format: ClientFormat
    requested_model: str
    client: str = ""  # user agent
    session_id: str | None = None
    agent_id: str | None = None
    request_role: str | None = None
    team_key_id: str | None = None
    served_model: str | None = None
    provider: str | None = None
    upstream_format: str | None = None
    stream: bool = False
    # The routing decision's reasons. A mapping is JSON-encoded on the writer thread,
    # which keeps serialisation off the event loop; a str is stored as given.
    decision: str | Mapping[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class RequestClose:
    id: str
    ended_at: float  # UTC epoch seconds
    status: Status = "ok"
    http_status: int | None = None
    # None keeps what the open recorded (the route may be known up front);
    # a value overwrites it (e.g. after a fallback to another model).
    served_model: str | None = None
    provider: str | None = None
    upstream_format: str | None = None
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    baseline_cost_usd: float | None = None
    ttfb_ms: float | None = None
    latency_ms: float | None = None
    attempts: int = 1
    error: str | None = None  # client-facing message only; never keys or upstream secrets
    # The decision as it ended (fallbacks append reasons); None keeps the open's.
    decision: str | Mapping[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class RequestHold:
    """The budget estimate reserved for a request before it went upstream. A request
    that never closes (a crash) is charged this against budgets after the restart:
    the provider may have billed it."""

    id: str
    reserved_usd: float
