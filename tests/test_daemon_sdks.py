"""The official SDKs against a real daemon on 127.0.0.1, served by the simulator."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from tests.support.running import RunningDaemon

SYSTEM = "You are a careful coding agent. " * 400  # ~3.2k tokens: above every min prefix


def _anthropic(d: RunningDaemon) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=d.url, api_key="client-key", max_retries=0)


def _openai(d: RunningDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=d.url + "/v1", api_key="client-key", max_retries=0)


def test_anthropic_non_stream_routed_by_pool_and_ledger(daemon: RunningDaemon) -> None:
    msg = _anthropic(daemon).messages.create(
        model="claude-sonnet-5", max_tokens=200,
        messages=[{"role": "user", "content": "[[sim:reply hello there]]"}])
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "hello there"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    rows = daemon.ledger_rows()
    assert len(rows) == 1
    r = rows[0]
    assert r["status"] == "ok" and r["http_status"] == 200
    assert r["requested_model"] == "claude-sonnet-5"
    # an agent's model name routes through the default pool; the decision says why
    assert r["served_model"] in daemon.ctx.registry.pools["default"]
    decision = json.loads(r["decision"])
    assert decision["how"] == "pool" and len(decision["candidates"]) == 6
    assert decision["model"] == r["served_model"]
    assert r["input_tokens"] == msg.usage.input_tokens
    assert r["output_tokens"] == msg.usage.output_tokens
    price = daemon.ctx.registry.models[r["served_model"]].prices
    expect = (msg.usage.input_tokens * price.input + msg.usage.output_tokens * price.output) / 1e6
    assert r["cost_usd"] == pytest.approx(expect)
    assert r["client"].startswith("Anthropic/Python")


def test_anthropic_stream_cache_hits_are_recorded(daemon: RunningDaemon) -> None:
    client = _anthropic(daemon)
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    usages = []
    for _ in range(2):
        with client.messages.stream(
            model="sim-claude-strong", max_tokens=100, system=system,
            messages=[{"role": "user", "content": "hi"}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text
        usages.append(final.usage)
    assert usages[0].cache_creation_input_tokens > 1000
    assert usages[0].cache_read_input_tokens == 0
    assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens
    rows = sorted(daemon.ledger_rows(), key=lambda r: r["started_at"])
    assert [r["cache_write_tokens"] for r in rows] == [usages[0].cache_creation_input_tokens, 0]
    assert rows[1]["cache_read_tokens"] == usages[1].cache_read_input_tokens
    assert rows[1]["cost_usd"] < rows[0]["cost_usd"]
    assert all(r["ttfb_ms"] is not None and r["ttfb_ms"] > 0 for r in rows)


def test_openai_chat_stream_without_include_usage_still_bills(daemon: RunningDaemon) -> None:
    client = _openai(daemon)
    chunks = list(client.chat.completions.create(
        model="gpt-4o", stream=True,
        messages=[{"role": "system", "content": "Act as an expert software developer"},
                  {"role": "user", "content": "[[sim:reply two words]]"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "two words"
    # the client did not ask for usage: no usage-only chunk reaches it
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    (row,) = daemon.ledger_rows()
    assert row["served_model"] in daemon.ctx.registry.pools["default"]
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0


def test_openai_chat_include_usage_and_tools(daemon: RunningDaemon) -> None:
    client = _openai(daemon)
    tools = [{"type": "function", "function": {
        "name": "read_file", "description": "Read a file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                       "required": ["path"]}}}]
    with client.chat.completions.stream(
        model="sim-gpt-strong", tools=tools, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": '[[sim:tool read_file {"path": "a.py"}]]'}],
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "read_file"
    assert call.function.arguments and '"a.py"' in call.function.arguments
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.prompt_tokens > 0


def test_responses_stream(daemon: RunningDaemon) -> None:
    client = _openai(daemon)
    with client.responses.stream(model="gpt-5.5", input="[[sim:reply from codex]]",
                                 store=False) as stream:
        final = stream.get_final_response()
    assert final.output_text == "from codex"
    assert final.usage is not None and final.usage.total_tokens > 0
    (row,) = daemon.ledger_rows()
    assert row["client_format"] == "responses"
    assert row["served_model"] in daemon.ctx.registry.pools["default"]


def test_count_tokens_and_models(daemon: RunningDaemon) -> None:
    client = _anthropic(daemon)
    n = client.messages.count_tokens(
        model="claude-opus-4-8", messages=[{"role": "user", "content": "hello " * 100}])
    assert n.input_tokens > 50
    ids = [m.id for m in client.models.list()]
    assert "sim-claude-strong" in ids and "default" in ids
    oids = [m.id for m in _openai(daemon).models.list()]
    assert set(oids) == set(ids)
    assert daemon.ledger_rows() == []  # count_tokens and model lists are not billed


def test_tool_use_round_trip_anthropic(daemon: RunningDaemon) -> None:
    client = _anthropic(daemon)
    tools = [{"name": "get_weather", "description": "Weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = client.messages.create(
        model="sim-claude-mid", max_tokens=300, tools=tools,
        messages=[{"role": "user", "content": '[[sim:tool get_weather {"city": "Oslo"}]]'}])
    assert first.stop_reason == "tool_use"
    tu = next(b for b in first.content if b.type == "tool_use")
    assert tu.input == {"city": "Oslo"}
    second = client.messages.create(
        model="sim-claude-mid", max_tokens=300, tools=tools,
        messages=[
            {"role": "user", "content": '[[sim:tool get_weather {"city": "Oslo"}]]'},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tu.id, "content": "sunny"}]},
        ])
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
