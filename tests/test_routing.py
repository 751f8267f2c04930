"""The routing engine on requests shaped like the real clients': session
identity, roles, the cache tracker, dollar costs and the decisions they drive."""

from __future__ import annotations

import copy
import json

import pytest
from multidict import CIMultiDict

from switchman_daemon.config import load_config
from switchman_daemon.models import ModelRegistry
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.routing.cost import request_cost
from switchman_daemon.routing.prefix import build_chain
from switchman_daemon.routing.quality_prior import QualityPredictor
from switchman_daemon.routing.router import Router, remaining_turns
from switchman_daemon.routing.signals import read_signals
from switchman_daemon.routing.switching import strip_reasoning
from switchman_daemon.routing.tracker import CacheTracker
from tests.support.shapes import aider_turn, claude_code_turn, codex_turn


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sig(fmt: str, body: dict, headers: dict):
    raw = json.dumps(body).encode()
    return read_signals(fmt, body, CIMultiDict(headers), len(raw), raw)


# -- session identity and roles ----------------------------------------------------


def test_claude_code_session_and_subagent() -> None:
    body, h = claude_code_turn(target_kb=20)
    s = sig("anthropic", body, h)
    assert s.session_id == h["x-claude-code-session-id"] and s.session_source == "header"
    assert s.role == "main" and s.cache_marked and not s.new_task  # last turn: tool_result
    sub_body, sub_h = claude_code_turn(session_id=s.session_id, target_kb=20, agent_id="beef")
    sub = sig("anthropic", sub_body, sub_h)
    assert sub.role == "subagent" and sub.session_id == s.session_id
    assert sub.cache_session == f"{s.session_id}/beef" != s.cache_session


def test_claude_code_session_from_metadata_only() -> None:
    body, h = claude_code_turn(target_kb=20)
    del h["x-claude-code-session-id"]
    s = sig("anthropic", body, h)
    assert s.session_source == "metadata"
    assert s.session_id == json.loads(body["metadata"]["user_id"])["session_id"]


def test_claude_code_title_request_is_utility() -> None:
    body = {"model": "claude-opus-4-8", "max_tokens": 200, "tools": [],
            "thinking": {"type": "disabled"},
            "output_config": {"format": {"type": "json_schema", "schema": {}}},
            "system": [{"type": "text", "text": "Generate a concise, sentence-case title"}],
            "messages": [{"role": "user", "content": "fix the login bug"}]}
    assert sig("anthropic", body, {}).role == "utility"


def test_codex_session_turn_and_compaction() -> None:
    body, h = codex_turn()
    s = sig("responses", body, h)
    assert s.session_id == h["session-id"] and s.task_id == "turn-1"
    assert not s.new_task  # the last input item is a tool output
    cbody, ch = codex_turn(thread_id=s.session_id, kind="compaction")
    assert sig("responses", cbody, ch).role == "compaction"


def test_aider_fingerprint_session_is_stable_across_turns() -> None:
    body, h = aider_turn()
    s1 = sig("chat", body, h)
    assert s1.session_source == "fingerprint" and s1.session_id.startswith("fp-")
    later = copy.deepcopy(body)
    later["messages"] += [{"role": "assistant", "content": "done"},
                          {"role": "user", "content": "now add a docstring"}]
    assert sig("chat", later, h).session_id == s1.session_id
    other = copy.deepcopy(body)
    other["messages"][1]["content"] = "a different file"
    assert sig("chat", other, h).session_id != s1.session_id


def test_aider_commit_message_request_is_utility() -> None:
    body = {"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are an expert software engineer that generates "
                                      "concise, one-line Git commit messages"},
        {"role": "user", "content": "diff --git a/x b/x"}]}
    assert sig("chat", body, {}).role == "utility"


# -- prefix chains -------------------------------------------------------------------


def test_chain_append_edit_and_compaction() -> None:
    body, _ = claude_code_turn(turns=3, target_kb=20)
    c1 = build_chain("anthropic", body)
    grown = copy.deepcopy(body)
    grown["messages"].append({"role": "assistant", "content": [{"type": "text", "text": "ok"}]})
    grown["messages"].append({"role": "user", "content": "next task please"})
    c2 = build_chain("anthropic", grown)
    assert c2.total_tokens > c1.total_tokens
    assert c2.common_tokens(c1) == c1.total_tokens  # pure append: all of it shared
    edited = copy.deepcopy(grown)
    edited["messages"][2]["content"][0]["text"] = "Step 0: running a DIFFERENT command."
    c3 = build_chain("anthropic", edited)
    assert 0 < c3.common_tokens(c2) < c1.total_tokens
    # the per-session billing header does not count as shared prefix content
    other_session = copy.deepcopy(body)
    other_session["system"][0]["text"] = "x-anthropic-billing-header: cc_version=9.9.9.fff;"
    assert build_chain("anthropic", other_session).links == c1.links


# -- tracker -------------------------------------------------------------------------


def test_tracker_ttl_refresh_and_learned_min_prefix() -> None:
    clock = Clock()
    tr = CacheTracker(clock=clock)
    body, _ = claude_code_turn(turns=2, target_kb=20)
    chain = build_chain("anthropic", body)
    u = Usage(input_tokens=10, cache_write_tokens=5000, output_tokens=100)
    tr.observe("s", "m", 1024, chain, u, caching_expected=True)
    assert tr.warm_tokens("s", "m", chain) == 5000
    assert tr.warm_tokens("s", "other", chain) == 0
    clock.t += 299
    assert tr.warm_tokens("s", "m", chain) == 5000
    clock.t += 2
    assert tr.warm_tokens("s", "m", chain) == 0  # 5-minute TTL passed
    # a prompt over the documented minimum that the provider did not cache
    tr.observe("s2", "sonnet", 1024, chain, Usage(input_tokens=1500, output_tokens=5),
               caching_expected=True)
    assert tr.min_prefix_for("sonnet", 1024) == 1501
    # a smaller prefix that did get cached lowers it again
    tr.observe("s3", "sonnet", 1024, chain, Usage(cache_write_tokens=1200), caching_expected=True)
    assert tr.min_prefix_for("sonnet", 1024) == 1200
    clock.t += 10_000
    tr.sweep()
    assert len(tr) == 0


# -- cost ----------------------------------------------------------------------------


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry(load_config(None))


def test_request_cost_uses_each_models_own_cache_prices(registry: ModelRegistry) -> None:
    strong = registry.models["sim-claude-strong"]
    cold, *_ = request_cost(strong, 100_000, 0, 500, cacheable=True)
    warm, read, write, _ = request_cost(strong, 100_000, 95_000, 500, cacheable=True)
    p = strong.prices
    assert cold == pytest.approx((100_000 * p.cache_write_5m + 500 * p.output) / 1e6)
    assert warm == pytest.approx((95_000 * p.cache_read + 5_000 * p.cache_write_5m
                                  + 500 * p.output) / 1e6)
    assert (read, write) == (95_000, 5_000)
    gpt = registry.models["sim-gpt-cheap"]  # reads at 0.1x of a different base
    g, *_ = request_cost(gpt, 100_000, 100_000, 0, cacheable=True)
    assert g == pytest.approx(100_000 * gpt.prices.cache_read / 1e6)


def test_remaining_turns_prior() -> None:
    assert remaining_turns(0, "main") == 4 and remaining_turns(100, "main") == 40
    assert remaining_turns(100, "subagent") == 15


# -- decisions -----------------------------------------------------------------------


def make_router(cost: float = 0.5, quality: float = 0.5) -> tuple[Router, Clock]:
    cfg = load_config(None, overrides={"routing": {"objective": {
        "cost": cost, "quality": quality, "latency": 0.0}}})
    clock = Clock()
    reg = ModelRegistry(cfg)
    return Router(cfg, reg, tracker=CacheTracker(clock=clock),
                  quality=QualityPredictor(use_learned=False)), clock


def _turn(body: dict, text: str) -> dict:
    b = copy.deepcopy(body)
    b["messages"].append({"role": "assistant", "content": [{"type": "text", "text": "done"}]})
    b["messages"].append({"role": "user", "content": [{"type": "text", "text": text}]})
    return b


def test_in_task_steps_stick_and_compaction_stays(registry: ModelRegistry) -> None:
    router, _ = make_router()
    body, h = claude_code_turn(turns=2, target_kb=60)
    body["model"] = "default"
    body["messages"].append({"role": "user", "content": "start a new task"})
    s = sig("anthropic", body, h)
    assert s.new_task
    first = router.choose(s, body)
    assert first.how == "pool" and len(first.candidates) == 6
    step = copy.deepcopy(body)
    step["messages"] += [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t9", "name": "Bash",
                                           "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9",
                                      "content": "a.py"}]}]
    d = router.choose(sig("anthropic", step, h), step)
    assert d.how == "sticky" and d.model.name == first.model.name
    comp = _turn(step, "Your task is to create a detailed summary of the conversation so far")
    d2 = router.choose(sig("anthropic", comp, h), comp)
    assert d2.role == "compaction" and d2.how == "compaction"
    assert d2.model.name == first.model.name


def test_utility_goes_to_cheapest(registry: ModelRegistry) -> None:
    router, _ = make_router(cost=0.0, quality=1.0)  # even a quality-only objective
    body = {"model": "default", "max_tokens": 100, "tools": [],
            "output_config": {"format": {"type": "json_schema", "schema": {}}},
            "messages": [{"role": "user", "content": "title for: fix login"}]}
    d = router.choose(sig("anthropic", body, {}), body)
    assert d.how == "utility"
    cheapest = min(d.candidates, key=lambda c: c.cost_now)
    assert d.model.name == cheapest.model


def test_warm_cache_keeps_a_session_where_it_is(registry: ModelRegistry) -> None:
    """Model B is 20% cheaper per token than A, but the session's prefix is warm
    on A: re-writing it on B costs more than B saves over the likely remaining
    turns, so the session stays. Once A's cache has expired, B wins."""
    prices_a = {"input": 3.0, "cache_read": 0.3, "cache_write_5m": 3.75,
                "cache_write_1h": 6.0, "output": 15.0}
    prices_b = {k: v * 0.8 for k, v in prices_a.items()}
    common = {"provider": "sim-anthropic", "upstream_id": "sim-claude-mid", "quality": 0.9,
              "min_cache_prefix": 1024, "context_window": 200000}
    cfg = load_config(None, overrides={
        "routing": {"objective": {"cost": 1.0, "quality": 0.0, "latency": 0.0}},
        "models": {"tier-a": {**common, **prices_a}, "tier-b": {**common, **prices_b}},
        "pools": {"ab": {"models": ["tier-a", "tier-b"]}}})
    clock = Clock()
    router = Router(cfg, ModelRegistry(cfg), tracker=CacheTracker(clock=clock),
                    quality=QualityPredictor(use_learned=False))
    body, h = claude_code_turn(turns=40, target_kb=400)
    body["model"] = "ab"
    body = _turn(body, "new task: refactor the parser")
    s = sig("anthropic", body, h)
    chain = build_chain("anthropic", body)
    st = router.tracker.session(s.cache_session)
    st.last_model, st.turns = "tier-a", 2
    router.tracker.observe(s.cache_session, "tier-a", 1024, chain,
                           Usage(cache_read_tokens=chain.total_tokens, output_tokens=500),
                           caching_expected=True)
    d = router.choose(s, body)
    by = {c.model: c for c in d.candidates}
    assert by["tier-a"].warm_tokens > 30_000 and by["tier-b"].warm_tokens == 0
    assert d.model.name == "tier-a"
    assert "warm" in d.reasons[0]
    clock.t += 400  # past the 5-minute TTL
    st.last_model = "tier-a"
    d_cold = router.choose(sig("anthropic", body, h), body)
    assert d_cold.model.name == "tier-b", d_cold.to_json()["candidates"]
    assert "switching" not in d_cold.reasons[0]


def test_decision_json_is_explained(registry: ModelRegistry) -> None:
    router, _ = make_router()
    body, h = aider_turn(stream=False)
    body["model"] = "default"
    d = router.choose(sig("chat", body, h), body)
    j = d.to_json()
    assert j["reasons"] and j["how"] == "pool"
    assert {c["model"] for c in j["candidates"]} == set(router.registry.pools["default"])
    assert all({"cost_now", "quality", "latency_ms", "score", "warm_tokens"} <= set(c)
               for c in j["candidates"])


# -- switching validity --------------------------------------------------------------


def test_strip_reasoning_on_switch() -> None:
    body = {"model": "m", "max_tokens": 10, "thinking": {"type": "enabled", "budget_tokens": 2000},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "x", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                              "content": "ok"}]}]}
    out = strip_reasoning("anthropic", body)
    assert out is not None
    assert all(b["type"] != "thinking" for b in out["messages"][1]["content"])
    assert out["thinking"] == {"type": "disabled"}
    assert body["messages"][1]["content"][0]["type"] == "thinking"  # input untouched
    cbody, _ = codex_turn()
    r = strip_reasoning("responses", cbody)
    assert r is not None and all(i.get("type") != "reasoning" for i in r["input"])
    assert strip_reasoning("chat", {"messages": []}) is None


def test_incremental_chain_equals_full_build_and_catches_rewrites() -> None:
    body, _ = claude_code_turn(turns=20, target_kb=60)
    first = build_chain("anthropic", body)
    grown = _turn(body, "and now the next task")
    inc = build_chain("anthropic", grown, prev=first)
    full = build_chain("anthropic", grown)
    assert inc.links == full.links and inc.tokens == full.tokens
    assert inc.msg_sigs == full.msg_sigs
    # compaction: history replaced by a summary -> nothing reused
    compacted = copy.deepcopy(body)
    compacted["messages"] = [{"role": "user", "content": "Summary of the work so far ..."},
                             {"role": "user", "content": "continue"}]
    c = build_chain("anthropic", compacted, prev=full)
    assert c.links == build_chain("anthropic", compacted).links
    header_only = {**body, "messages": []}
    assert c.common_tokens(full) == build_chain("anthropic", header_only).total_tokens


def test_peek_model_leaves_session_state_alone() -> None:
    router, _ = make_router()
    body, h = aider_turn(stream=False)
    body["model"] = "default"
    s = sig("chat", body, h)
    m = router.peek_model(s)
    assert m.name in router.registry.pools["default"]
    assert router.tracker.peek_session(s.cache_session) is None  # count_tokens is no turn
    chosen = router.choose(s, body).model.name
    assert router.peek_model(s).name == chosen  # follows the session once it has one
