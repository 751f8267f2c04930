"""Inspectable simulator state (exposed as ``app[SIM_STATE]``)."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from switchman_shared.catalog import CatalogModel

from .cache import CacheTable


@dataclass
class Fault:
    """An injected failure consumed by matching requests.

    `status` answers with that HTTP error; `drop` cuts the stream (or the
    connection, when not streaming); `delay_ms` delays the first byte.
    """

    status: int | None = None
    drop: bool = False
    delay_ms: float = 0.0
    model: str | None = None  # None matches every model
    times: int = 1  # requests affected; negative = until removed


@dataclass(frozen=True, slots=True)
class SimRecord:
    """Provider-truth usage of one request, for comparison with a ledger."""

    model: str
    api: str  # "messages" | "chat" | "responses"
    status: int
    stream: bool
    input_tokens: int = 0  # uncached input (Anthropic meaning)
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output_tokens: int = 0


@dataclass
class SimState:
    models: dict[str, CatalogModel]
    time_scale: float
    clock: Callable[[], float]
    requests: Counter[str] = field(default_factory=Counter)  # generation calls per model
    count_tokens_calls: Counter[str] = field(default_factory=Counter)
    directive_hits: Counter[str] = field(default_factory=Counter)  # fail-first counts
    faults: list[Fault] = field(default_factory=list)
    history: deque[SimRecord] = field(default_factory=lambda: deque(maxlen=1000))
    anthropic_cache: CacheTable = field(init=False)
    openai_cache: CacheTable = field(init=False)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.anthropic_cache = CacheTable(self.clock)
        self.openai_cache = CacheTable(self.clock)

    def inject_fault(
        self,
        status: int | None = None,
        *,
        model: str | None = None,
        times: int = 1,
        drop: bool = False,
        delay_ms: float = 0.0,
    ) -> Fault:
        fault = Fault(status=status, drop=drop, delay_ms=delay_ms, model=model, times=times)
        self.faults.append(fault)
        return fault

    def take_fault(self, model: str) -> Fault | None:
        for fault in self.faults:
            if fault.model in (None, model) and fault.times != 0:
                if fault.times > 0:
                    fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def next_id(self) -> str:
        self._seq += 1
        return f"{self._seq:08d}"

    def reset(self) -> None:
        """Forget counters, faults, history and every cache entry."""
        self.requests.clear()
        self.count_tokens_calls.clear()
        self.directive_hits.clear()
        self.faults.clear()
        self.history.clear()
        self.anthropic_cache.clear()
        self.openai_cache.clear()

    async def sleep(self, seconds: float, *, scaled: bool = True) -> None:
        """Pacing delay; `scaled` delays vanish when time_scale == 0."""
        delay = seconds * self.time_scale if scaled else seconds
        if delay > 0:
            await asyncio.sleep(delay)


SIM_STATE: web.AppKey[SimState] = web.AppKey("switchman_sim_state", SimState)
