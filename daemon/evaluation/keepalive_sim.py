"""Cache keep-alive in the replay: the policy (``routing.keepalive``) on the
simulated clock, with refreshes served by the simulator's cache.

Per session main loop: after each turn that left its prefix cached, a check is
due ``margin`` seconds before the cache expires. If no turn came first, the
policy decides from the gaps seen so far (never from the trace's future); a
refresh replays the last request with one output token on the model that
served it (the sim bills the read and restarts the TTL), tells the strategy's
cache tracker, and schedules the next check. Sub-agent and utility prefixes
are not kept (they are not reused); a compaction replaces the history, so it
ends the chain. Checks still pending after the last record are run too, so
keeping finished sessions warm is paid for.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from switchman_daemon.routing.keepalive import KeepAlive
from switchman_daemon.routing.tracker import TTL_5M

if TYPE_CHECKING:
    from switchman_daemon.evaluation.replay import Env, Prepared, Served
    from switchman_daemon.models import ModelInfo


@dataclass(slots=True)
class _Stream:
    p: Prepared
    model: ModelInfo
    last_turn: float
    expires: float
    tokens: int
    gen: int  # a fresh number per scheduled check: stale checks are skipped
    refreshed: bool = False


class KeepAliveSim:
    def __init__(self, policy: KeepAlive | None = None, ttl: float = TTL_5M) -> None:
        self.policy = policy if policy is not None else KeepAlive()
        self.ttl = ttl
        self.streams: dict[str, _Stream] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.refreshes = 0
        self.declined = 0
        self.kept = 0  # returns that found the cache warm only thanks to a refresh
        self.cost = 0.0
        self._gen = itertools.count()

    def served(self, p: Prepared, m: ModelInfo, sv: Served) -> None:
        """A turn was served: learn the gap, reset the session's keep-alive."""
        if p.rec.role not in ("main", "compaction"):
            return
        sid = p.rec.session_id
        t = p.rec.t
        self.policy.gaps.turn(sid, t)
        old = self.streams.pop(sid, None)
        if old is not None and old.refreshed and t < old.expires:
            self.kept += 1
        cached = sv.read + sv.write
        if p.rec.role == "compaction" or cached <= 0:
            return
        st = _Stream(p, m, t, t + self.ttl, cached, next(self._gen))
        self.streams[sid] = st
        heapq.heappush(self.heap, (st.expires - self.policy.margin, st.gen, sid))

    def advance(self, until: float, env: Env, strategy: Any) -> float:
        """Run the checks due before ``until``; returns the dollars spent."""
        spent = 0.0
        while self.heap and self.heap[0][0] < until:
            when, gen, sid = heapq.heappop(self.heap)
            st = self.streams.get(sid)
            if st is None or st.gen != gen:
                continue
            v = self.policy.decide(sid, st.model, st.tokens, now=when, expires_at=st.expires,
                                   ttl=self.ttl)
            if not v.refresh:
                self.declined += 1
                del self.streams[sid]
                continue
            env.clock.now = when
            rp = dataclasses.replace(st.p, rec=dataclasses.replace(st.p.rec, output_tokens=1))
            sv = env.sim.serve(st.model, rp)
            spent += sv.cost
            self.refreshes += 1
            refreshed = getattr(strategy, "refreshed", None)
            if refreshed is not None:
                refreshed(rp, env, st.model, sv)
            st.expires = when + self.ttl
            st.refreshed = True
            st.gen = next(self._gen)
            heapq.heappush(self.heap, (st.expires - self.policy.margin, st.gen, sid))
        self.cost += spent
        return spent

    def finish(self, env: Env, strategy: Any) -> float:
        return self.advance(math.inf, env, strategy)
