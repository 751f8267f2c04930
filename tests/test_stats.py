from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchman_daemon.models import ModelInfo, Prices
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.router import Decision
from switchman_daemon.routing.signals import Signals
from switchman_daemon.stats import StatsHub

PRICES = Prices(input=3.0, output=15.0, cache_read=0.3, cache_write_5m=3.75, cache_write_1h=6.0)


def model(name: str) -> ModelInfo:
    return ModelInfo(name, name, "sim", PRICES, 1024, 200_000, 8192, True, True, True, 0.8)


def flow(
    served: str = "sonnet",
    session: str | None = "s1",
    cost: float = 0.01,
    baseline: float | None = None,
    status: str = "ok",
    inp: int = 100,
    read: int = 0,
    write: int = 0,
    out: int = 10,
) -> Flow:
    f = Flow("anthropic", Signals("anthropic", "auto", False, session_id=session))
    f.decision = Decision(model(served), [], "pool", ["best objective score in pool auto"])
    f.served_model = served
    f.usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read,
                    cache_write_tokens=write)
    f.cost_usd = cost
    f.status = status
    if baseline is not None:
        f.notes["baseline_cost_usd"] = baseline
    return f


def test_snapshot_aggregates() -> None:
    hub = StatsHub()
    hub.flow_closed(flow("sonnet", "s1", cost=0.02, baseline=0.05, inp=100, read=900, write=0))
    hub.flow_closed(flow("sonnet", "s2", cost=0.01, inp=50, read=0, write=950))
    hub.flow_closed(flow("haiku", "s1", cost=0.0, status="error", inp=0, out=0))
    hub.flow_closed(flow("haiku", None, cost=0.001, status="cancelled"))
    snap = hub.snapshot()
    t = snap["totals"]
    assert t["requests"] == 4 and t["errors"] == 1 and t["cancelled"] == 1
    assert t["cost_usd"] == pytest.approx(0.031)
    assert t["baseline_cost_usd"] == pytest.approx(0.05 + 0.01 + 0.0 + 0.001)  # own cost w/o note
    assert t["savings_usd"] == pytest.approx(0.03)
    son = snap["by_model"]["sonnet"]
    assert son["prompt_tokens"] == 2000 and son["cache_hit_rate"] == pytest.approx(900 / 2000)
    assert snap["by_session"]["s1"]["cache_hit_rate"] == pytest.approx(900 / 1000)
    assert snap["by_session"]["s1"]["requests"] == 2 and "-" in snap["by_session"]
    last = snap["recent"][-1]
    assert last["served_model"] == "haiku" and last["requested_model"] == "auto"
    assert last["session_id"] is None and last["how"] == "pool"
    assert snap["recent"][0]["reasons"] == ["best objective score in pool auto"]
    for _ in range(100):
        hub.flow_closed(flow())
    assert len(hub.snapshot()["recent"]) == 50


async def _next(it: Any) -> dict[str, Any]:
    return await asyncio.wait_for(it.__anext__(), 5)


async def test_subscribe_snapshot_then_coalesced_deltas() -> None:
    hub = StatsHub(min_interval=0.02)
    hub.flow_closed(flow("sonnet", "s1"))
    sub = hub.subscribe()
    first = await _next(sub)
    assert first["type"] == "snapshot" and first["totals"]["requests"] == 1

    for _ in range(100):  # one burst, no awaits in between: exactly one delta
        hub.flow_closed(flow("haiku", "s2", cost=0.001))
    d = await _next(sub)
    assert d["type"] == "delta" and d["totals"]["requests"] == 101
    assert set(d["by_model"]) == {"haiku"}  # sonnet did not change
    assert set(d["by_session"]) == {"s2"}
    assert d["by_model"]["haiku"]["requests"] == 100
    assert len(d["recent"]) == 50

    hub.flow_closed(flow("sonnet", "s1"))
    d = await _next(sub)
    assert set(d["by_model"]) == {"sonnet"} and d["by_model"]["sonnet"]["requests"] == 2
    assert [r["served_model"] for r in d["recent"]] == ["sonnet"]
    await sub.aclose()
    assert hub.subscribers == 0


async def test_many_subscribers_and_a_slow_one() -> None:
    hub = StatsHub(min_interval=0.01)
    slow = hub.subscribe()
    await _next(slow)  # then never read again
    fast = [hub.subscribe() for _ in range(3)]
    for s in fast:
        await _next(s)

    received = [0, 0, 0]
    deltas = [0, 0, 0]

    async def reader(i: int) -> None:
        while received[i] < 300:
            d = await _next(fast[i])
            deltas[i] += 1
            received[i] = d.get("totals", {}).get("requests", received[i])

    readers = [asyncio.create_task(reader(i)) for i in range(3)]
    for _ in range(300):
        hub.flow_closed(flow(session="s9"))
        await asyncio.sleep(0)  # give subscribers every chance to run
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert received == [300, 300, 300]
    assert all(n < 300 for n in deltas)  # coalesced, not one message per request
    # The slow subscriber holds no queue: it just gets the latest state when it reads.
    d = await _next(slow)
    assert d["totals"]["requests"] == 300 and len(d["recent"]) == 50
    for s in [slow, *fast]:
        await s.aclose()


async def test_session_eviction_is_reported() -> None:
    hub = StatsHub(min_interval=0.0, max_sessions=3)
    sub = hub.subscribe()
    await _next(sub)
    for i in range(5):
        hub.flow_closed(flow(session=f"s{i}"))
    d = await _next(sub)
    assert set(hub.snapshot()["by_session"]) == {"s2", "s3", "s4"}
    assert set(d["by_session"]) == {"s2", "s3", "s4"}
    assert d["removed_sessions"] == ["s0", "s1"]
    await sub.aclose()
