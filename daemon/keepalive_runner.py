"""Cache keep-alive in the running daemon (``[routing] keepalive = true``).

An addon remembers, per cache session, the last upstream request that left a
billed prompt cache behind (the bytes the relay sent, with the protocol
headers that shape it, never credentials). A periodic task asks the policy
(``routing/keepalive.py``) about sessions close to their cache's expiry and,
when the expected saving beats the cost, replays the request upstream with one
output token and no stream. The refresh is a ledger row of its own (role
``keepalive``, client ``switchman-keepalive``, cost from its real usage), is
reserved and settled against the budgets like any request, and moves the
router's cache-tracker entry on. Off: nothing is captured or kept.

Bounded: at most ``max_sessions`` sessions (LRU), dropped when their cache
expires, when the policy declines, or when a refresh fails. Sub-agent and
utility prefixes are not kept (they are rarely reused); a compaction ends the
session's chain. Anthropic requests with extended thinking are not refreshed:
``max_tokens: 1`` must exceed the thinking budget, and changing the thinking
parameters would invalidate the cached messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import orjson

from switchman_daemon.budgets import BudgetExceeded, Reservation
from switchman_daemon.ledger import RequestClose, RequestOpen
from switchman_daemon.pricing import cost_usd
from switchman_daemon.protocol import codec
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.keepalive import KeepAlive, Verdict, refresh_cost, rewrite_saving
from switchman_daemon.routing.prefix import Chain
from switchman_daemon.routing.tracker import TTL_1H, TTL_5M

if TYPE_CHECKING:
    from switchman_daemon.app import DaemonContext

log = logging.getLogger("switchman.keepalive")

CLIENT = "switchman-keepalive"
ROLE = "keepalive"
_ENDPOINT = {"anthropic": "anthropic", "chat": "chat", "responses": "responses"}
_RESPONSES_MIN_OUTPUT = 16  # OpenAI rejects max_output_tokens < 16 (protocol/responses.py)
_CREDENTIALS = frozenset({"x-api-key", "authorization", "api-key"})


@dataclass(slots=True)
class Kept:
    """What a refresh of one cache session needs."""

    sid: str  # Signals.cache_session
    model: str  # pool name of the model that served
    provider: str
    fmt: str  # upstream wire format
    body: bytes  # the upstream request as sent
    headers: dict[str, str]  # as sent, credentials removed
    chain: Chain | None
    tokens: int  # real tokens the provider cached
    ttl: float
    ttl_1h: bool
    expires_at: float  # on the runner's clock
    client_format: str
    requested_model: str
    session_id: str | None
    agent_id: str | None
    team_key_id: str | None
    refreshes: int = 0


def refresh_body(fmt: str, body: bytes, upstream_kind: str) -> bytes | None:
    """The same request with one output token and no stream (None: cannot)."""
    try:
        j = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(j, dict):
        return None
    j["stream"] = False
    if fmt == "anthropic":
        th = j.get("thinking")
        if isinstance(th, dict) and th.get("type") == "enabled":
            return None
        j["max_tokens"] = 1
    elif fmt == "chat":
        j.pop("stream_options", None)  # only allowed with stream: true
        j.pop("max_tokens", None)
        j.pop("max_completion_tokens", None)
        j.pop("n", None)
        # the relay's rule: OpenAI wants max_completion_tokens, compatible servers max_tokens
        j["max_completion_tokens" if upstream_kind == "openai" else "max_tokens"] = 1
    elif fmt == "responses":
        j["max_output_tokens"] = _RESPONSES_MIN_OUTPUT
        j["store"] = False
        j.pop("background", None)
    else:
        return None
    return orjson.dumps(j)


class KeepAliveRunner:
    """The addon that remembers refreshable sessions, and the timer that refreshes."""

    def __init__(self, ctx: DaemonContext, *, interval: float = 20.0, max_sessions: int = 256,
                 policy: KeepAlive | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.ctx = ctx
        self.interval = interval
        self.max_sessions = max_sessions
        self.policy = policy if policy is not None else KeepAlive()
        self._clock = clock
        self.kept: OrderedDict[str, Kept] = OrderedDict()
        self.refreshes = 0
        self.declined = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    # -- state ------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return bool(self.ctx.config.routing.keepalive)

    def config_applied(self) -> None:
        """A config change is live. Turned off: forget every kept session (and the
        request bytes it holds) now, not at the next pass; turned on: the next
        request is captured and the next pass refreshes."""
        if not self.enabled:
            self.kept.clear()

    def clock(self) -> float:
        """The router's cache-tracker clock (monotonic), so expiries compare."""
        return self._clock() if self._clock is not None else self.ctx.router.tracker.clock()

    def __len__(self) -> int:
        return len(self.kept)

    # -- addon ------------------------------------------------------------------

    def flow_opened(self, flow: Flow) -> None:
        pass

    def flow_closed(self, flow: Flow) -> None:
        sent = flow.notes.pop("upstream_sent", None)  # set by the relay only when enabled
        if not self.enabled:
            if self.kept:
                self.kept.clear()
            return
        s = flow.signals
        if s.role not in ("main", "compaction") or flow.status != "ok" \
                or flow.served_model is None:
            return
        sid = s.cache_session
        now = self.clock()
        self.policy.gaps.turn(sid, now)
        self.kept.pop(sid, None)
        if s.role == "compaction" or sent is None or flow.provider is None \
                or flow.upstream_format is None:
            return
        model = self.ctx.registry.models.get(flow.served_model)
        if model is None:
            return
        u = flow.usage
        cached = u.cache_read_tokens + u.cache_write_tokens + u.cache_write_1h_tokens
        if cached <= 0 or rewrite_saving(model, cached, ttl_1h=s.ttl_1h) <= 0:
            return  # nothing cached, or the provider does not bill writes above reads
        data, headers = sent
        ttl = TTL_1H if s.ttl_1h else TTL_5M
        self.kept[sid] = Kept(
            sid=sid, model=model.name, provider=flow.provider, fmt=flow.upstream_format,
            body=data,
            headers={k: v for k, v in headers.items() if k.lower() not in _CREDENTIALS},
            chain=flow.notes.get("chain"), tokens=cached, ttl=ttl, ttl_1h=s.ttl_1h,
            expires_at=now + ttl, client_format=flow.client_format,
            requested_model=s.requested_model, session_id=s.session_id, agent_id=s.agent_id,
            team_key_id=flow.notes.get("team_key_id"))
        while len(self.kept) > self.max_sessions:
            self.kept.popitem(last=False)

    # -- timer --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(),
                                                                name="switchman-keepalive")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.kept.clear()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("cache keep-alive pass failed")

    async def run_once(self, now: float | None = None) -> list[tuple[str, Verdict]]:
        """Check the sessions due before the next pass; returns (sid, verdict) per check."""
        if not self.enabled:
            self.kept.clear()
            return []
        t = self.clock() if now is None else now
        for sid in [k for k, e in self.kept.items() if e.expires_at <= t]:
            del self.kept[sid]  # already cold: nothing left to keep
        lead = self.policy.margin + self.interval
        due = [e for e in self.kept.values() if e.expires_at - t <= lead]
        out: list[tuple[str, Verdict]] = []
        jobs = []
        for e in due:
            model = self.ctx.registry.models.get(e.model)
            if model is None or e.provider not in self.ctx.upstreams:
                self.kept.pop(e.sid, None)
                continue
            v = self.policy.decide(e.sid, model, e.tokens, now=t, expires_at=e.expires_at,
                                   ttl=e.ttl, ttl_1h=e.ttl_1h)
            out.append((e.sid, v))
            if not v.refresh:
                self.declined += 1
                self.kept.pop(e.sid, None)
                log.debug("keep-alive declined for %s: %s", e.sid, v.reason)
                continue
            jobs.append(self._refresh(e, t, v))
        if jobs:
            await asyncio.gather(*jobs)
        return out

    async def _refresh(self, e: Kept, now: float, v: Verdict) -> None:
        ctx = self.ctx
        up = ctx.upstreams.get(e.provider)
        model = ctx.registry.models.get(e.model)
        data = refresh_body(e.fmt, e.body, up.kind) if up is not None else None
        if up is None or model is None or data is None:
            self.kept.pop(e.sid, None)
            return
        res: Reservation | None = None
        if ctx.budgets.configured:
            try:
                res = await ctx.budgets.areserve(e.team_key_id, e.session_id,
                                                 refresh_cost(model, e.tokens))
            except BudgetExceeded as err:
                log.info("keep-alive for %s skipped: budget exceeded (%s)", e.sid, err)
                self.kept.pop(e.sid, None)
                return
        rid = secrets.token_hex(16)
        ctx.ledger.open(RequestOpen(
            id=rid, started_at=time.time(), client_format=e.client_format,  # type: ignore[arg-type]
            requested_model=e.requested_model, client=CLIENT, session_id=e.session_id,
            agent_id=e.agent_id, request_role=ROLE, team_key_id=e.team_key_id,
            served_model=model.name, provider=up.name, upstream_format=e.fmt, stream=False,
            decision={"model": model.name, "how": ROLE, "role": ROLE, "fallbacks": [],
                      "reasons": [f"cache keep-alive: {v.reason}"]}))
        t0 = time.perf_counter()
        usage = Usage()
        status, http_status, error = "error", None, None
        try:
            headers = up.headers(e.fmt, e.headers)
            resp = await up.post(_ENDPOINT[e.fmt], data, headers)
            try:
                http_status = resp.status
                raw = await resp.read()
            finally:
                resp.release()
            if http_status == 200:
                usage = codec(e.fmt).usage_from_response(orjson.loads(raw))
                status = "ok"
            else:
                error = f"upstream returned HTTP {http_status}"
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as err:
            error = f"keep-alive refresh failed: {type(err).__name__}"
        cost = cost_usd(usage, model.prices)
        ms = (time.perf_counter() - t0) * 1000.0
        ctx.ledger.close(RequestClose(
            id=rid, ended_at=time.time(), status=status,  # type: ignore[arg-type]
            http_status=http_status, served_model=model.name, provider=up.name,
            upstream_format=e.fmt, input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            output_tokens=usage.output_tokens, cost_usd=cost, ttfb_ms=ms, latency_ms=ms,
            attempts=1, error=error))
        if res is not None:
            ctx.budgets.settle_nowait(res, cost)
        if status != "ok":
            self.failed += 1
            self.kept.pop(e.sid, None)
            log.info("keep-alive for %s failed: %s", e.sid, error)
            return
        self.refreshes += 1
        if self.kept.get(e.sid) is not e:
            return  # a turn of the session landed meanwhile: its own usage is newer
        # the provider's answer moves the router's belief (no session trend: not a turn)
        ctx.router.tracker.observe(
            e.sid, model.name, model.min_cache_prefix,
            e.chain if e.chain is not None else Chain([], []), usage,
            caching_expected=False, ttl=e.ttl, now=now, update_session=False)
        cached = usage.cache_read_tokens + usage.cache_write_tokens + usage.cache_write_1h_tokens
        if cached <= 0:
            self.kept.pop(e.sid, None)  # the cache was gone after all
            return
        e.tokens, e.expires_at = cached, now + e.ttl
        e.refreshes += 1


__all__ = ["CLIENT", "ROLE", "KeepAliveRunner", "Kept", "refresh_body"]
