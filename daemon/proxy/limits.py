"""Per-provider concurrency limits (``[providers.X] max_concurrency``).

A slot is taken per upstream attempt and held until the attempt is over: for
a stream, until its last byte (or the client's disconnect). A request whose
candidate provider is full moves to its next candidate; when every candidate
it has left is full, it waits (bounded) for a slot on any of them.

Only providers with a limit have a ``Limiter``; with none configured the relay
does one truth test of an empty dict per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from switchman_shared.config_schema import ProviderConfig


class Limiter:
    __slots__ = ("_owner", "in_use", "limit", "name")

    def __init__(self, owner: ProviderLimits, name: str, limit: int) -> None:
        self._owner = owner
        self.name = name
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1
        self._owner._wake()


class ProviderLimits:
    def __init__(self) -> None:
        # provider name -> limiter, only for providers with max_concurrency
        self.by_provider: dict[str, Limiter] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def configure(self, providers: Mapping[str, ProviderConfig]) -> None:
        """Apply (new) limits; a kept provider keeps its slots in use, so
        requests in flight across a config change still count."""
        old = self.by_provider
        new: dict[str, Limiter] = {}
        for name, pc in providers.items():
            if pc.max_concurrency is None:
                continue
            lim = old.get(name)
            if lim is None:
                lim = Limiter(self, name, pc.max_concurrency)
            else:
                lim.limit = pc.max_concurrency
            new[name] = lim
        self.by_provider = new
        self._wake()  # a raised limit may have room now

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return sum(not f.done() for f in self._waiters)

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    async def acquire_any(self, limiters: Sequence[Limiter], timeout: float) -> int | None:
        """Wait up to ``timeout`` s for a slot on any of ``limiters`` (the first
        in order with room wins); its index, or None on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            for i, lim in enumerate(limiters):
                if lim.try_acquire():
                    return i
            left = end - loop.time()
            if left <= 0:
                return None
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                async with asyncio.timeout(left):
                    await fut
            except TimeoutError:
                pass
            finally:
                if not fut.done():
                    fut.cancel()
                    # a long-lived waiter list must not grow with abandoned futures
                    self._waiters = [f for f in self._waiters if not f.done()]
