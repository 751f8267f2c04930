"""Every client format against every upstream format, streaming and not, through
a real daemon, with the simulator as the faithful upstream. Usage (including
cache reads) must survive translation in both directions and reach the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest

from tests.support.running import RunningDaemon

# Upstream formats: sim-claude-mid speaks Anthropic; sim-resp-mid is an "openai"
# provider limited to Responses; sim-compat-mid an "openai-compatible" (chat) one.
MATRIX_CONFIG = """
[providers.sim-resp]
kind = "openai"
base_url = "sim"
formats = ["responses"]

[providers.sim-compat]
kind = "openai-compatible"
base_url = "sim"

[models.sim-resp-mid]
provider = "sim-resp"
upstream_id = "sim-gpt-mid"

[models.sim-compat-mid]
provider = "sim-compat"
upstream_id = "sim-gpt-mid"
"""

UPSTREAMS = {"anthropic": "sim-claude-mid", "responses": "sim-resp-mid", "chat": "sim-compat-mid"}
CLIENTS = ["anthropic", "chat", "responses"]
SYSTEM = "You are a meticulous coding agent working in a large repository. " * 180

TOOL_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}},
               "required": ["path"]}


@pytest.fixture(scope="module")
def mdaemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("matrix")
    cfg = tmp / "matrix.toml"
    cfg.write_text(MATRIX_CONFIG)
    d = RunningDaemon(Path(tmp), config_path=cfg)
    try:
        yield d
    finally:
        d.stop()


@dataclass
class Result:
    text: str
    calls: list[tuple[str, dict]]
    cached: int
    prompt_total: int
    output: int


def _call(d: RunningDaemon, fmt: str, model: str, user: str, stream: bool,
          tools: bool = False) -> Result:
    if fmt == "anthropic":
        c = anthropic.Anthropic(base_url=d.url, api_key="k", max_retries=0)
        # Anthropic clients mark their own breakpoints (as Claude Code does); the
        # same-format path must pass them through untouched.
        system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
        kw: dict = {"model": model, "max_tokens": 300, "system": system,
                    "messages": [{"role": "user", "content": user}]}
        if tools:
            kw["tools"] = [{"name": "read_file", "description": "Read a file",
                            "input_schema": TOOL_SCHEMA}]
        if stream:
            with c.messages.stream(**kw) as s:
                msg = s.get_final_message()
        else:
            msg = c.messages.create(**kw)
        u = msg.usage
        return Result(
            "".join(b.text for b in msg.content if b.type == "text"),
            [(b.name, b.input) for b in msg.content if b.type == "tool_use"],
            u.cache_read_input_tokens or 0,
            u.input_tokens + (u.cache_read_input_tokens or 0)
            + (u.cache_creation_input_tokens or 0),
            u.output_tokens)
    oc = openai.OpenAI(base_url=d.url + "/v1", api_key="k", max_retries=0)
    if fmt == "chat":
        kw = {"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                           {"role": "user", "content": user}]}
        if tools:
            kw["tools"] = [{"type": "function", "function": {
                "name": "read_file", "description": "Read a file", "parameters": TOOL_SCHEMA}}]
        if stream:
            with oc.chat.completions.stream(stream_options={"include_usage": True}, **kw) as s:
                for _ in s:
                    pass
                comp = s.get_final_completion()
        else:
            comp = oc.chat.completions.create(**kw)
        m = comp.choices[0].message
        u = comp.usage
        assert u is not None
        return Result(
            m.content or "",
            [(t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls or []],
            (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0,
            u.prompt_tokens, u.completion_tokens)
    kw = {"model": model, "instructions": SYSTEM, "input": user, "store": False}
    if tools:
        kw["tools"] = [{"type": "function", "name": "read_file", "description": "Read a file",
                        "parameters": TOOL_SCHEMA, "strict": False}]
    if stream:
        with oc.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = oc.responses.create(**kw)
    u = r.usage
    assert u is not None
    return Result(
        r.output_text,
        [(o.name, json.loads(o.arguments)) for o in r.output if o.type == "function_call"],
        u.input_tokens_details.cached_tokens or 0, u.input_tokens, u.output_tokens)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
def test_text_usage_and_cache(mdaemon: RunningDaemon, client: str, upstream: str,
                              stream: bool) -> None:
    model = UPSTREAMS[upstream]
    marker = f"{client}-{upstream}-{stream}"
    first = _call(mdaemon, client, model, f"[[sim:reply hello {marker}]]", stream)
    assert first.text == f"hello {marker}"
    assert first.output > 0 and first.prompt_total > 1000
    # same prefix again: the provider's cache is read, and the client sees it
    second = _call(mdaemon, client, model, f"[[sim:reply again {marker}]]", stream)
    assert second.text == f"again {marker}"
    assert second.cached > 1000, "cache reads lost in translation (or no breakpoints placed)"
    rows = [r for r in mdaemon.ledger_rows() if r["served_model"] == model
            and r["client_format"] == client and r["stream"] == stream]
    assert len(rows) >= 2
    last = max(rows, key=lambda r: r["started_at"])
    assert last["status"] == "ok"
    assert last["cache_read_tokens"] == second.cached
    assert last["output_tokens"] == second.output
    assert last["upstream_format"] == upstream
    assert last["cost_usd"] > 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("client", CLIENTS)
def test_tool_call(mdaemon: RunningDaemon, client: str, upstream: str, stream: bool) -> None:
    res = _call(mdaemon, client, UPSTREAMS[upstream],
                '[[sim:tool read_file {"path": "src/main.py"}]]', stream, tools=True)
    assert res.calls == [("read_file", {"path": "src/main.py"})]
