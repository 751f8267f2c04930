"""The router's belief about each provider's prompt cache, per (session, model).

What the router sent last (its prefix chain), how much of it the provider
cached, and until when. Observed usage corrects the belief: the tokens the
provider billed as cache reads and writes replace the estimate, and prompts
that should have been cached but were not teach a higher minimum cacheable
prefix for that model (providers' docs and behaviour disagree; ROUTING-FACTS).
Written independently of the simulator, which plays the provider's truth.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from switchman_daemon.protocol.ir import Usage
from switchman_daemon.routing.prefix import Chain

TTL_5M = 300.0
TTL_1H = 3600.0


@dataclass(slots=True)
class CacheEntry:
    chain: Chain
    cached_tokens: int  # real tokens the provider holds for this prefix
    scale: float  # real tokens per estimated token, from the last usage
    expires_at: float
    ttl: float


@dataclass(slots=True)
class SessionStats:
    """What a session has looked like so far (for horizons and stickiness)."""

    turns: int = 0
    last_model: str | None = None
    last_task: str | None = None  # turn id / task marker the model was chosen for
    last_seen: float = 0.0
    avg_output: float = 500.0  # TraceLab: ~523 output tokens per call
    avg_growth: float = 2000.0  # prompt tokens added per turn
    last_prompt: int = 0
    window_id: str | None = None  # Codex context window; changes after compaction
    last_chain: Chain | None = None  # for incremental chain building


@dataclass
class CacheTracker:
    clock: Callable[[], float] = time.monotonic
    max_entries: int = 20_000
    max_sessions: int = 20_000
    _entries: OrderedDict[tuple[str, str], CacheEntry] = field(default_factory=OrderedDict)
    _sessions: OrderedDict[str, SessionStats] = field(default_factory=OrderedDict)
    # learned minimum cacheable prefix per model (starts at the catalog's)
    min_prefix: dict[str, int] = field(default_factory=dict)

    # -- reads (decision path) ------------------------------------------------

    def session(self, sid: str) -> SessionStats:
        st = self._sessions.get(sid)
        if st is None:
            st = self._sessions[sid] = SessionStats()
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(sid)
        return st

    def peek_session(self, sid: str) -> SessionStats | None:
        return self._sessions.get(sid)

    def warm_tokens(self, sid: str, model: str, chain: Chain, now: float | None = None) -> int:
        """Real tokens of ``chain``'s prefix that ``model`` should still have cached."""
        e = self._entries.get((sid, model))
        if e is None:
            return 0
        t = self.clock() if now is None else now
        if t >= e.expires_at:
            return 0
        common = chain.common_tokens(e.chain)
        if common <= 0:
            return 0
        return min(int(common * e.scale), e.cached_tokens)

    def expires_in(self, sid: str, model: str, now: float | None = None) -> float:
        e = self._entries.get((sid, model))
        if e is None:
            return 0.0
        t = self.clock() if now is None else now
        return max(0.0, e.expires_at - t)

    def min_prefix_for(self, model: str, catalog_min: int) -> int:
        return self.min_prefix.get(model, catalog_min)

    # -- writes (after a response) --------------------------------------------

    def observe(
        self,
        sid: str,
        model: str,
        catalog_min: int,
        chain: Chain,
        usage: Usage,
        *,
        caching_expected: bool,
        ttl: float = TTL_5M,
        now: float | None = None,
        update_session: bool = True,
    ) -> None:
        """Record what the provider reported for a request sent to ``model``
        (``update_session=False`` for counterfactual shadows such as savings)."""
        t = self.clock() if now is None else now
        prompt = usage.prompt_tokens
        cached = usage.cache_read_tokens + usage.cache_write_tokens + usage.cache_write_1h_tokens
        scale = prompt / chain.total_tokens if chain.total_tokens and prompt else 1.0
        key = (sid, model)
        if cached > 0:
            self._entries[key] = CacheEntry(chain, cached, scale, t + ttl, ttl)
            self._entries.move_to_end(key)
            if cached < self.min_prefix.get(model, catalog_min):
                # the provider cached less than we thought it could: the real
                # threshold is lower than believed
                self.min_prefix[model] = max(cached, 1)
        else:
            self._entries.pop(key, None)
            threshold = self.min_prefix.get(model, catalog_min)
            if caching_expected and prompt >= threshold:
                # long enough by the docs, yet nothing cached: learn a higher bar
                # (users saw Sonnet 4.6 start caching at 2,048, not 1,024)
                self.min_prefix[model] = min(prompt + 1, 4 * max(catalog_min, 1024))
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        if not update_session:
            return
        st = self.session(sid)
        if st.turns:
            growth = max(0, prompt - st.last_prompt)
            st.avg_growth = 0.8 * st.avg_growth + 0.2 * growth
            st.avg_output = 0.8 * st.avg_output + 0.2 * usage.output_tokens
        else:
            st.avg_output = float(usage.output_tokens or st.avg_output)
        st.turns += 1
        st.last_prompt = prompt
        if chain.links:
            st.last_chain = chain
        st.last_seen = t

    def break_session(self, sid: str) -> None:
        """Compaction rewrote the history: every cache entry of the session is cold."""
        for key in [k for k in self._entries if k[0] == sid]:
            del self._entries[key]

    def sweep(self, now: float | None = None, idle_s: float = 2 * TTL_1H) -> int:
        """Drop expired entries and idle sessions; returns entries dropped."""
        t = self.clock() if now is None else now
        dead = [k for k, e in self._entries.items() if e.expires_at <= t]
        for k in dead:
            del self._entries[k]
        for sid in [s for s, st in self._sessions.items() if t - st.last_seen > idle_s]:
            del self._sessions[sid]
        return len(dead)

    def __len__(self) -> int:
        return len(self._entries)
