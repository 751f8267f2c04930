"""Cache keep-alive with an expected-value gate (issue #3, item 5).

A session idle near its prompt cache's expiry can keep the prefix warm with a
minimal refresh: the same prefix again with ``max_tokens: 1``, billed as a
cache read of the prefix plus one output token (a hit restarts the TTL). The
refresh pays off only if the next turn arrives after the cache would have
expired but before the refreshed entry does, when it saves re-writing the
prefix:

    P(next turn in that window | idle so far) x prefix x (write - read)
        >  prefix x read + output

With Anthropic's 5-minute prices (write 1.25x, read 0.1x input) the break-even
is P > 0.1 / 1.15, about 9%; with reads at 0.5x and free writes it never pays.

P comes from the session's own inter-turn gaps (empirical, conditional on the
idle time so far), shrunk toward the population's gaps. The population counts
sessions that went quiet for ``max_idle`` as gaps that never ended, so a
finished session stops being kept warm; ``max_idle`` caps every chain anyway.
Off by default (``[routing] keepalive = false``); ``switchman eval`` simulates it.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

from switchman_daemon.models import ModelInfo

_M = 1_000_000.0
REFRESH_OUTPUT_TOKENS = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    refresh: bool
    p_return: float  # P(next turn lands in the window the refresh buys)
    saving: float  # expected dollars saved by refreshing
    cost: float  # dollars the refresh costs
    reason: str


def refresh_cost(m: ModelInfo, tokens: int) -> float:
    """A ``max_tokens: 1`` replay of a ``tokens``-token cached prefix."""
    return (tokens * m.prices.cache_read + REFRESH_OUTPUT_TOKENS * m.prices.output) / _M


def rewrite_saving(m: ModelInfo, tokens: int, *, ttl_1h: bool = False) -> float:
    """What the next turn saves by reading the prefix instead of re-writing it."""
    write = m.prices.cache_write_1h if ttl_1h else m.prices.cache_write_5m
    return max(0.0, tokens * (write - m.prices.cache_read) / _M)


def gate(p_return: float, m: ModelInfo, tokens: int, *, ttl_1h: bool = False,
         min_saving: float = 0.0) -> Verdict:
    """The expected-value test: refresh iff P x saving - cost > ``min_saving``."""
    cost = refresh_cost(m, tokens)
    saving = p_return * rewrite_saving(m, tokens, ttl_1h=ttl_1h)
    ok = saving - cost > min_saving
    why = (f"P(return in window)={p_return:.2f}: expected saving ${saving:.4f} "
           f"{'>' if ok else '<='} refresh ${cost:.4f}"
           + (f" + ${min_saving:.4f} margin" if min_saving else ""))
    return Verdict(ok, p_return, saving, cost, why)


class GapModel:
    """Inter-turn gaps per session and across sessions (all bounded).

    Every idle period ends up counted once: as the gap it turned out to be, or,
    once a session has been quiet for ``horizon`` seconds, as a gap that never
    ended. Sessions quiet for less are censored: one already quiet past the
    window asked about counts as a miss; one not yet is left out.
    """

    def __init__(self, *, horizon: float = 3600.0, per_session: int = 64,
                 population: int = 4096, prior_weight: float = 4.0, prior_p: float = 0.05,
                 max_sessions: int = 20_000) -> None:
        self.horizon = horizon
        self.gaps: dict[str, deque[float]] = {}
        self.last_turn: OrderedDict[str, float] = OrderedDict()  # oldest first
        self.population: deque[float] = deque(maxlen=population)
        self.per_session = per_session
        self.max_sessions = max_sessions
        self.prior_weight = prior_weight  # how many own gaps the population counts as
        # with no evidence at all: below break-even, so nothing is refreshed blind
        self.prior_p = prior_p

    def turn(self, sid: str, t: float) -> None:
        """A turn of session ``sid`` at time ``t`` (monotonic per session)."""
        prev = self.last_turn.pop(sid, None)
        if prev is not None:
            g = self.gaps.get(sid)
            if g is None:
                g = self.gaps[sid] = deque(maxlen=self.per_session)
            g.append(t - prev)
            self.population.append(t - prev)
        self.last_turn[sid] = t
        if len(self.last_turn) > self.max_sessions:
            self._end(next(iter(self.last_turn)))

    def _end(self, sid: str) -> None:
        self.last_turn.pop(sid, None)
        self.gaps.pop(sid, None)
        self.population.append(math.inf)

    def expire(self, now: float) -> None:
        """Sessions quiet for ``horizon``: gone (an infinite gap each)."""
        while self.last_turn:
            sid, t = next(iter(self.last_turn.items()))
            if now - t <= self.horizon:
                break
            self._end(sid)

    def p_between(self, sid: str, now: float, lo: float, hi: float) -> float:
        """P(lo < gap <= hi | gap > idle) for session ``sid``'s current gap,
        idle = now - its last turn, ``idle <= lo < hi`` (seconds since it)."""
        self.expire(now)
        idle = now - self.last_turn.get(sid, now)
        own = [g for g in self.gaps.get(sid, ()) if g > idle]
        pop = [g for g in self.population if g > idle]
        pop_hits = sum(lo < g <= hi for g in pop)
        pop_n = len(pop) + sum(now - t > hi for s, t in self.last_turn.items() if s != sid)
        w = self.prior_weight / pop_n if pop_n else 0.0
        hits = sum(lo < g <= hi for g in own) + w * pop_hits
        return (hits + self.prior_p) / (len(own) + w * pop_n + 1.0)  # one pseudo-observation


class KeepAlive:
    """Decides, for a session idle near expiry, whether to refresh its cache."""

    def __init__(self, gaps: GapModel | None = None, *, margin: float = 15.0,
                 max_idle: float = 3600.0, min_saving: float = 0.0) -> None:
        self.gaps = gaps if gaps is not None else GapModel(horizon=max_idle)
        self.margin = margin  # refresh this long before expiry (network, clock skew)
        self.max_idle = max_idle
        self.min_saving = min_saving

    def decide(self, sid: str, m: ModelInfo, tokens: int, *, now: float, expires_at: float,
               ttl: float, ttl_1h: bool = False) -> Verdict:
        """Refresh ``sid``'s ``tokens``-token prefix on ``m`` now? Its cache
        expires at ``expires_at``; a refresh keeps it until ``now + ttl``."""
        last = self.gaps.last_turn.get(sid, now)
        if now + ttl - last > self.max_idle:
            return Verdict(False, 0.0, 0.0, refresh_cost(m, tokens),
                           f"idle {now - last:.0f}s: past the {self.max_idle:.0f}s keep-alive cap")
        p = self.gaps.p_between(sid, now, expires_at - last, now + ttl - last)
        return gate(p, m, tokens, ttl_1h=ttl_1h, min_saving=self.min_saving)
