"""Expected cost in dollars of serving a request on a candidate model, cache included.

Each token kind is priced by the model's own table (cache reads 0.025x-0.5x,
writes 1.25x/2x or free, never a fixed multiple). The switching term falls out
of comparing candidates: the warm model reads the prefix it holds, any other
model writes the whole prefix again.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchman_daemon.models import ModelInfo

_M = 1_000_000.0


@dataclass(slots=True, frozen=True)
class CostEstimate:
    now: float  # this request
    horizon: float  # this request plus the session's likely remaining turns
    read_tokens: int
    write_tokens: int
    uncached_tokens: int


def request_cost(
    m: ModelInfo,
    prompt: int,
    warm: int,
    output: float,
    *,
    cacheable: bool,
    ttl_1h: bool = False,
) -> tuple[float, int, int, int]:
    """(dollars, read, write, uncached) for one request of ``prompt`` tokens with
    ``warm`` already cached on ``m``."""
    p = m.prices
    warm = min(warm, prompt)
    if cacheable:
        read, write, uncached = warm, prompt - warm, 0
    else:
        read, write, uncached = 0, 0, prompt
    write_price = p.cache_write_1h if ttl_1h else p.cache_write_5m
    dollars = (read * p.cache_read + write * write_price + uncached * p.input
               + output * p.output) / _M
    return dollars, read, write, uncached


def expected_cost(
    m: ModelInfo,
    prompt: int,
    warm: int,
    output: float,
    *,
    cacheable: bool,
    remaining_turns: float,
    growth: float,
    ttl_1h: bool = False,
) -> CostEstimate:
    """This request's cost plus the steady-state cost of the turns that follow
    on the same model (each reads the prefix and writes the new growth)."""
    now, read, write, uncached = request_cost(m, prompt, warm, output,
                                              cacheable=cacheable, ttl_1h=ttl_1h)
    p = m.prices
    if cacheable:
        per_turn = ((prompt + growth / 2) * p.cache_read + growth * p.cache_write_5m
                    + output * p.output) / _M
    else:
        per_turn = ((prompt + growth) * p.input + output * p.output) / _M
    return CostEstimate(now, now + remaining_turns * per_turn, read, write, uncached)
