"""The opt-in cascade for non-streaming requests (daemon/proxy/cascade.py).

Real parts: daemons on 127.0.0.1, the official ``anthropic`` and ``openai``
SDKs as clients, and a fake provider (tests/support/answer_upstream.py) that
answers in the public API shapes, scripted per model. The router is set to
choose the strongest model (quality weight only), so the cheap try is the
pool's cheap model and the escalation target its strong one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from switchman_daemon.pricing import cost_usd
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.proxy.cascade_check import check_answer, compile_patterns
from switchman_shared.admin_client import AdminClient
from switchman_shared.config_schema import DEFAULT_REFUSAL_PATTERNS
from tests.support import answer_upstream as au
from tests.support.running import RunningApp, RunningDaemon

ON = {"x-switchman-cascade": "on"}
OFF = {"x-switchman-cascade": "off"}
# pool -> (cheap model, strong model) as the router ranks them
POOLS = {"an": ("an-cheap", "an-strong"), "oa": ("oa-cheap", "oa-strong"),
         "mixed": ("oa-cheap", "an-strong")}
TOOLS_AN = [{"name": "read_file", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                              "required": ["path"]}}]
TOOLS_OA = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file",
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"]}}}]


def _config(up: RunningApp, enabled: bool) -> str:
    cascade = "[routing.cascade]\nenabled = true\n" if enabled else ""
    return f"""
[daemon]
max_retries = 0
[providers.fake-an]
kind = "anthropic"
base_url = "{up.url}"
[providers.fake-oa]
kind = "openai-compatible"
base_url = "{up.url}/v1"
[models.an-strong]
provider = "fake-an"
catalog = "claude-opus-4-8"
[models.an-cheap]
provider = "fake-an"
catalog = "claude-haiku-4-5-20251001"
[models.an-weak]
provider = "fake-an"
catalog = "claude-haiku-4-5-20251001"
quality = 0.02
[models.oa-strong]
provider = "fake-oa"
catalog = "gpt-5.5"
[models.oa-cheap]
provider = "fake-oa"
catalog = "gpt-5-mini"
[pools.an]
models = ["an-strong", "an-cheap"]
[pools.oa]
models = ["oa-strong", "oa-cheap"]
[pools.mixed]
models = ["an-strong", "oa-cheap"]
[pools.weak]
models = ["an-strong", "an-weak"]
[routing.objective]
cost = 0.0
quality = 1.0
latency = 0.0
[routing.fallbacks]
an-strong = []
oa-strong = []
{cascade}"""


@dataclass
class Rig:
    off: RunningDaemon  # default config: cascade off
    on: RunningDaemon  # [routing.cascade] enabled = true
    up: RunningApp

    def calls(self) -> list[au.Call]:
        return self.up.app[au.CALLS]

    def models_called(self) -> list[str]:
        return [c.model for c in self.calls()]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("cascade")
    up = RunningApp(au.make_app)
    daemons: list[RunningDaemon] = []
    try:
        for enabled in (False, True):
            cfg = tmp / f"cascade-{enabled}.toml"
            cfg.write_text(_config(up, enabled))
            daemons.append(RunningDaemon(tmp / f"d-{enabled}", config_path=cfg))
        yield Rig(daemons[0], daemons[1], up)
    finally:
        for d in daemons:
            d.stop()
        up.stop()


@pytest.fixture(autouse=True)
def _fresh_calls(request: pytest.FixtureRequest) -> None:
    if "rig" in request.fixturenames:
        request.getfixturevalue("rig").calls().clear()


# -- helpers -----------------------------------------------------------------------


def _row(d: RunningDaemon, rid: str) -> dict[str, Any]:
    (row,) = [r for r in d.ledger_rows() if r["id"] == rid]
    return row


def _reasons(row: dict[str, Any]) -> list[str]:
    return json.loads(row["decision"])["reasons"]


def _cost(d: RunningDaemon, call: au.Call) -> float:
    u = Usage(input_tokens=call.input_tokens, output_tokens=call.output_tokens)
    return cost_usd(u, d.ctx.registry.models[call.model].prices)


@dataclass
class Answer:
    headers: Any
    text: str
    tool_names: list[str]
    usage: tuple[int, int]  # (input tokens, output tokens) as the client sees them


def _ask(d: RunningDaemon, client: str, pool: str, prompt: str,
         headers: dict[str, str] | None = None, tools: bool = False) -> Answer:
    """One non-streaming request through an official SDK."""
    h = headers or {}
    if client == "anthropic":
        an = anthropic.Anthropic(base_url=d.url, api_key="any", max_retries=0)
        raw = an.messages.with_raw_response.create(
            model=pool, max_tokens=200, messages=[{"role": "user", "content": prompt}],
            extra_headers=h, **({"tools": TOOLS_AN} if tools else {}))
        m = raw.parse()
        return Answer(raw.headers, "".join(b.text for b in m.content if b.type == "text"),
                      [b.name for b in m.content if b.type == "tool_use"],
                      (m.usage.input_tokens, m.usage.output_tokens))
    oa = openai.OpenAI(base_url=d.url + "/v1", api_key="any", max_retries=0)
    if client == "chat":
        raw = oa.chat.completions.with_raw_response.create(
            model=pool, messages=[{"role": "user", "content": prompt}], extra_headers=h,
            **({"tools": TOOLS_OA} if tools else {}))
        c = raw.parse()
        msg = c.choices[0].message
        assert c.usage is not None
        return Answer(raw.headers, msg.content or "",
                      [t.function.name for t in msg.tool_calls or []],
                      (c.usage.prompt_tokens, c.usage.completion_tokens))
    raw = oa.responses.with_raw_response.create(model=pool, input=prompt, store=False,
                                                extra_headers=h)
    r = raw.parse()
    assert r.usage is not None
    return Answer(raw.headers, r.output_text,
                  [i.name for i in r.output if i.type == "function_call"],
                  (r.usage.input_tokens, r.usage.output_tokens))


# -- (d) off by default --------------------------------------------------------------


def test_cascade_is_off_by_default(rig: Rig) -> None:
    assert rig.off.config.routing.cascade.enabled is False
    a = _ask(rig.off, "anthropic", "an", "[[as:truncated@an-cheap]] explain the bug")
    assert rig.models_called() == ["an-strong"]
    assert a.text == "Answer from an-strong."
    assert "x-switchman-cascade" not in a.headers
    row = _row(rig.off, a.headers["x-request-id"])
    assert row["cost_usd"] == pytest.approx(_cost(rig.off, rig.calls()[0]))
    assert not any("cascade" in r for r in _reasons(row))


# -- (a) a good cheap answer is served; only the cheap model is billed ---------------------


@pytest.mark.parametrize(("client", "pool", "tools"), [
    ("anthropic", "an", False), ("chat", "oa", False), ("responses", "oa", False),
    ("anthropic", "an", True), ("chat", "mixed", True)])
def test_good_cheap_answer_is_accepted(rig: Rig, client: str, pool: str, tools: bool) -> None:
    cheap, strong = POOLS[pool]
    marker = "[[as:tool-good]] " if tools else ""
    a = _ask(rig.off, client, pool, marker + "rename a variable", ON, tools=tools)
    assert rig.models_called() == [cheap]
    assert a.headers["x-switchman-cascade"] == "accepted"
    assert a.headers["x-switchman-model"] == cheap
    if tools:
        assert a.tool_names == ["read_file"]
    else:
        assert a.text == f"Answer from {cheap}."
    (call,) = rig.calls()
    assert a.usage == (call.input_tokens, call.output_tokens)
    row = _row(rig.off, a.headers["x-request-id"])
    assert row["served_model"] == cheap and row["status"] == "ok" and row["attempts"] == 1
    assert row["cost_usd"] == pytest.approx(_cost(rig.off, call))
    assert (row["input_tokens"], row["output_tokens"]) == a.usage
    assert any(r.startswith(f"cascade: cheap model {cheap} answered first")
               and r.endswith(f" on {strong}); accepted") for r in _reasons(row))


# -- (b) a bad cheap answer is withheld; the strong model answers; both are billed -----------


@pytest.mark.parametrize(("client", "pool", "kind", "tools", "why"), [
    ("anthropic", "an", "truncated", False, "truncated (stop reason max_tokens)"),
    ("anthropic", "an", "empty", False, "empty answer (no text and no tool calls)"),
    ("anthropic", "an", "refusal", False, "refusal or hedging: \"I'm sorry, but I can't\""),
    ("anthropic", "an", "tool-unknown", True,
     "tool call to 'delete_everything', which the request does not offer"),
    ("anthropic", "an", "tool-badjson", True,
     "the 'read_file' call lacks required argument(s) path"),
    # a chat upstream's broken arguments, translated for an Anthropic client
    ("anthropic", "mixed", "tool-badjson", True,
     "arguments of the 'read_file' call are not valid JSON"),
    ("chat", "oa", "tool-badjson", True, "arguments of the 'read_file' call are not valid JSON"),
    ("chat", "oa", "truncated", False, "truncated (stop reason length)"),
    ("responses", "oa", "empty", False, "empty answer (no text and no tool calls)"),
    ("chat", "oa", "500", False, "upstream error"),
])
def test_bad_cheap_answer_escalates(rig: Rig, client: str, pool: str, kind: str, tools: bool,
                                    why: str) -> None:
    cheap, strong = POOLS[pool]
    a = _ask(rig.off, client, pool, f"[[as:{kind}@{cheap}]] fix the failing test", ON,
             tools=tools)
    assert rig.models_called() == [cheap, strong]
    first, second = rig.calls()
    assert first.kind == kind and second.kind == "good"
    # the client sees exactly the strong model's answer, with its usage
    assert a.text == f"Answer from {strong}." and a.tool_names == []
    assert a.usage == (second.input_tokens, second.output_tokens)
    assert a.headers["x-switchman-cascade"] == "escalated"
    assert a.headers["x-switchman-model"] == strong
    row = _row(rig.off, a.headers["x-request-id"])
    assert row["served_model"] == strong and row["status"] == "ok"
    assert row["attempts"] == 2
    # the row bills both attempts; its tokens are the answering model's
    assert row["cost_usd"] == pytest.approx(_cost(rig.off, first) + _cost(rig.off, second))
    assert row["cost_usd"] > _cost(rig.off, second) or kind == "500"
    assert (row["input_tokens"], row["output_tokens"]) == (second.input_tokens,
                                                           second.output_tokens)
    (reason,) = [r for r in _reasons(row) if r.startswith("cascade:")]
    verb = "failed" if kind == "500" else "answered, rejected"
    assert reason.startswith(f"cascade: cheap model {cheap} {verb}: {why}")
    assert f"escalated to {strong}" in reason


# -- (c) streams are never cascaded ------------------------------------------------------


def test_streaming_requests_are_never_cascaded(rig: Rig) -> None:
    d = rig.on  # enabled in config, and asked for by header too
    an = anthropic.Anthropic(base_url=d.url, api_key="any", max_retries=0)
    with an.messages.stream(model="an", max_tokens=100, extra_headers=ON,
                            messages=[{"role": "user", "content": "stream please"}]) as s:
        text = "".join(s.text_stream)
        an_rid = s.response.headers["x-request-id"]
        assert "x-switchman-cascade" not in s.response.headers
    assert text == "Answer from an-strong."
    oa = openai.OpenAI(base_url=d.url + "/v1", api_key="any", max_retries=0)
    chunks = list(oa.chat.completions.create(
        model="oa", stream=True, extra_headers=ON,
        messages=[{"role": "user", "content": "stream it"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "Answer from oa-strong."
    assert [(c.model, c.stream) for c in rig.calls()] == [("an-strong", True),
                                                          ("oa-strong", True)]
    row = _row(d, an_rid)
    assert row["served_model"] == "an-strong" and row["attempts"] == 1
    assert any(r.startswith("cascade: not for streaming requests") for r in _reasons(row))


# -- (e) config and the per-request header ------------------------------------------------


def test_enabled_in_config_cascades_and_budgets_settle_the_total(rig: Rig) -> None:
    d = rig.on
    b = d.ctx.budgets.set("global", "total", hard_usd=100.0)

    def spent() -> float:
        (st,) = [s for s in d.ctx.budgets.status() if s["id"] == b.id]
        assert st["reserved_usd"] == 0
        return st["spent_usd"]

    try:
        before = spent()  # a new budget counts the ledger's earlier spend
        a = _ask(d, "chat", "oa", "[[as:truncated@oa-cheap]] write the migration")
        first, second = rig.calls()
        row = _row(d, a.headers["x-request-id"])
        assert a.headers["x-switchman-cascade"] == "escalated"
        total = _cost(d, first) + _cost(d, second)
        assert row["cost_usd"] == pytest.approx(total)
        assert spent() - before == pytest.approx(total)
    finally:
        d.ctx.budgets.remove(b.id)


def test_header_off_opts_a_request_out(rig: Rig) -> None:
    a = _ask(rig.on, "chat", "oa", "[[as:truncated@oa-cheap]] write the docs", OFF)
    assert rig.models_called() == ["oa-strong"]
    assert "x-switchman-cascade" not in a.headers


def test_header_on_opts_a_request_in(rig: Rig) -> None:
    a = _ask(rig.off, "responses", "oa", "summarise the diff", ON)
    assert rig.models_called() == ["oa-cheap"]
    assert a.headers["x-switchman-cascade"] == "accepted"
    a = _ask(rig.off, "responses", "oa", "summarise the diff again")
    assert rig.models_called() == ["oa-cheap", "oa-strong"]
    assert "x-switchman-cascade" not in a.headers


def test_quality_floor_skips_the_cheap_try(rig: Rig) -> None:
    a = _ask(rig.off, "anthropic", "weak", "design the schema", ON)
    assert rig.models_called() == ["an-strong"]
    assert a.headers["x-switchman-cascade"] == "skipped"
    row = _row(rig.off, a.headers["x-request-id"])
    assert any(re.match(r"cascade: skipped: an-weak's predicted quality 0\.\d\d is below the "
                        r"floor 0\.50", r) for r in _reasons(row))


def test_set_policy_turns_the_cascade_on_and_off_live(rig: Rig, tmp_path: Path) -> None:
    """The admin plane's switch (console checkbox, `switchman policy set --cascade`):
    the next request follows it, no restart, no per-request header."""
    cfg = tmp_path / "cascade.toml"
    cfg.write_text(_config(rig.up, False))
    d = RunningDaemon(tmp_path / "d", config_path=cfg)
    try:
        with AdminClient.connect(d.daemon.data_dir) as c:
            a = _ask(d, "anthropic", "an", "explain the bug")
            assert "x-switchman-cascade" not in a.headers
            assert rig.models_called() == ["an-strong"]

            assert c.set_policy(cascade=True).cascade.enabled
            a = _ask(d, "anthropic", "an", "explain the bug")
            assert a.headers["x-switchman-cascade"] == "accepted"
            assert a.headers["x-switchman-model"] == "an-cheap"
            assert rig.models_called() == ["an-strong", "an-cheap"]

            # the floor applies live too: nothing cheap is good enough now
            c.set_policy(cascade_quality_floor=0.99)
            a = _ask(d, "chat", "oa", "write the docs")
            assert a.headers["x-switchman-cascade"] == "skipped"
            assert any("below the floor 0.99" in r
                       for r in _reasons(_row(d, a.headers["x-request-id"])))

            assert not c.set_policy(cascade=False).cascade.enabled
            a = _ask(d, "chat", "oa", "write the docs")
            assert "x-switchman-cascade" not in a.headers
            assert rig.models_called()[-1] == "oa-strong"
    finally:
        d.stop()


def test_a_pinned_model_is_not_cascaded(rig: Rig) -> None:
    a = _ask(rig.off, "anthropic", "an-strong", "[[as:truncated@an-strong]] pinned", ON)
    assert rig.models_called() == ["an-strong"]
    assert a.headers["x-switchman-cascade"] == "skipped"


# -- the acceptance check alone ---------------------------------------------------------------


PATTERNS = compile_patterns(DEFAULT_REFUSAL_PATTERNS)


@pytest.mark.parametrize(("text", "rejected"), [
    ("I'm sorry, but I can't help with that.", True),
    ("I\u2019m unable to assist with this request.", True),
    ("As an AI language model, I have no opinion.", True),
    ("I'm not sure what you mean by that.", True),
    ("I don't have enough context to answer.", True),
    ("Sure, here is the fix: change line 3.", False),
    ("I can't reproduce it, but the stack trace points at line 3: ...", False),
    ("The sorry state of this module: I cannot stress enough ...", False),
])
def test_refusal_and_hedging_patterns(text: str, rejected: bool) -> None:
    answer = {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}
    verdict = check_answer("anthropic", answer, {}, PATTERNS)
    assert (verdict is not None) == rejected, verdict


def test_a_hedge_before_a_tool_call_is_accepted() -> None:
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "I'm not sure; let me read the file.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "read_file", "arguments": '{"path": "a.py"}'}}]}}]}
    assert check_answer("chat", answer, {"tools": TOOLS_OA}, PATTERNS) is None


def test_responses_incomplete_and_custom_tools() -> None:
    req = {"tools": [{"type": "custom", "name": "apply_patch"}]}
    incomplete = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
                  "output": [{"type": "message", "content": [
                      {"type": "output_text", "text": "partial"}]}]}
    assert check_answer("responses", incomplete, req, PATTERNS) == \
        "truncated (stop reason incomplete: max_output_tokens)"
    # a freeform tool's input is not JSON, and need not be
    patch = {"status": "completed", "output": [
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch",
         "input": "*** Begin Patch\n*** End Patch"}]}
    assert check_answer("responses", patch, req, PATTERNS) is None
