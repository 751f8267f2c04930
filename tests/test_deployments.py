"""Deployments, cooldown, first-byte bounds and per-provider concurrency limits
(routing issue #3 item 8): the deterministic layer around the router's choice.

Unit tests pin the pure parts (weighted rendezvous hashing, the cooldown
counter, the slot limiter, config validation); the rest runs a real daemon on
127.0.0.1 against the fault-injecting fake provider (tests/support/
faulty_upstream.py) and reads the ledger rows it writes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from switchman_daemon.config import ConfigError, load_config, merge
from switchman_daemon.managed_config import dump, validate
from switchman_daemon.models import ModelRegistry
from switchman_daemon.proxy.cooldown import Cooldowns
from switchman_daemon.proxy.limits import ProviderLimits
from switchman_daemon.routing import deployments as dep
from tests.support import faulty_upstream as fu
from tests.support.running import RunningApp, RunningDaemon
from tests.test_faults import PATHS, _assert_success, _body

HEALTHY = "sim-claude-mid"
BOUND_S = 0.3  # first-byte bound; the fake's LATE_S (0.8) and stalls are longer
QUEUE_S = 2.0
COOLDOWN_S = 1.0


# -- pure parts -----------------------------------------------------------------------


def _deps(*weights: float) -> tuple[dep.Deployment, ...]:
    reg = ModelRegistry(load_config(None))
    base = reg.models["sim-claude-mid"]
    return tuple(dep.Deployment(base, w, f"p{i}/m".encode()) for i, w in enumerate(weights))


def test_rendezvous_is_stable_and_not_salted() -> None:
    # blake2b, not Python's per-process salted hash(): the same value in every process
    assert dep.unit_hash("session-1", b"anthropic/claude") == pytest.approx(
        0.32216207626991444, abs=1e-12)
    assert 0.0 < dep.unit_hash("s", b"x") < 1.0
    ds = _deps(1, 1, 1)
    for s in ("a", "b", "session-xyz"):
        first = [d.id for d in dep.rendezvous_order(ds, s)]
        assert all([d.id for d in dep.rendezvous_order(ds, s)] == first for _ in range(5))
        assert sorted(first) == sorted(d.id for d in ds)  # every deployment, once


def test_rendezvous_spreads_by_weight() -> None:
    ds = _deps(3, 1)
    n = 4000
    picks = Counter(dep.rendezvous_order(ds, f"session-{i}")[0].id for i in range(n))
    assert picks[ds[0].id] / n == pytest.approx(0.75, abs=0.03)
    ds3 = _deps(1, 2, 1)
    picks3 = Counter(dep.rendezvous_order(ds3, f"s{i}")[0].id for i in range(n))
    assert picks3[ds3[1].id] / n == pytest.approx(0.5, abs=0.03)
    assert picks3[ds3[0].id] / n == pytest.approx(0.25, abs=0.03)


def test_rendezvous_adding_a_deployment_moves_only_sessions_to_it() -> None:
    two, three = _deps(1, 1), _deps(1, 1, 1)
    moved = 0
    for i in range(2000):
        before = dep.rendezvous_order(two, f"s{i}")[0].id
        after = dep.rendezvous_order(three, f"s{i}")[0].id
        if after != before:
            assert after == three[2].id
            moved += 1
    assert moved / 2000 == pytest.approx(1 / 3, abs=0.04)


def test_cooldown_counts_failures_in_a_window() -> None:
    now = [100.0]
    c = Cooldowns(failures=3, window_s=10, cooldown_s=30, clock=lambda: now[0])
    k = ("m", "p", "u")
    assert not c.failed(k, 503, None, "boom")
    now[0] += 11  # the first failure leaves the window
    assert not c.failed(k, 503, None, "boom")
    assert not c.failed(k, 500, None, "boom")
    assert c.remaining(k) is None
    assert c.failed(k, 502, None, "boom")
    left = c.remaining(k)
    assert left is not None and left[0] == pytest.approx(30) and "3 failures" in left[1]
    now[0] += 29.5
    assert c.remaining(k) is not None
    now[0] += 1
    assert c.remaining(k) is None and not c.cooling  # over: tried again
    # a success clears the count
    c.failed(k, 503, None, "x")
    c.failed(k, 503, None, "x")
    c.succeeded(k)
    assert not c.failed(k, 503, None, "x")


def test_cooldown_honours_retry_after_and_can_be_off() -> None:
    now = [0.0]
    c = Cooldowns(failures=3, window_s=60, cooldown_s=30, clock=lambda: now[0])
    k = ("m", "p", "u")
    assert c.failed(k, 429, 7.0, "rate limited")
    left = c.remaining(k)
    assert left is not None and left[0] == pytest.approx(7.0) and "Retry-After" in left[1]
    assert c.failed(("m", "p", "v"), 429, 10_000.0, "x")  # capped
    assert c.remaining(("m", "p", "v"))[0] <= 600  # type: ignore[index]
    c.succeeded(k)
    assert c.remaining(k) is None
    c.configure(0, 60, 30)
    assert not c.cooling and not c.failed(k, 429, 5.0, "x") and not c.failed(k, 503, None, "x")


async def test_limiter_waits_then_times_out_or_gets_the_slot() -> None:
    from switchman_shared.config_schema import ProviderConfig

    lim = ProviderLimits()
    lim.configure({"a": ProviderConfig(kind="anthropic", base_url="x", max_concurrency=1),
                   "b": ProviderConfig(kind="anthropic", base_url="x")})
    assert set(lim.by_provider) == {"a"}
    a = lim.by_provider["a"]
    assert a.try_acquire() and not a.try_acquire()
    assert await lim.acquire_any([a], 0.05) is None
    waiter = asyncio.ensure_future(lim.acquire_any([a], 5.0))
    await asyncio.sleep(0.01)
    assert lim.waiting == 1
    a.release()
    assert await asyncio.wait_for(waiter, 1.0) == 0
    assert a.in_use == 1 and lim.waiting == 0
    a.release()
    assert a.in_use == 0


def _validate(extra: dict[str, Any]) -> None:
    validate(merge(dump(load_config(None)), extra))


@pytest.mark.parametrize(("extra", "needle"), [
    ({"models": {"x": {"provider": "sim-anthropic", "catalog": "claude-sonnet-4-5",
                       "deployments": [{"provider": "nowhere"}]}}},
     "deployment 1: unknown provider 'nowhere'"),
    ({"models": {"x": {"provider": "sim-anthropic", "catalog": "claude-sonnet-4-5",
                       "deployments": [{"provider": "sim-openai", "weight": 0}]}}},
     "greater than 0"),
    ({"models": {"x": {"provider": "sim-anthropic", "catalog": "claude-sonnet-4-5",
                       "weight": -1}}}, "greater than 0"),
    ({"models": {"x": {"provider": "sim-anthropic", "catalog": "claude-sonnet-4-5",
                       "deployments": [{"provider": "sim-anthropic", "upstream_id": "x"}]}}},
     "listed twice"),
    ({"models": {"x": {"provider": "sim-anthropic", "catalog": "claude-sonnet-4-5",
                       "first_byte_timeout_s": -2}}}, "first_byte_timeout_s"),
    ({"routing": {"first_byte_timeout_s": 0}}, "first_byte_timeout_s"),
    ({"routing": {"cooldown_s": -1}}, "cooldown_s"),
    ({"routing": {"queue_timeout_s": -1}}, "queue_timeout_s"),
    ({"providers": {"sim-openai": {"kind": "openai", "base_url": "sim",
                                   "max_concurrency": 0}}}, "max_concurrency"),
])
def test_config_validation(extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        _validate(extra)


def test_valid_deployments_config() -> None:
    _validate({"providers": {"sim-openai": {"kind": "openai", "base_url": "sim",
                                            "max_concurrency": 4}},
               "models": {"x": {"provider": "sim-anthropic", "catalog": "claude-sonnet-4-5",
                                "weight": 2, "first_byte_timeout_s": 5,
                                "deployments": [{"provider": "sim-openai",
                                                 "upstream_id": "y", "weight": 1}]}},
               "routing": {"first_byte_timeout_s": 20, "cooldown_failures": 0}})


# -- a daemon in front of the fake provider -------------------------------------------


@dataclass
class Rig:
    daemon: RunningDaemon
    upstream: RunningApp

    def calls(self, upstream_id: str) -> int:
        return sum(1 for _, m, _ in self.upstream.app[fu.CALLS] if m == upstream_id)

    def holds(self) -> int:
        return len(self.upstream.app[fu.HOLDS])

    def release(self) -> None:
        self.upstream.lt.loop.call_soon_threadsafe(fu.release, self.upstream.app)

    def limiter(self, provider: str) -> Any:
        return self.daemon.ctx.relay.failover.limits.by_provider[provider]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("deployments")
    up = RunningApp(fu.make_app)
    an = 'catalog = "claude-sonnet-4-5"'
    cfg = tmp / "deployments.toml"
    cfg.write_text(f"""
[daemon]
max_retries = 0
retry_max_wait_s = 0.02
upstream_read_timeout_s = 10.0
upstream_connect_timeout_s = 1.0
[providers.fa]
kind = "anthropic"
base_url = "{up.url}"
[providers.fo]
kind = "openai-compatible"
base_url = "{up.url}/v1"
[providers.fb]
kind = "anthropic"
base_url = "{up.url}"
[providers.lim]
kind = "anthropic"
base_url = "{up.url}"
max_concurrency = 1

[models.dm]
provider = "fa"
upstream_id = "dm-an"
{an}
weight = 3
deployments = [{{ provider = "fo", upstream_id = "dm-oa", weight = 1 }}]
[models.dm2]
provider = "fa"
upstream_id = "dm2-an"
{an}
deployments = [{{ provider = "fo", upstream_id = "dm2-oa" }}]
[models.fbm]
provider = "fb"
upstream_id = "fbm-x"
{an}
[models.cd]
provider = "fa"
upstream_id = "cd-a"
{an}
[models.cdb]
provider = "fo"
upstream_id = "cd-b"
catalog = "gpt-4o"
[models.solo]
provider = "fa"
upstream_id = "solo-x"
{an}
[models.slow1]
provider = "fa"
upstream_id = "slow1-x"
{an}
first_byte_timeout_s = {BOUND_S}
[models.slow2]
provider = "fo"
upstream_id = "slow2-x"
catalog = "gpt-4o"
first_byte_timeout_s = {BOUND_S}
[models.slow3]
provider = "fa"
upstream_id = "slow3-x"
{an}
first_byte_timeout_s = {BOUND_S}
[models.slow-solo]
provider = "fa"
upstream_id = "slows-x"
{an}
first_byte_timeout_s = {BOUND_S}
[models.pausy]
provider = "fa"
upstream_id = "pausy-x"
{an}
first_byte_timeout_s = {BOUND_S}
[models.lm]
provider = "lim"
upstream_id = "lm-x"
{an}
[models.lm-fb]
provider = "fb"
upstream_id = "lmfb-x"
{an}
[models.lm-solo]
provider = "lim"
upstream_id = "lms-x"
{an}

[routing]
cooldown_failures = 2
cooldown_window_s = 30
cooldown_s = {COOLDOWN_S}
queue_timeout_s = {QUEUE_S}
[routing.fallbacks]
dm = ["fbm"]
dm2 = ["fbm"]
cd = ["cdb"]
solo = []
slow1 = ["{HEALTHY}"]
slow2 = ["{HEALTHY}"]
slow3 = ["{HEALTHY}"]
slow-solo = []
pausy = ["{HEALTHY}"]
lm = ["lm-fb"]
lm-solo = []
""")
    d = RunningDaemon(tmp, config_path=cfg)
    try:
        yield Rig(d, up)
    finally:
        d.stop()
        up.stop()


@dataclass
class Answer:
    status: int
    body: bytes
    row: dict[str, Any]


def _send(rig: Rig, model: str, text: str = "hello", *, fmt: str = "anthropic",
          stream: bool = False, session: str | None = None) -> Answer:
    headers = {"content-type": "application/json"}
    if fmt == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    if session is not None:
        headers["x-session-id"] = session
    r = httpx.post(rig.daemon.url + PATHS[fmt], content=orjson.dumps(
        _body(fmt, model, text, stream)), headers=headers, timeout=30)
    rid = r.headers["x-request-id"]
    rows = [x for x in rig.daemon.ledger_rows() if x["id"] == rid]
    assert len(rows) == 1, rows
    return Answer(r.status_code, r.content, rows[0])


def _wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- 1. deployments: weighted, sticky per session, failover first ------------------------


def test_sessions_spread_by_weight_and_stick(rig: Rig) -> None:
    providers = Counter()
    for i in range(48):
        a = _send(rig, "dm", session=f"spread-{i}")
        assert a.status == 200 and a.row["served_model"] == "dm", a.body[:200]
        providers[a.row["provider"]] += 1
        assert "weighted pick of 2" in a.row["decision"]
    # weights 3:1 -> ~36:12; hashing is deterministic, the tolerance is for the sample
    assert set(providers) == {"fa", "fo"}
    assert 4 <= providers["fo"] <= 20, providers
    # one session, one deployment, every time (its provider cache stays warm)
    for s in ("sticky-1", "sticky-2", "sticky-3"):
        seen = {_send(rig, "dm", session=s, stream=k % 2 == 0).row["provider"]
                for k in range(4)}
        assert len(seen) == 1, (s, seen)


def test_failover_tries_the_other_deployment_before_another_model(rig: Rig) -> None:
    first = _send(rig, "dm2", session="fo-1")
    assert first.status == 200
    mine = first.row["provider"]
    other = {"fa": "fo", "fo": "fa"}[mine]
    ids = {"fa": "dm2-an", "fo": "dm2-oa"}
    a = _send(rig, "dm2", f"[[fault:503@{ids[mine]}]] hi", session="fo-1")
    assert a.status == 200, a.body[:300]
    assert a.row["served_model"] == "dm2" and a.row["provider"] == other
    assert a.row["attempts"] == 2 and "fell back to dm2 on " + other in a.row["decision"]
    assert rig.calls("fbm-x") == 0
    # both deployments down: then the decision's fallback model
    b = _send(rig, "dm2", "[[fault:503@dm2-an]] [[fault:503@dm2-oa]] hi",
              session="fo-2", stream=True)
    _assert_success("anthropic", True, b)
    assert b.row["served_model"] == "fbm" and b.row["provider"] == "fb"


# -- 2. cooldown -------------------------------------------------------------------------


def test_cooldown_skips_a_failing_deployment_then_retries_it(rig: Rig) -> None:
    for _ in range(2):  # two failures within the window: cd cools
        a = _send(rig, "cd", "[[fault:503@cd-a]] hi")
        assert a.status == 200 and a.row["served_model"] == "cdb"
        assert a.row["attempts"] == 2
    before = rig.calls("cd-a")
    a = _send(rig, "cd", "hi")  # healthy now, but cooling: not even tried
    assert a.status == 200 and a.row["served_model"] == "cdb" and a.row["attempts"] == 1
    assert rig.calls("cd-a") == before
    assert "cooling down" in a.row["decision"] and "2 failures" in a.row["decision"]
    # once the cooldown is over, new requests try it again
    deadline = time.monotonic() + 15
    while True:
        a = _send(rig, "cd", "hi")
        if a.row["served_model"] == "cd":
            break
        assert time.monotonic() < deadline, "cd never came back from its cooldown"
        time.sleep(0.1)
    assert rig.calls("cd-a") == before + 1
    # the success cleared the count: one more failure alone does not cool it
    assert _send(rig, "cd", "[[fault:503@cd-a]] hi").row["served_model"] == "cdb"
    assert _send(rig, "cd", "hi").row["served_model"] == "cd"


def test_retry_after_cools_at_once(rig: Rig) -> None:
    _wait_until(lambda: _send(rig, "cd", "hi").row["served_model"] == "cd", 15)
    a = _send(rig, "cd", "[[fault:429-ra@cd-a]] hi")  # one 429 with Retry-After: 1
    assert a.status == 200 and a.row["served_model"] == "cdb"
    b = _send(rig, "cd", "hi")
    assert b.row["served_model"] == "cdb" and "Retry-After 1s" in b.row["decision"]
    _wait_until(lambda: _send(rig, "cd", "hi").row["served_model"] == "cd", 15)


def test_all_cooling_are_tried_anyway(rig: Rig) -> None:
    for _ in range(2):
        a = _send(rig, "solo", "[[fault:503]] hi")
        assert a.status == 503
    a = _send(rig, "solo", "hi")
    assert a.status == 200 and a.row["served_model"] == "solo"
    assert "tried anyway" in a.row["decision"]


# -- 3. first-byte bound ------------------------------------------------------------------


@pytest.mark.parametrize(("model", "fmt", "stream", "fault"), [
    ("slow1", "anthropic", False, "slow-headers"),
    ("slow2", "chat", True, "slow-body"),
    ("slow3", "responses", True, "late"),
])
def test_first_byte_bound_falls_back(rig: Rig, model: str, fmt: str, stream: bool,
                                     fault: str) -> None:
    a = _send(rig, model, f"[[fault:{fault}]] hi", fmt=fmt, stream=stream)
    _assert_success(fmt, stream, a)
    row = a.row
    assert row["status"] == "ok" and row["served_model"] == HEALTHY, row
    assert row["attempts"] == 2 and row["output_tokens"] > 0
    assert "no first byte within 0.3s" in row["decision"]


def test_first_byte_bound_never_cuts_a_started_stream(rig: Rig) -> None:
    # events at once, then a pause longer than the bound: the stream goes on
    a = _send(rig, "pausy", "[[fault:pause-mid]] hi", stream=True)
    _assert_success("anthropic", True, a)
    assert a.row["served_model"] == "pausy" and a.row["attempts"] == 1


def test_first_byte_bound_spares_the_last_candidate(rig: Rig) -> None:
    # nowhere else to go: waiting beats an error
    a = _send(rig, "slow-solo", "[[fault:late]] hi")
    _assert_success("anthropic", False, a)
    assert a.row["served_model"] == "slow-solo" and a.row["attempts"] == 1


# -- 4. per-provider concurrency ------------------------------------------------------------


def test_full_provider_sends_the_request_to_the_fallback(rig: Rig) -> None:
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(_send, rig, "lm", "[[fault:hold]] hi", stream=True)
        _wait_until(lambda: rig.holds() == 1)
        a = _send(rig, "lm", "hi")
        assert a.status == 200 and a.row["served_model"] == "lm-fb"
        assert a.row["provider"] == "fb" and "max_concurrency (1)" in a.row["decision"]
        rig.release()
        h = held.result(15)
    assert h.status == 200 and h.row["served_model"] == "lm" and h.row["provider"] == "lim"
    _wait_until(lambda: rig.limiter("lim").in_use == 0)


def test_full_provider_without_fallback_waits_then_is_overloaded(rig: Rig) -> None:
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(_send, rig, "lm-solo", "[[fault:hold]] hi")
        _wait_until(lambda: rig.holds() == 1)
        an = pool.submit(_send, rig, "lm-solo", "hi", fmt="anthropic")
        ch = pool.submit(_send, rig, "lm-solo", "hi", fmt="chat", stream=True)
        a, c = an.result(20), ch.result(20)
        rig.release()
        assert held.result(15).status == 200
    assert a.status == 529
    j = orjson.loads(a.body)
    assert j["type"] == "error" and j["error"]["type"] == "overloaded_error"
    assert "concurrency limit" in j["error"]["message"]
    assert c.status == 503
    assert orjson.loads(c.body)["error"]["code"] == "server_overloaded"
    for x in (a, c):
        assert x.row["status"] == "error" and x.row["http_status"] == x.status
        assert rig.calls("lms-x") >= 1  # only the held one reached the provider
        assert "queue_timeout_s" in x.row["decision"]
    _wait_until(lambda: rig.limiter("lim").in_use == 0)


def test_waiting_request_gets_the_freed_slot(rig: Rig) -> None:
    limits = rig.daemon.ctx.relay.failover.limits
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(_send, rig, "lm-solo", "[[fault:hold]] hi")
        _wait_until(lambda: rig.holds() == 1)
        waiter = pool.submit(_send, rig, "lm-solo", "hi", stream=True)
        _wait_until(lambda: limits.waiting == 1)
        rig.release()
        h, w = held.result(15), waiter.result(15)
    assert h.status == 200 and w.status == 200
    assert w.row["served_model"] == "lm-solo" and "waited for a slot on lim" in w.row["decision"]
    _wait_until(lambda: rig.limiter("lim").in_use == 0)


def test_slot_released_when_the_client_disconnects_mid_stream(rig: Rig) -> None:
    body = orjson.dumps(_body("anthropic", "lm-solo", "[[fault:hold-mid]] hi", True))
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", rig.daemon.url + "/v1/messages", content=body, headers=headers,
                      timeout=10) as r:
        assert r.status_code == 200
        events = r.iter_raw()  # kept: a dropped iterator would close the connection now
        assert next(events)  # the stream has started (and holds the slot)
        time.sleep(0.2)
        assert rig.limiter("lim").in_use == 1 and rig.holds() == 1
    # the client is gone: the handler is cancelled and the slot comes back
    _wait_until(lambda: rig.limiter("lim").in_use == 0)
    rid = r.headers["x-request-id"]
    _wait_until(lambda: any(x["id"] == rid and x["status"] == "cancelled"
                            for x in rig.daemon.ledger_rows()))
    a = _send(rig, "lm-solo", "hi")
    assert a.status == 200 and a.row["served_model"] == "lm-solo"
    assert "waited" not in a.row["decision"]


def test_a_config_change_is_picked_up_by_the_next_request(rig: Rig) -> None:
    # runs last: it lifts the limit on "lim" for good
    fo = rig.daemon.ctx.relay.failover
    assert "lim" in fo.limits.by_provider
    cfg = rig.daemon.ctx.config.model_copy(deep=True)
    cfg.providers["lim"].max_concurrency = None
    cfg.models["dm"].weight = 1.0
    rig.daemon.lt.run(rig.daemon.daemon.apply_config(cfg))
    a = _send(rig, "lm-solo", "hi")
    assert a.status == 200 and fo.config is rig.daemon.ctx.config
    assert "lim" not in fo.limits.by_provider
    assert [d.weight for d in fo.deployments["dm"]] == [1.0, 1.0]


def test_moving_a_session_to_another_deployment_counts_as_a_switch(tmp_path: Path) -> None:
    # Reasoning signed by one provider must not reach another provider's
    # deployment of the same model (Relay._switching strips it when True).
    import dataclasses

    from switchman_daemon.proxy.flow import Flow
    from switchman_daemon.proxy.relay import Relay
    from switchman_daemon.routing.router import Decision

    reg = ModelRegistry(load_config(None))
    home = next(iter(reg.models.values()))
    other = dataclasses.replace(home, provider="elsewhere")
    flow = Flow(client_format="anthropic", signals=None)  # type: ignore[arg-type]
    flow.decision = Decision(model=home, fallbacks=[], how="sticky", previous_model=home.name)
    flow.notes["session_deployment"] = home
    assert not Relay._switching(None, flow, home)  # type: ignore[arg-type]
    assert Relay._switching(None, flow, other)  # type: ignore[arg-type]
