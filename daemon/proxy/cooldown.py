"""Cooldown of failing deployments.

A deployment (a model on one provider) that fails with a retryable error
(429, 5xx, a timeout, a connection error, a first byte past its bound)
``failures`` times within ``window_s`` seconds is skipped by new requests for
``cooldown_s``; a 429/503/529 carrying Retry-After cools it for that long at
once. A success ends the cooldown and clears the count. Cooling deployments
are only ever moved to the end of a request's candidates, never dropped:
nothing is refused only because of a cooldown.

Per request, with nothing cooling, this costs one truth test of a dict.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# A Retry-After longer than this is read as "a while", not taken literally.
MAX_RETRY_AFTER_S = 600.0
_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})


@dataclass(slots=True)
class Cooling:
    until: float
    why: str


class Cooldowns:
    def __init__(self, failures: int = 3, window_s: float = 60.0, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.counts: dict[Hashable, deque[float]] = {}
        # what is cooling now: read per request, so empty when nothing is
        self.cooling: dict[Hashable, Cooling] = {}

    def configure(self, failures: int, window_s: float, cooldown_s: float) -> None:
        """New settings; the failures seen so far are kept (turned off: dropped)."""
        self.failures, self.window_s, self.cooldown_s = failures, window_s, cooldown_s
        if failures <= 0:
            self.counts.clear()
            self.cooling.clear()

    def remaining(self, key: Hashable) -> tuple[float, str] | None:
        """(seconds left, why) while ``key`` cools, else None."""
        c = self.cooling.get(key)
        if c is None:
            return None
        left = c.until - self.clock()
        if left <= 0:
            del self.cooling[key]  # over: the next request tries it again
            return None
        return left, c.why

    def failed(self, key: Hashable, status: int | None, retry_after: float | None,
               message: str) -> bool:
        """Count a retryable failure; True if ``key`` is (now) cooling."""
        if self.failures <= 0:
            return False
        now = self.clock()
        q = self.counts.get(key)
        if q is None:
            q = self.counts[key] = deque()
        q.append(now)
        horizon = now - self.window_s
        while q and q[0] <= horizon:
            q.popleft()
        if retry_after is not None and retry_after > 0 and status in _RETRY_AFTER_STATUSES:
            span = min(retry_after, MAX_RETRY_AFTER_S)
            why = f"Retry-After {retry_after:g}s ({message})"
        elif len(q) >= self.failures:
            span = self.cooldown_s
            why = f"{len(q)} failures within {self.window_s:g}s, last: {message}"
        else:
            return False
        q.clear()  # counted afresh once the cooldown is over
        if span <= 0:
            return False
        prev = self.cooling.get(key)
        if prev is None or prev.until < now + span:
            self.cooling[key] = Cooling(now + span, why)
        return True

    def succeeded(self, key: Hashable) -> None:
        if self.counts:
            self.counts.pop(key, None)
        if self.cooling:
            self.cooling.pop(key, None)
