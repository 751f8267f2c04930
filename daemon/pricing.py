"""Cost of a request in USD from its usage and the model's prices."""

from __future__ import annotations

from switchman_daemon.models import Prices
from switchman_daemon.protocol.ir import Usage

_M = 1_000_000.0


def cost_usd(usage: Usage, prices: Prices) -> float:
    """Each token kind at its own price (cache reads and writes are priced per
    model, never as a fixed multiple of input)."""
    return (
        usage.input_tokens * prices.input
        + usage.cache_read_tokens * prices.cache_read
        + usage.cache_write_tokens * prices.cache_write_5m
        + usage.cache_write_1h_tokens * prices.cache_write_1h
        + usage.output_tokens * prices.output
    ) / _M
