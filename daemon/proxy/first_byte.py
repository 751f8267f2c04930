"""Latency fallback: abandon an upstream attempt whose first byte is late.

A ``FirstByteGuard`` is armed around one attempt. When its bound passes and
the upstream has sent no body byte yet (no response headers, or headers but
no first event), it cancels the attempt's task; the relay turns that into an
ordinary failure and tries the next candidate. Nothing reaches the client
before the upstream's first body byte, so a fired guard never cuts a stream
the client has started to read; once that byte is in, the guard stands down.
"""

from __future__ import annotations

import asyncio

import aiohttp


class FirstByteGuard:
    __slots__ = ("_handle", "_task", "bound", "fired", "response")

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.fired = False
        self.response: aiohttp.ClientResponse | None = None
        self._task = asyncio.current_task()
        self._handle = asyncio.get_running_loop().call_later(bound, self._fire)

    def _fire(self) -> None:
        r = self.response
        if r is not None and (r.content.total_bytes > 0 or r.content.at_eof()):
            return  # the first byte is in (or the body ended): too late to cut
        if self._task is not None and not self._task.done():
            self.fired = True
            self._task.cancel()

    def expired(self) -> bool:
        """Was a CancelledError this guard's own doing (and only its)? Then the
        cancellation is absorbed, as ``asyncio.timeout`` does."""
        if not self.fired or self._task is None:
            return False
        self.fired = False
        return self._task.uncancel() == 0

    def disarm(self) -> None:
        self._handle.cancel()
