"""Tests for the built-in simulated providers (daemon/sim)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from switchman_daemon.sim import SIM_STATE, SimState, create_sim_app
from switchman_daemon.sim.replies import parse_directives
from switchman_daemon.sim.tokens import text_tokens

AH = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
OH = {"Authorization": "Bearer k"}
CLAUDE = "sim-claude-mid"  # min_cache_prefix 1024
CLAUDE_CHEAP = "sim-claude-cheap"  # min_cache_prefix 2048
GPT = "sim-gpt-mid"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[TestClient]:
    app = create_sim_app(time_scale=0, clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def state_of(client: TestClient) -> SimState:
    return client.app[SIM_STATE]


def words(tokens: int, tag: str = "a") -> str:
    """Text worth exactly `tokens` estimator tokens (4 bytes each)."""
    unit = (tag + "xyz")[:4]
    return unit * tokens


def eph(ttl: str | None = None) -> dict[str, str]:
    return {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}


async def claude(client: TestClient, body: dict[str, Any], **kw: Any) -> aiohttp.ClientResponse:
    body = {"model": CLAUDE, "max_tokens": 256, **body}
    return await client.post("/v1/messages", json=body, headers=AH, **kw)


async def claude_usage(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await claude(client, body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["usage"]


def sys_body(tokens: int, ttl: str | None = None, user: str = "hi", tag: str = "a") -> dict:
    return {
        "system": [{"type": "text", "text": words(tokens, tag), "cache_control": eph(ttl)}],
        "messages": [{"role": "user", "content": user}],
    }


async def sse_events(resp: aiohttp.ClientResponse) -> list[tuple[str | None, Any]]:
    """Parse an SSE body into (event name, data) pairs."""
    text = await resp.text()
    out: list[tuple[str | None, Any]] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        name, data = None, None
        for line in frame.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                raw = line[6:]
                data = raw if raw == "[DONE]" else json.loads(raw)
        out.append((name, data))
    return out


# -- tokens & directives ----------------------------------------------------------


def test_token_estimator_is_ceil_bytes_over_4() -> None:
    assert text_tokens("") == 0
    assert text_tokens("abcd") == 1
    assert text_tokens("abcde") == 2
    assert text_tokens("é" * 2) == 1  # 4 utf-8 bytes


def test_parse_directives() -> None:
    d, rest = parse_directives(
        'go [[sim:tool f {"a": [[1]]}]] [[sim:fail-first 2 429]] [[sim:slow 5]] [[sim:drop]]'
    )
    assert d.tool == ("f", '{"a": [[1]]}')
    assert d.fail_first == [("[[sim:fail-first 2 429]]", 2, 429)]
    assert d.slow_ms == 5 and d.drop
    assert "sim:" not in rest
    d, _ = parse_directives("[[sim:tool apply_patch *** Begin Patch\n*** End Patch]]")
    assert d.tool == ("apply_patch", "*** Begin Patch\n*** End Patch")
    d, _ = parse_directives("[[sim:error nope]] [[sim:reply  exact text ]]")
    assert d.error is None and d.reply == "exact text"


# -- Anthropic prompt caching ---------------------------------------------------


async def test_anthropic_write_then_read(sim: TestClient) -> None:
    first = await claude_usage(sim, sys_body(1500))
    assert first["cache_creation_input_tokens"] == 1500
    assert first["cache_read_input_tokens"] == 0
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": 1500,
        "ephemeral_1h_input_tokens": 0,
    }
    assert first["input_tokens"] == text_tokens("hi")
    second = await claude_usage(sim, sys_body(1500, user="another question"))
    assert second["cache_read_input_tokens"] == 1500
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == text_tokens("another question")
    # A different prefix misses.
    third = await claude_usage(sim, sys_body(1500, tag="b"))
    assert third["cache_read_input_tokens"] == 0
    assert third["cache_creation_input_tokens"] == 1500


async def test_anthropic_cache_is_per_model(sim: TestClient) -> None:
    await claude_usage(sim, sys_body(1500))
    other = await claude_usage(sim, {**sys_body(1500), "model": "sim-claude-strong"})
    assert other["cache_read_input_tokens"] == 0
    assert other["cache_creation_input_tokens"] == 1500


async def test_anthropic_below_min_prefix_not_cached(sim: TestClient) -> None:
    body = {**sys_body(1500), "model": CLAUDE_CHEAP}  # cheap needs 2048
    for _ in range(2):
        usage = await claude_usage(sim, body)
        assert usage["cache_creation_input_tokens"] == 0
        assert usage["cache_read_input_tokens"] == 0
        assert usage["input_tokens"] == 1500 + text_tokens("hi")
    assert state_of(sim).anthropic_cache.tokens_for(CLAUDE_CHEAP) == []


async def test_anthropic_ttl_expiry_and_refresh(sim: TestClient, clock: FakeClock) -> None:
    await claude_usage(sim, sys_body(1200))
    clock.advance(200)
    assert (await claude_usage(sim, sys_body(1200)))["cache_read_input_tokens"] == 1200
    clock.advance(200)  # 400 s after the write, 200 s after the refreshing hit
    assert (await claude_usage(sim, sys_body(1200)))["cache_read_input_tokens"] == 1200
    clock.advance(301)
    usage = await claude_usage(sim, sys_body(1200))
    assert usage["cache_read_input_tokens"] == 0
    assert usage["cache_creation_input_tokens"] == 1200


async def test_anthropic_1h_ttl_reported_separately(sim: TestClient, clock: FakeClock) -> None:
    body = {
        "tools": [
            {
                "name": "t",
                "description": words(1100),
                "input_schema": {"type": "object"},
                "cache_control": eph("1h"),
            }
        ],
        "system": [{"type": "text", "text": words(600, "s"), "cache_control": eph()}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    first = await claude_usage(sim, body)
    split = first["cache_creation"]
    assert split["ephemeral_1h_input_tokens"] > 1100
    assert split["ephemeral_5m_input_tokens"] == 600
    assert first["cache_creation_input_tokens"] == sum(split.values())
    clock.advance(1000)  # 5m entry gone, 1h entry alive
    again = await claude_usage(sim, body)
    assert again["cache_read_input_tokens"] == split["ephemeral_1h_input_tokens"]
    assert again["cache_creation"] == {
        "ephemeral_5m_input_tokens": 600,
        "ephemeral_1h_input_tokens": 0,
    }


async def test_anthropic_1h_after_5m_rejected(sim: TestClient) -> None:
    body = sys_body(10)
    body["messages"] = [
        {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": eph("1h")}]}
    ]
    resp = await claude(sim, body)
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_anthropic_five_breakpoints_rejected(sim: TestClient) -> None:
    blocks = [{"type": "text", "text": f"b{i}", "cache_control": eph()} for i in range(5)]
    resp = await claude(sim, {"messages": [{"role": "user", "content": blocks}]})
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "maximum of 4" in body["error"]["message"]
    assert body["request_id"]
    assert state_of(sim).requests[CLAUDE] == 0


async def test_anthropic_moving_breakpoint_reads_previous_turn(sim: TestClient) -> None:
    """Claude Code moves its last breakpoint every turn; lookback still hits."""
    system = [{"type": "text", "text": words(1100), "cache_control": eph()}]
    turn1 = [
        {
            "role": "user",
            "content": [{"type": "text", "text": words(300, "u"), "cache_control": eph()}],
        }
    ]
    u1 = await claude_usage(sim, {"system": system, "messages": turn1})
    assert u1["cache_creation_input_tokens"] == 1400
    turn2 = [
        {"role": "user", "content": [{"type": "text", "text": words(300, "u")}]},
        {"role": "assistant", "content": [{"type": "text", "text": words(50, "r")}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": words(70, "v"), "cache_control": eph()}],
        },
    ]
    u2 = await claude_usage(sim, {"system": system, "messages": turn2})
    assert u2["cache_read_input_tokens"] == 1400
    assert u2["cache_creation_input_tokens"] == 120
    assert u2["input_tokens"] == 0


async def test_anthropic_automatic_cache_control(sim: TestClient) -> None:
    body = {"cache_control": eph(), "messages": [{"role": "user", "content": words(1300)}]}
    assert (await claude_usage(sim, body))["cache_creation_input_tokens"] == 1300
    assert (await claude_usage(sim, body))["cache_read_input_tokens"] == 1300


async def test_count_tokens_matches_usage(sim: TestClient) -> None:
    body = {**sys_body(1500), "model": CLAUDE}
    resp = await sim.post("/v1/messages/count_tokens?beta=true", json=body, headers=AH)
    assert resp.status == 200
    total = (await resp.json())["input_tokens"]
    usage = await claude_usage(sim, body)
    assert total == usage["input_tokens"] + usage["cache_creation_input_tokens"]
    assert state_of(sim).count_tokens_calls[CLAUDE] == 1


# -- OpenAI automatic caching ---------------------------------------------------


async def chat_usage(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/v1/chat/completions", json={"model": GPT, **body}, headers=OH)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["usage"]


def chat_body(sys_tokens: int, user: str = "q", tag: str = "a") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": words(sys_tokens, tag)},
            {"role": "user", "content": user},
        ]
    }


async def test_openai_below_1024_never_cached(sim: TestClient) -> None:
    for _ in range(2):
        usage = await chat_usage(sim, chat_body(900))
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0


async def test_openai_cached_in_128_steps(sim: TestClient) -> None:
    first = await chat_usage(sim, chat_body(2000))
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    second = await chat_usage(sim, chat_body(2000))
    total = second["prompt_tokens"]
    assert total == 2000 + text_tokens("q") + 0  # estimator: content only
    assert second["prompt_tokens_details"]["cached_tokens"] == 1024 + (total - 1024) // 128 * 128
    # Same system prefix, new user turn: only the shared 2000-token prefix reads.
    third = await chat_usage(sim, chat_body(2000, user="something else"))
    assert third["prompt_tokens_details"]["cached_tokens"] == 1024 + (2000 - 1024) // 128 * 128


async def test_openai_prefix_mismatch_no_read(sim: TestClient) -> None:
    await chat_usage(sim, chat_body(2000))
    usage = await chat_usage(sim, chat_body(2000, tag="b"))
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


async def test_openai_prompt_cache_key_partitions(sim: TestClient, clock: FakeClock) -> None:
    await chat_usage(sim, {**chat_body(1500), "prompt_cache_key": "s1"})
    other = await chat_usage(sim, {**chat_body(1500), "prompt_cache_key": "s2"})
    assert other["prompt_tokens_details"]["cached_tokens"] == 0
    same = await chat_usage(sim, {**chat_body(1500), "prompt_cache_key": "s1"})
    assert same["prompt_tokens_details"]["cached_tokens"] == 1408
    clock.advance(301)
    gone = await chat_usage(sim, {**chat_body(1500), "prompt_cache_key": "s1"})
    assert gone["prompt_tokens_details"]["cached_tokens"] == 0


async def test_responses_cache_ignores_item_ids(sim: TestClient) -> None:
    def body(item_id: str) -> dict[str, Any]:
        return {
            "model": GPT,
            "input": [
                {"type": "message", "role": "developer", "id": item_id, "content": words(1300)},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "q"}],
                },
            ],
        }

    r1 = await sim.post("/v1/responses", json=body("msg_1"), headers=OH)
    assert (await r1.json())["usage"]["input_tokens_details"]["cached_tokens"] == 0
    r2 = await sim.post("/v1/responses", json=body("msg_2"), headers=OH)
    usage = (await r2.json())["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == 1280
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


# -- streaming event order --------------------------------------------------------


async def test_anthropic_stream_event_order(sim: TestClient) -> None:
    resp = await claude(sim, {**sys_body(1500), "stream": True}, params={"beta": "true"})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = await sse_events(resp)
    names = [n for n, _ in events]
    assert all(data["type"] == name for name, data in events)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    usage = events[0][1]["message"]["usage"]
    assert usage["output_tokens"] == 1
    assert usage["cache_creation_input_tokens"] == 1500
    assert usage["cache_creation"]["ephemeral_5m_input_tokens"] == 1500
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text.startswith(f"Simulated reply from {CLAUDE}")
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == text_tokens(text)


async def test_anthropic_stream_thinking_and_tool(sim: TestClient) -> None:
    body = {
        "stream": True,
        "max_tokens": 4096,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": '[[sim:tool get_weather {"city": "Paris"}]]'}],
    }
    events = await sse_events(await claude(sim, body))
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "tool_use"]
    deltas = [d for n, d in events if n == "content_block_delta"]
    kinds = [d["delta"]["type"] for d in deltas]
    assert kinds[0] == "thinking_delta"
    sig = kinds.index("signature_delta")
    assert all(k == "thinking_delta" for k in kinds[:sig])
    assert all(k == "input_json_delta" for k in kinds[sig + 1 :])
    args = "".join(d["delta"]["partial_json"] for d in deltas if d["index"] == 1)
    assert json.loads(args) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_chat_stream_usage_only_when_requested(sim: TestClient) -> None:
    body = {"model": GPT, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = await sim.post("/v1/chat/completions", json=body, headers=OH)
    events = await sse_events(resp)
    assert events[-1][1] == "[DONE]"
    chunks = [d for _, d in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    body["stream_options"] = {"include_usage": True}
    events = await sse_events(await sim.post("/v1/chat/completions", json=body, headers=OH))
    chunks = [d for _, d in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_chat_stream_tool_call(sim: TestClient) -> None:
    body = {
        "model": GPT,
        "stream": True,
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {}}}],
        "messages": [{"role": "user", "content": '[[sim:tool ls {"path": "."}]]'}],
    }
    events = await sse_events(await sim.post("/v1/chat/completions", json=body, headers=OH))
    calls = [tc for _, d in events[:-1] for tc in d["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "ls" and calls[0]["id"].startswith("call_")
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"path": "."}
    assert events[-2][1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_responses_stream_event_order(sim: TestClient) -> None:
    body = {"model": GPT, "stream": True, "input": "hello"}
    events = await sse_events(await sim.post("/v1/responses", json=body, headers=OH))
    names = [n for n, _ in events]
    assert all(d["type"] == n for n, d in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    deltas = names.count("response.output_text.delta")
    assert deltas >= 2
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[-1][1]["response"]
    assert done["status"] == "completed"
    assert set(done["usage"]) == {
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "output_tokens_details",
        "total_tokens",
    }


async def test_responses_function_and_custom_tool_calls(sim: TestClient) -> None:
    tools = [
        {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch", "description": "patch"},
        {"type": "web_search", "external_web_access": False},
    ]
    history = [
        {"type": "message", "role": "user", "content": "earlier"},
        {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "reasoning", "summary": [], "encrypted_content": "abc"},
    ]
    body = {
        "model": GPT,
        "stream": True,
        "tools": tools,
        "input": [*history, {"role": "user", "content": '[[sim:tool exec_command {"cmd": "ls"}]]'}],
    }
    events = await sse_events(await sim.post("/v1/responses", json=body, headers=OH))
    names = [n for n, _ in events]
    assert "response.function_call_arguments.delta" in names
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == {"cmd": "ls"}
    item = events[-1][1]["response"]["output"][-1]
    assert item["type"] == "function_call" and item["name"] == "exec_command"

    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch"
    body["input"] = [{"role": "user", "content": f"[[sim:tool apply_patch {patch}]]"}]
    body["stream"] = False
    resp = await sim.post("/v1/responses", json=body, headers=OH)
    out = (await resp.json())["output"]
    assert out[-1]["type"] == "custom_tool_call"
    assert out[-1]["input"] == patch


# -- replies and directives -------------------------------------------------------


async def test_tool_result_is_acknowledged(sim: TestClient) -> None:
    messages = [
        {"role": "user", "content": '[[sim:tool get_weather {"city": "Oslo"}]]'},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]
    body = await (await claude(sim, {"messages": messages})).json()
    assert body["stop_reason"] == "end_turn"
    assert "get_weather" in body["content"][0]["text"] and "sunny" in body["content"][0]["text"]

    chat = {
        "model": GPT,
        "messages": [
            {"role": "user", "content": "[[sim:tool ls]]"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "ls", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        ],
    }
    data = await (await sim.post("/v1/chat/completions", json=chat, headers=OH)).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert "a.txt" in data["choices"][0]["message"]["content"]


async def test_reply_directive_and_max_tokens_cap(sim: TestClient) -> None:
    msg = [{"role": "user", "content": "[[sim:reply exactly this]]"}]
    body = await (await claude(sim, {"messages": msg})).json()
    assert body["content"] == [{"type": "text", "text": "exactly this"}]
    capped = await (await claude(sim, {"messages": msg, "max_tokens": 1})).json()
    assert capped["stop_reason"] == "max_tokens"
    assert capped["usage"]["output_tokens"] == 1

    long = [{"role": "user", "content": f"[[sim:reply {words(40)}]]"}]
    chat = await sim.post(
        "/v1/chat/completions", json={"model": GPT, "messages": long, "max_tokens": 5}, headers=OH
    )
    assert (await chat.json())["choices"][0]["finish_reason"] == "length"
    body = {"model": GPT, "input": long, "max_output_tokens": 16, "stream": True}
    events = await sse_events(await sim.post("/v1/responses", json=body, headers=OH))
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize(
    ("status", "want_status", "want_type"),
    [
        (429, 429, "rate_limit_error"),
        (529, 529, "overloaded_error"),
        (503, 529, "overloaded_error"),
        (500, 500, "api_error"),
    ],
)
async def test_anthropic_error_directive(
    sim: TestClient, status: int, want_status: int, want_type: str
) -> None:
    resp = await claude(sim, {"messages": [{"role": "user", "content": f"[[sim:error {status}]]"}]})
    assert resp.status == want_status
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == want_type
    assert body["request_id"] == resp.headers["request-id"]
    assert ("retry-after" in resp.headers) == (status == 429)


@pytest.mark.parametrize(
    ("status", "want_status", "want_type", "want_code"),
    [
        (429, 429, "tokens", "rate_limit_exceeded"),
        (529, 503, "server_error", None),
        (500, 500, "server_error", None),
    ],
)
async def test_openai_error_directive(
    sim: TestClient, status: int, want_status: int, want_type: str, want_code: str | None
) -> None:
    for path, key in (("/v1/chat/completions", "messages"), ("/v1/responses", "input")):
        body = {"model": GPT, key: [{"role": "user", "content": f"[[sim:error {status}]]"}]}
        resp = await sim.post(path, json=body, headers=OH)
        assert resp.status == want_status
        err = (await resp.json())["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert (err["type"], err["code"]) == (want_type, want_code)
        assert ("retry-after" in resp.headers) == (status == 429)


async def test_fail_first_then_succeed(sim: TestClient) -> None:
    msg = {"messages": [{"role": "user", "content": "[[sim:fail-first 2 529]] please"}]}
    statuses = [(await claude(sim, msg)).status for _ in range(3)]
    assert statuses == [529, 529, 200]
    # Counted per directive text across models: a fallback model succeeds next.
    other = "[[sim:fail-first 1 429]]"
    assert (await claude(sim, {"messages": [{"role": "user", "content": other}]})).status == 429
    fallback = {"model": "sim-claude-cheap", "messages": [{"role": "user", "content": other}]}
    assert (await claude(sim, fallback)).status == 200
    state = state_of(sim)
    assert state.requests[CLAUDE] == 4 and state.requests["sim-claude-cheap"] == 1
    assert [r.status for r in state.history] == [529, 529, 200, 429, 200]


async def test_injected_fault(sim: TestClient) -> None:
    state = state_of(sim)
    state.inject_fault(500, model=GPT, times=2)
    body = {"model": GPT, "messages": [{"role": "user", "content": "hi"}]}
    got = [(await sim.post("/v1/chat/completions", json=body, headers=OH)).status for _ in range(3)]
    assert got == [500, 500, 200]
    assert state.faults == []


async def test_drop_cuts_stream_without_terminal_event(sim: TestClient) -> None:
    msg = [{"role": "user", "content": "[[sim:drop]] tell me a story"}]
    resp = await claude(sim, {"messages": msg, "stream": True})
    assert resp.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            received += chunk
    assert b"content_block_delta" in received
    assert b"message_stop" not in received and b"message_delta" not in received

    resp = await sim.post(
        "/v1/responses", json={"model": GPT, "input": "[[sim:drop]]", "stream": True}, headers=OH
    )
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            received += chunk
    assert b"response.output_text.delta" in received and b"response.completed" not in received


async def test_slow_directive_delays_first_byte(sim: TestClient) -> None:
    start = time.monotonic()
    resp = await claude(sim, {"messages": [{"role": "user", "content": "[[sim:slow 150]]"}]})
    assert resp.status == 200
    assert time.monotonic() - start >= 0.15


async def test_pacing_scales_with_time_scale(clock: FakeClock) -> None:
    app = create_sim_app(time_scale=0.5, clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        start = time.monotonic()
        await claude(
            client, {"model": "sim-claude-cheap", "messages": [{"role": "user", "content": "x"}]}
        )
        # ttft 350 ms * 0.5 plus output at 150 tok/s * 0.5: well above 0.15 s
        assert time.monotonic() - start >= 0.17


# -- validation & error shapes ---------------------------------------------------


async def test_anthropic_validation_errors(sim: TestClient) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request_error",
        ),
        ({"model": CLAUDE, "max_tokens": 5}, 400, "invalid_request_error"),
        ({"model": CLAUDE, "max_tokens": "5", "messages": []}, 400, "invalid_request_error"),
        (
            {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": 3}]},
            400,
            "invalid_request_error",
        ),
        (
            {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            404,
            "not_found_error",
        ),
        (
            {"model": GPT, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            404,
            "not_found_error",
        ),
    ]
    for body, status, etype in cases:
        resp = await sim.post("/v1/messages", json=body, headers=AH)
        assert resp.status == status, body
        data = await resp.json()
        assert data["type"] == "error" and data["error"]["type"] == etype
    bad_result = [{"type": "tool_result", "tool_use_id": "t", "content": 5}]
    bad = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": bad_result}]}
    assert (await sim.post("/v1/messages", json=bad, headers=AH)).status == 400
    resp = await sim.post("/v1/messages", data=b"{not json", headers=AH)
    assert resp.status == 400
    resp = await sim.post("/v1/messages", json=[1, 2], headers=AH)
    assert resp.status == 400
    resp = await sim.post("/v1/messages", json={"model": CLAUDE}, headers={})
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"
    bearer = {"Authorization": "Bearer t"}
    ok = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    assert (await sim.post("/v1/messages", json=ok, headers=bearer)).status == 200


async def test_openai_validation_errors(sim: TestClient) -> None:
    for path, key in (("/v1/chat/completions", "messages"), ("/v1/responses", "input")):
        resp = await sim.post(
            path,
            json={
                "model": "nope",
                key: "x" if key == "input" else [{"role": "user", "content": "x"}],
            },
            headers=OH,
        )
        assert resp.status == 404
        err = (await resp.json())["error"]
        assert err["code"] == "model_not_found" and set(err) == {"message", "type", "param", "code"}
        resp = await sim.post(
            path, json={"model": CLAUDE, key: [{"role": "user", "content": "x"}]}, headers=OH
        )
        assert resp.status == 404
        resp = await sim.post(path, json={"model": GPT}, headers=OH)
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
        resp = await sim.post(path, json={"model": GPT, key: [{"role": "user", "content": "x"}]})
        assert resp.status == 401
        resp = await sim.post(path, data=b"\xff\xfe", headers=OH)
        assert resp.status == 400
        resp = await sim.post(path, json={"model": GPT, key: 12}, headers=OH)
        assert resp.status == 400
    bad = {
        "model": GPT,
        "messages": [{"role": "user", "content": "x"}],
        "stream_options": {"include_usage": True},
    }
    assert (await sim.post("/v1/chat/completions", json=bad, headers=OH)).status == 400
    low = {"model": GPT, "input": "x", "max_output_tokens": 5}
    resp = await sim.post("/v1/responses", json=low, headers=OH)
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "max_output_tokens"


async def test_models_list(sim: TestClient) -> None:
    data = await (await sim.get("/v1/models")).json()
    assert data["object"] == "list"
    ids = {m["id"] for m in data["data"]}
    assert {"sim-claude-strong", "sim-gpt-cheap"} <= ids
    assert all(m["object"] == "model" and "owned_by" in m and "created" in m for m in data["data"])


# -- official SDKs ------------------------------------------------------------------


def base(client: TestClient) -> str:
    assert client.server.port
    return f"http://127.0.0.1:{client.server.port}"


async def test_anthropic_sdk(sim: TestClient) -> None:
    async with anthropic.AsyncAnthropic(base_url=base(sim), api_key="x", max_retries=0) as client:
        await _anthropic_sdk(client)


async def _anthropic_sdk(client: anthropic.AsyncAnthropic) -> None:
    system: Any = [{"type": "text", "text": words(1500), "cache_control": {"type": "ephemeral"}}]
    msg = await client.messages.create(
        model=CLAUDE, max_tokens=200, system=system, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].type == "text" and msg.stop_reason == "end_turn"
    assert msg.usage.cache_creation_input_tokens == 1500

    async with client.messages.stream(
        model=CLAUDE, max_tokens=200, system=system, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.cache_read_input_tokens == 1500
    assert final.usage.output_tokens == text_tokens(text)

    tools: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    ask: Any = [{"role": "user", "content": '[[sim:tool get_weather {"city": "Rome"}]]'}]
    async with client.messages.stream(
        model=CLAUDE,
        max_tokens=4096,
        tools=tools,
        messages=ask,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    tool_use = final.content[1]
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "Rome"}
    assert final.stop_reason == "tool_use"

    count = await client.messages.count_tokens(model=CLAUDE, messages=ask, tools=tools)
    assert count.input_tokens > 0
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(
            model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "[[sim:error 429]]"}]
        )
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(
            model="nope", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    models = await client.models.list()
    assert any(m.id == CLAUDE for m in models.data)


async def test_openai_sdk_chat(sim: TestClient) -> None:
    async with openai.AsyncOpenAI(base_url=base(sim) + "/v1", api_key="x", max_retries=0) as client:
        await _openai_sdk_chat(client)


async def _openai_sdk_chat(client: openai.AsyncOpenAI) -> None:
    done = await client.chat.completions.create(
        model=GPT, messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content and done.usage
    assert done.usage.prompt_tokens_details and done.usage.prompt_tokens_details.cached_tokens == 0

    stream = await client.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert "".join(parts) == done.choices[0].message.content
    assert usage and usage.completion_tokens == done.usage.completion_tokens

    tools: Any = [
        {"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}
    ]
    msgs: Any = [{"role": "user", "content": '[[sim:tool ls {"path": "/tmp"}]]'}]
    async with client.chat.completions.stream(model=GPT, messages=msgs, tools=tools) as s:
        final = await s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function"
    assert call.function.name == "ls" and json.loads(call.function.arguments) == {"path": "/tmp"}
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model=GPT, messages=[{"role": "user", "content": "[[sim:error 429]]"}]
        )
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert any(m.id == GPT for m in (await client.models.list()).data)


async def test_openai_sdk_responses(sim: TestClient) -> None:
    async with openai.AsyncOpenAI(base_url=base(sim) + "/v1", api_key="x", max_retries=0) as client:
        await _openai_sdk_responses(client)


async def _openai_sdk_responses(client: openai.AsyncOpenAI) -> None:
    resp = await client.responses.create(model=GPT, input="hello")
    assert resp.status == "completed" and resp.output_text.startswith("Simulated reply")
    assert resp.usage and resp.usage.input_tokens_details.cached_tokens == 0

    async with client.responses.stream(model=GPT, input="hello") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == resp.output_text

    tools: Any = [
        {
            "type": "function",
            "name": "exec_command",
            "parameters": {"type": "object"},
            "strict": False,
        }
    ]
    ask = '[[sim:tool exec_command {"cmd": "ls"}]]'
    async with client.responses.stream(
        model="sim-gpt-strong", input=ask, tools=tools, reasoning={"effort": "low"}
    ) as stream:
        final = await stream.get_final_response()
    call = final.output[-1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"cmd": "ls"}
    assert final.output[0].type == "reasoning"
    assert final.usage and final.usage.output_tokens_details.reasoning_tokens == 16

    follow = await client.responses.create(
        model=GPT,
        store=False,
        tools=tools,
        input=[
            {"role": "user", "content": ask},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "exec_command",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt b.txt"},
        ],
    )
    assert "a.txt" in follow.output_text


async def test_non_stream_drop_closes_connection(sim: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "[[sim:drop]]"}]}
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await claude(sim, body)
    assert state_of(sim).requests[CLAUDE] == 1
