"""Cache keep-alive's expected-value gate: refresh only where P(return in the
window the refresh buys) x (write - read) x prefix beats the refresh."""

from __future__ import annotations

import pytest

from switchman_daemon.config import load_config
from switchman_daemon.models import ModelInfo, Prices
from switchman_daemon.routing.keepalive import (
    GapModel,
    KeepAlive,
    gate,
    refresh_cost,
    rewrite_saving,
)


def _model(inp: float, out: float, w5: float, w1: float, read: float) -> ModelInfo:
    return ModelInfo(name="m", upstream_id="m", provider="p",
                     prices=Prices(inp, out, read, w5, w1), min_cache_prefix=1024,
                     context_window=200_000, max_output=8192, tools=True, vision=False,
                     thinking=False, quality=0.9)


OPUS = _model(5.0, 25.0, 6.25, 10.0, 0.5)  # reads 0.1x, 5-min writes 1.25x
GROQ_LIKE = _model(1.0, 2.0, 1.0, 1.0, 0.5)  # reads 0.5x, writes at the input price


def test_prices_field_order_is_what_the_helpers_assume() -> None:
    assert OPUS.prices.cache_read == 0.5 and OPUS.prices.cache_write_5m == 6.25
    assert refresh_cost(OPUS, 100_000) == pytest.approx((100_000 * 0.5 + 25.0) / 1e6)
    assert rewrite_saving(OPUS, 100_000) == pytest.approx(100_000 * 5.75 / 1e6)
    assert rewrite_saving(OPUS, 100_000, ttl_1h=True) == pytest.approx(100_000 * 9.5 / 1e6)


def test_gate_break_even_is_read_over_write_minus_read() -> None:
    tokens = 150_000
    even = 0.5 / (6.25 - 0.5)  # ~8.7%, the output token moves it a hair
    assert gate(even + 0.01, OPUS, tokens).refresh
    assert not gate(even - 0.01, OPUS, tokens).refresh
    assert gate(0.6, OPUS, tokens).saving > gate(0.6, OPUS, tokens).cost
    # a dollar floor on top (yapi-core style) turns marginal refreshes off
    assert not gate(even + 0.01, OPUS, tokens, min_saving=0.05).refresh


def test_gate_never_refreshes_where_reads_are_half_price_and_writes_free() -> None:
    assert not gate(1.0, GROQ_LIKE, 150_000).refresh


def test_regular_pauses_just_past_the_ttl_are_kept_warm() -> None:
    ka = KeepAlive()
    t = 0.0
    for _ in range(8):  # a user who steps away ~6-7 minutes between tasks
        ka.gaps.turn("s", t)
        t += 400.0
    ka.gaps.turn("s", t)
    now = t + 285.0  # 15 s before the 5-minute cache expires
    v = ka.decide("s", OPUS, 150_000, now=now, expires_at=t + 300.0, ttl=300.0)
    assert v.refresh and v.p_return > 0.5, v.reason


def test_short_gaps_and_finished_sessions_are_not_kept() -> None:
    gaps = GapModel(horizon=3600.0)
    # many sessions that worked in short bursts, then went away for good
    for k in range(20):
        for j in range(10):
            gaps.turn(f"old{k}", k * 10.0 + j * 30.0)
    t = 10_000.0  # they are all past the horizon now: each is an infinite gap
    for j in range(10):
        gaps.turn("s", t + j * 30.0)
    last = t + 270.0
    ka = KeepAlive(gaps)
    v = ka.decide("s", OPUS, 150_000, now=last + 285.0, expires_at=last + 300.0, ttl=300.0)
    assert not v.refresh and v.p_return < 0.05, v.reason
    assert len(gaps.last_turn) == 1  # the finished sessions were retired


def test_no_evidence_means_no_refresh_and_the_idle_cap_holds() -> None:
    ka = KeepAlive(max_idle=1800.0)
    ka.gaps.turn("s", 0.0)
    assert not ka.decide("s", OPUS, 150_000, now=285.0, expires_at=300.0, ttl=300.0).refresh
    for k in range(1, 6):
        ka.gaps.turn("s", k * 400.0)
    last = 2000.0
    assert ka.decide("s", OPUS, 150_000, now=last + 285, expires_at=last + 300, ttl=300).refresh
    v = ka.decide("s", OPUS, 150_000, now=last + 1700, expires_at=last + 1715, ttl=300)
    assert not v.refresh and "cap" in v.reason


def test_keepalive_is_off_by_default_in_the_daemon_config() -> None:
    assert load_config(None).routing.keepalive is False
    assert load_config(None, overrides={"routing": {"keepalive": True}}).routing.keepalive
