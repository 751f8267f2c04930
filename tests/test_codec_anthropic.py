"""Anthropic Messages codec: request/response translation, SSE decode/encode, and the
encoder's output checked with the real anthropic SDK over HTTP."""

from __future__ import annotations

import asyncio
import copy
import itertools

import anthropic
import orjson
import pytest
from aiohttp import web

from switchman_daemon.errors import ApiError, ErrorKind
from switchman_daemon.protocol import anthropic as codec
from switchman_daemon.protocol.ir import (
    BlockDelta,
    BlockStart,
    BlockStop,
    CacheMark,
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    MessageEnd,
    MessageStart,
    StreamError,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from switchman_daemon.protocol.sse import SSEParser

USER_ID = (
    '{"device_id":"' + "ab" * 32 + '","account_uuid":"",'
    '"session_id":"0b6c1f9e-1111-4c2d-9a7e-5f0e3d2c1b0a"}'
)


def claude_code_body() -> dict:
    """Shaped like a Claude Code 2.1.x main-loop request (second turn of a tool loop)."""
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 64000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "max"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": USER_ID},
        "system": [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.197.a3f; cc_entrypoint=cli;",
            },
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
            {
                "type": "text",
                "text": "MAIN PROMPT " * 50,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a shell command",
                "input_schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema",
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nctx\n</system-reminder>"},
                    {"type": "text", "text": "List the files."},
                ],
            },
            {"role": "system", "content": "Available agent types: Explore, Plan"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should run ls.", "signature": "sig-123"},
                    {"type": "redacted_thinking", "data": "opaque=="},
                    {"type": "text", "text": "Listing."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A",
                        "name": "Bash",
                        "input": {"command": "ls"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A",
                        "content": [{"type": "text", "text": "a.txt\nb.txt"}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01B",
                        "content": "boom",
                        "is_error": True,
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "future_block_type", "text": "kept text"},
                    {"type": "future_block_type_no_text", "payload": 1},
                    {
                        "type": "text",
                        "text": "continue",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
        ],
    }


# ---- parse_request ------------------------------------------------------------------


def test_parse_claude_code_request() -> None:
    req = codec.parse_request(claude_code_body())
    assert req.source_format == "anthropic"
    assert req.model == "claude-opus-4-8"
    assert req.max_tokens == 64000 and req.stream is True
    # billing header dropped, cache marks kept with their TTLs
    assert [p.text[:11] for p in req.system] == ["You are Cla", "MAIN PROMPT"]
    assert req.system[0].cache == CacheMark("5m")
    assert req.system[1].cache == CacheMark("1h")
    assert req.thinking == {"type": "adaptive"}
    assert req.reasoning_effort == "xhigh"  # "max" -> xhigh
    assert req.user == USER_ID  # as sent
    assert req.cache_key == "0b6c1f9e-1111-4c2d-9a7e-5f0e3d2c1b0a"
    assert req.extra == {
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    }
    assert req.tool_choice == ToolChoice(mode="auto", parallel=False)

    bash, ws = req.tools
    assert bash.kind == "function" and bash.name == "Bash"
    assert bash.input_schema["required"] == ["command"]
    assert ws.kind == "builtin" and ws.raw == {
        "type": "web_search_20250305",
        "name": "web_search",
        "max_uses": 5,
    }

    roles = [m.role for m in req.messages]
    assert roles == ["user", "system", "assistant", "user"]
    assert req.messages[1].parts == [TextPart("Available agent types: Explore, Plan")]

    think, redacted, text, call = req.messages[2].parts
    assert think == ThinkingPart(text="I should run ls.", signature="sig-123", origin="anthropic")
    assert redacted == ThinkingPart(redacted_data="opaque==", origin="anthropic")
    assert text == TextPart("Listing.")
    assert call == ToolUsePart("toolu_01A", "Bash", {"command": "ls"})

    r1, r2, img, unknown, last = req.messages[3].parts
    assert r1 == ToolResultPart("toolu_01A", [TextPart("a.txt\nb.txt")])
    assert r2 == ToolResultPart("toolu_01B", [TextPart("boom")], is_error=True)
    assert img == ImagePart(media_type="image/png", data="iVBO")
    assert unknown == TextPart("kept text")
    assert last == TextPart("continue", CacheMark("5m"))


def test_parse_misc_fields() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "leading system"},
            {"role": "user", "content": "hi"},
        ],
        "system": "sys",
        "thinking": {"type": "enabled", "budget_tokens": 8000},
        "output_config": {
            "format": {"type": "json_schema", "schema": {"type": "object"}},
            "future_knob": 1,
        },
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 1,
        "top_k": 40,
        "service_tier": "auto",
        "tool_choice": {"type": "tool", "name": "Bash"},
    }
    req = codec.parse_request(body)
    assert [p.text for p in req.system] == ["sys", "leading system"]
    assert [m.role for m in req.messages] == ["user"]
    assert req.reasoning_effort == "medium"  # derived from budget_tokens 8000
    assert req.json_schema == {"name": "output", "schema": {"type": "object"}, "strict": True}
    assert req.auto_cache == CacheMark("1h")
    assert req.stop == ["END"] and req.temperature == 0.5 and req.top_p == 1.0
    assert req.extra == {"top_k": 40, "service_tier": "auto", "output_config": {"future_knob": 1}}
    assert req.tool_choice == ToolChoice(mode="tool", name="Bash", parallel=None)


@pytest.mark.parametrize(
    ("mutate", "param"),
    [
        (lambda b: b.pop("model"), "model"),
        (lambda b: b.update(model=5), "model"),
        (lambda b: b.pop("messages"), "messages"),
        (lambda b: b.update(messages="hi"), "messages"),
        (lambda b: b.pop("max_tokens"), "max_tokens"),
        (lambda b: b.update(max_tokens="10"), "max_tokens"),
        (lambda b: b.update(max_tokens=True), "max_tokens"),
        (lambda b: b.update(temperature="hot"), "temperature"),
        (lambda b: b.update(stream="yes"), "stream"),
        (lambda b: b.update(system=5), "system"),
        (lambda b: b.update(tools={}), "tools"),
        (lambda b: b.update(tools=[{"description": "no name"}]), "tools.0.name"),
        (lambda b: b.update(tool_choice={"type": "tool"}), "tool_choice.name"),
        (lambda b: b.update(stop_sequences=[1]), "stop_sequences"),
        (lambda b: b["messages"].append({"role": "bot", "content": "x"}), "messages.1.role"),
        (lambda b: b["messages"].append({"role": "user"}), "messages.1.content"),
        (lambda b: b["messages"].append({"role": "user", "content": 3}), "messages.1.content"),
        (
            lambda b: b["messages"].append({"role": "user", "content": [{"type": "text"}]}),
            "messages.1.content.0.text",
        ),
        (
            lambda b: b["messages"].append(
                {"role": "user", "content": [{"type": "tool_result", "content": "x"}]}
            ),
            "messages.1.content.0.tool_use_id",
        ),
    ],
)
def test_parse_errors(mutate, param: str) -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    mutate(body)
    with pytest.raises(ApiError) as ei:
        codec.parse_request(body)
    assert ei.value.kind is ErrorKind.invalid_request
    assert ei.value.status == 400
    assert ei.value.param == param
    assert param.split(".")[0] in ei.value.message


# ---- build_request --------------------------------------------------------------------


def _marks(body: dict) -> list[tuple[str, dict]]:
    """Every cache_control in prefix order, labelled by where it sits."""
    out = []
    for i, t in enumerate(body.get("tools", [])):
        if "cache_control" in t:
            out.append((f"tools.{i}", t["cache_control"]))
    for i, b in enumerate(body.get("system", [])):
        if "cache_control" in b:
            out.append((f"system.{i}", b["cache_control"]))
    for i, m in enumerate(body["messages"]):
        for j, b in enumerate(m["content"]):
            if "cache_control" in b:
                out.append((f"messages.{i}.{j}", b["cache_control"]))
    return out


def openai_style_request(n_turns: int = 2) -> ChatRequest:
    msgs = [Message("user", [TextPart("task")])]
    for k in range(n_turns):
        msgs.append(
            Message(
                "assistant",
                [
                    ThinkingPart(text="reasoning", encrypted="enc", origin="openai"),
                    ToolUsePart(f"call_{k}", "shell", {"cmd": "ls"}),
                ],
            )
        )
        msgs.append(Message("user", [ToolResultPart(f"call_{k}", [TextPart("out")])]))
    return ChatRequest(
        model="gpt-5",
        messages=msgs,
        system=[TextPart("You are Codex.")],
        tools=[
            Tool("shell", "run", {"type": "object", "properties": {"cmd": {"type": "string"}}}),
            Tool("apply_patch", "patch files", kind="custom", raw={"type": "custom"}),
            Tool("web_search", kind="builtin", raw={"type": "web_search"}),
        ],
        source_format="responses",
        reasoning_effort="high",
        user="u-1",
    )


def test_build_places_breakpoints_when_none_sent() -> None:
    body = codec.build_request(openai_style_request(2), "claude-sonnet-5", stream=True)
    # messages: user, asst, user(result), asst, user(result)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2 + ["user"]
    marks = _marks(body)
    assert [m[0] for m in marks] == ["tools.1", "system.0", "messages.2.0", "messages.4.0"]
    assert all(cc == {"type": "ephemeral"} for _, cc in marks)
    # OpenAI builtin dropped, custom tool gets the freeform wrapper schema
    assert [t["name"] for t in body["tools"]] == ["shell", "apply_patch"]
    assert body["tools"][1]["input_schema"]["required"] == ["input"]
    # unsigned OpenAI reasoning dropped
    assert all(b["type"] != "thinking" for m in body["messages"] for b in m["content"])
    # effort -> thinking budget, max_tokens raised above it; tool history lacks thinking
    # on the last assistant turn, so thinking must NOT be enabled here.
    assert "thinking" not in body
    assert body["max_tokens"] == 8192
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["stream"] is True and body["model"] == "claude-sonnet-5"


def test_build_few_messages_never_more_than_four() -> None:
    req = openai_style_request(0)
    body = codec.build_request(req, "c", stream=False)
    assert [m[0] for m in _marks(body)] == ["tools.1", "system.0", "messages.0.0"]
    body = codec.build_request(req, "c", stream=False, place_breakpoints=False)
    assert _marks(body) == []
    req.auto_cache = CacheMark()
    body = codec.build_request(req, "c", stream=False)
    assert _marks(body) == [] and body["cache_control"] == {"type": "ephemeral"}


def test_build_keeps_client_marks_last_four_and_ttl_order() -> None:
    req = ChatRequest(
        model="m",
        system=[TextPart("a", CacheMark("5m")), TextPart("b", CacheMark("1h"))],
        tools=[Tool("t", cache=CacheMark("1h"))],
        messages=[
            Message("user", [TextPart("u1", CacheMark("5m")), TextPart("u2", CacheMark("1h"))]),
            Message("assistant", [TextPart("x")]),
            Message("user", [TextPart("u3", CacheMark("5m"))]),
        ],
        source_format="chat",
    )
    body = codec.build_request(req, "m", stream=False)
    marks = _marks(body)
    # 6 marks: tools.0(1h) system.0(5m) system.1(1h) msg0.0(5m) msg0.1(1h) msg2.0(5m)
    assert [m[0] for m in marks] == ["system.1", "messages.0.0", "messages.0.1", "messages.2.0"]
    # system.1 is 1h and now first -> stays 1h; messages.0.1 1h follows a 5m -> 5m
    assert marks[0][1] == {"type": "ephemeral", "ttl": "1h"}
    assert [cc for _, cc in marks[1:]] == [{"type": "ephemeral"}] * 3


def test_build_1h_before_5m_kept() -> None:
    req = ChatRequest(
        model="m",
        system=[TextPart("a", CacheMark("1h"))],
        messages=[Message("user", [TextPart("q", CacheMark("5m"))])],
    )
    marks = _marks(codec.build_request(req, "m", stream=False))
    assert [cc.get("ttl") for _, cc in marks] == ["1h", None]


def test_build_roles_alternation_and_system_reminder() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message("assistant", [TextPart("earlier answer")]),
            Message("system", [TextPart("Be brief.")]),
            Message("user", [TextPart("q1")]),
            Message("user", [ToolResultPart("fn.call:1", [TextPart("r")])]),
            Message("assistant", [ToolUsePart("fn.call:2", "apply_patch", "*** Begin", "custom")]),
            Message("user", [ToolResultPart("fn.call:2", [TextPart("ok")], kind="custom")]),
            Message("system", [TextPart("Reminder")]),
        ],
        source_format="chat",
    )
    body = codec.build_request(req, "m", stream=False, place_breakpoints=False)
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"] == [{"type": "text", "text": "(continued)"}]
    # system + user + tool_result merged into one user turn, tool_result first
    types = [b["type"] for b in msgs[2]["content"]]
    assert types == ["tool_result", "text", "text"]
    assert msgs[2]["content"][0]["tool_use_id"] == "fn_call_1"
    assert msgs[2]["content"][1]["text"] == "<system-reminder>\nBe brief.\n</system-reminder>"
    assert msgs[3]["content"][0] == {
        "type": "tool_use",
        "id": "fn_call_2",
        "name": "apply_patch",
        "input": {"input": "*** Begin"},
    }
    assert msgs[4]["content"][1]["text"] == "<system-reminder>\nReminder\n</system-reminder>"
    # tool history without tool definitions: stubs + tool_choice none
    assert body["tools"] == [{"name": "apply_patch", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "none"}


def test_build_effort_thinking_and_sampling() -> None:
    req = ChatRequest(
        model="m",
        messages=[Message("user", [TextPart("hi"), ImagePart(url="data:image/jpeg;base64,AAA")])],
        reasoning_effort="high",
        max_tokens=1000,
        temperature=1.5,
        stop=["\n", "END"],
        json_schema={"name": "x", "schema": {"type": "object"}, "strict": True},
        source_format="chat",
        extra={"prompt_cache_retention": "24h"},
    )
    body = codec.build_request(req, "m", stream=False)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert body["max_tokens"] > 16384
    assert "temperature" not in body  # thinking requires default sampling
    assert body["stop_sequences"] == ["END"]  # whitespace-only stop rejected by Anthropic
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}}
    }
    assert "prompt_cache_retention" not in body  # extra only copied for anthropic source
    assert body["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"},
        "cache_control": {"type": "ephemeral"},  # placed on the last block
    }
    req.reasoning_effort = "minimal"
    body = codec.build_request(req, "m", stream=False)
    assert "thinking" not in body and body["temperature"] == 1.0 and body["max_tokens"] == 1000


def test_build_from_anthropic_source_round_trip() -> None:
    src = claude_code_body()
    req = codec.parse_request(copy.deepcopy(src))
    body = codec.build_request(req, "claude-opus-4-8", stream=True)
    assert body["context_management"] == src["context_management"]
    assert body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "xhigh"}
    assert body["metadata"] == {"user_id": USER_ID}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["tools"][1] == src["tools"][1]  # Anthropic server tool survives
    assert len(body["system"]) == 2  # billing header gone
    asst = body["messages"][1]
    assert [b["type"] for b in asst["content"]][:2] == ["thinking", "redacted_thinking"]
    assert asst["content"][0]["signature"] == "sig-123"
    # client marks kept in place; the 1h mark after a 5m one is downgraded
    assert [m[0] for m in _marks(body)] == ["system.0", "system.1", "messages.2.4"]
    assert [cc.get("ttl") for _, cc in _marks(body)] == [None, None, None]
    # re-parsing what we built gives the same conversation
    again = codec.parse_request(body)
    assert again.messages[1].parts == req.messages[2].parts


# ---- responses --------------------------------------------------------------------


ANTHROPIC_RESPONSE = {
    "id": "msg_01XYZ",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Running it."},
        {"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {"command": "ls"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 700,
        "cache_read_input_tokens": 5000,
        "output_tokens": 44,
        "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 500},
    },
}


def test_response_round_trip_keeps_cache_usage() -> None:
    resp = codec.parse_response(ANTHROPIC_RESPONSE)
    assert resp.usage == Usage(
        input_tokens=21,
        output_tokens=44,
        cache_read_tokens=5000,
        cache_write_tokens=200,
        cache_write_1h_tokens=500,
    )
    assert resp.stop_reason == "tool_use"
    assert resp.parts[0] == ThinkingPart(text="hmm", signature="sig", origin="anthropic")
    assert codec.build_response(resp, "claude-sonnet-5") == ANTHROPIC_RESPONSE
    assert codec.usage_from_response(ANTHROPIC_RESPONSE) == resp.usage


def test_response_without_ttl_split_and_openai_origin() -> None:
    body = copy.deepcopy(ANTHROPIC_RESPONSE)
    del body["usage"]["cache_creation"]
    assert codec.parse_response(body).usage.cache_write_tokens == 700

    resp = ChatResponse(
        id="chatcmpl-42",
        model="gpt-5",
        parts=[
            ThinkingPart(text="r", encrypted="e", origin="openai"),
            TextPart("hi"),
            ToolUsePart("call_abc", "apply_patch", "*** Begin", kind="custom"),
        ],
        stop_reason="tool_use",
        usage=Usage(input_tokens=5, output_tokens=7, cache_read_tokens=1024),
    )
    out = codec.build_response(resp, "claude-opus-4-8")
    assert out["id"] == "msg_chatcmpl-42"
    assert out["content"] == [
        {"type": "text", "text": "hi"},
        {
            "type": "tool_use",
            "id": "call_abc",
            "name": "apply_patch",
            "input": {"input": "*** Begin"},
        },
    ]
    assert out["usage"]["cache_read_input_tokens"] == 1024
    assert out["usage"]["cache_creation_input_tokens"] == 0


# ---- stream decode ----------------------------------------------------------------


def _ev(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n"


RECORDED_SSE = "".join(
    [
        _ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01Rec",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-5",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 12,
                        "cache_creation_input_tokens": 300,
                        "cache_read_input_tokens": 4000,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 300,
                            "ephemeral_1h_input_tokens": 0,
                        },
                        "output_tokens": 1,
                        "service_tier": "standard",
                    },
                },
            },
        ),
        _ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        'event: ping\ndata: {"type": "ping"}\n\n',
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Let me check"},
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": " the files."},
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBCkYIBxgCKkB=="},
            },
        ),
        _ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "I'll list "},
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "the files ✓"},
            },
        ),
        _ev("content_block_stop", {"type": "content_block_stop", "index": 1}),
        _ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01X",
                    "name": "Bash",
                    "input": {},
                },
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": '{"command": "l'},
            },
        ),
        _ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": 's -la"}'},
            },
        ),
        _ev("content_block_stop", {"type": "content_block_stop", "index": 2}),
        _ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "type": "message_delta",
                    "stop_reason": "tool_use",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": 87},
            },
        ),
        _ev("message_stop", {"type": "message_stop"}),
    ]
).encode()


def _chunks(data: bytes):
    sizes = itertools.cycle([1, 7, 13, 3, 50, 2, 101])
    i = 0
    while i < len(data):
        n = next(sizes)
        yield data[i : i + n]
        i += n


def test_stream_decode_recorded_sse() -> None:
    parser, dec, events = SSEParser(), codec.StreamDecoder(), []
    tap = codec.UsageTap()
    for chunk in _chunks(RECORDED_SSE):
        for name, data in parser.feed(chunk):
            events += dec.feed(name, data)
            tap.feed(name, data)
    events += dec.finish()

    final = Usage(input_tokens=12, output_tokens=87, cache_read_tokens=4000, cache_write_tokens=300)
    assert events[0] == MessageStart(
        "msg_01Rec",
        "claude-sonnet-5",
        Usage(input_tokens=12, output_tokens=1, cache_read_tokens=4000, cache_write_tokens=300),
    )
    assert events[1:] == [
        BlockStart(0, "thinking"),
        BlockDelta(0, thinking="Let me check"),
        BlockDelta(0, thinking=" the files."),
        BlockDelta(0, signature="EqQBCkYIBxgCKkB=="),
        BlockStop(0),
        BlockStart(1, "text"),
        BlockDelta(1, text="I'll list "),
        BlockDelta(1, text="the files ✓"),
        BlockStop(1),
        BlockStart(2, "tool_use", tool_id="toolu_01X", tool_name="Bash"),
        BlockDelta(2, json=""),
        BlockDelta(2, json='{"command": "l'),
        BlockDelta(2, json='s -la"}'),
        BlockStop(2),
        MessageEnd("tool_use", final),
    ]
    assert tap.done and tap.stop_reason == "tool_use" and tap.usage == final and tap.error is None


def test_stream_decode_truncated_and_error() -> None:
    cut = RECORDED_SSE[: RECORDED_SSE.index(b"event: message_delta")]
    parser, dec = SSEParser(), codec.StreamDecoder()
    evs = [e for n, d in parser.feed(cut) for e in dec.feed(n, d)]
    assert not any(isinstance(e, MessageEnd) for e in evs)
    assert dec.finish() == [StreamError(502, "upstream_unavailable", "upstream stream ended early")]
    assert dec.finish() == []

    dec = codec.StreamDecoder()
    err = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert dec.feed("error", err) == [StreamError(529, "overloaded", "Overloaded")]
    assert dec.finish() == []
    tap = codec.UsageTap()
    tap.feed("error", err)
    assert tap.error == "overloaded_error: Overloaded" and not tap.done


# ---- stream encode, verified with the real SDK ------------------------------------------


def openai_upstream_events() -> list:
    """What a Responses/chat decoder would produce for a tool-calling turn."""
    return [
        MessageStart("resp_abc", "gpt-5", Usage(input_tokens=50, cache_read_tokens=4000)),
        BlockStart(0, "thinking", item_id="rs_1"),
        BlockDelta(0, thinking="secret plan"),
        BlockDelta(0, encrypted="gAAAA"),
        BlockStop(0),
        BlockStart(1, "text"),
        BlockDelta(1, text="Let me "),
        BlockDelta(1, text="look."),
        BlockStop(1),
        BlockStart(2, "tool_use", tool_id="call_abc", tool_name="Bash"),
        BlockDelta(2, json='{"comm'),
        BlockDelta(2, json='and": "ls -la"}'),
        BlockStop(2),
        BlockStart(3, "tool_use", tool_id="call_def", tool_name="apply_patch", tool_kind="custom"),
        BlockDelta(3, json="*** Begin Patch\n"),
        BlockDelta(3, json='*** Update File: "a.py"'),
        BlockStop(3),
        MessageEnd(
            "tool_use",
            Usage(
                input_tokens=50, output_tokens=120, cache_read_tokens=4000, cache_write_tokens=10
            ),
        ),
    ]


def _encode(events: list, model: str = "claude-opus-4-8") -> bytes:
    enc = codec.StreamEncoder(model)
    return b"".join(enc.encode(e) for e in events) + enc.finish()


def test_stream_encode_event_shape() -> None:
    raw = _encode(openai_upstream_events())
    evs = SSEParser().feed(raw)
    names = [n for n, _ in evs]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    for name, data in evs:
        assert orjson.loads(data)["type"] == name
    # OpenAI reasoning dropped; client indexes contiguous from 0
    starts = [orjson.loads(d) for n, d in evs if n == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert b"secret plan" not in raw and b"gAAAA" not in raw
    start = orjson.loads(evs[0][1])["message"]
    assert start["id"] == "msg_resp_abc" and start["model"] == "claude-opus-4-8"
    assert start["usage"]["cache_read_input_tokens"] == 4000


def test_stream_encode_finish_without_end() -> None:
    enc = codec.StreamEncoder("m")
    enc.encode(MessageStart("x", "m"))
    enc.encode(BlockStart(0, "text"))
    tail = enc.finish()
    ((name, data),) = SSEParser().feed(tail)
    assert name == "error" and orjson.loads(data)["error"]["type"] == "api_error"
    assert enc.finish() == b""


class FakeUpstream:
    """An HTTP server speaking the Anthropic API, backed by this codec."""

    def __init__(self) -> None:
        self.stream_bytes = b""
        self.response: dict = {}
        self.requests: list = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(codec.parse_request(body))
        if not body.get("stream"):
            return web.json_response(self.response)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in _chunks(self.stream_bytes):  # odd chunking on the wire too
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def upstream():
    srv = FakeUpstream()
    await srv.start()
    yield srv
    await srv.runner.cleanup()


def _client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="x", max_retries=0)


async def test_sdk_consumes_encoded_stream(upstream: FakeUpstream) -> None:
    upstream.stream_bytes = _encode(openai_upstream_events())

    def run():
        with _client(upstream.url).messages.stream(
            model="claude-opus-4-8",
            max_tokens=1024,
            metadata={"user_id": USER_ID},
            messages=[{"role": "user", "content": "list files"}],
        ) as stream:
            text = "".join(stream.text_stream)
            return text, stream.get_final_message()

    text, msg = await asyncio.to_thread(run)
    assert text == "Let me look."
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[1].id == "call_abc" and msg.content[1].name == "Bash"
    assert msg.content[1].input == {"command": "ls -la"}
    assert msg.content[2].input == {"input": '*** Begin Patch\n*** Update File: "a.py"'}
    assert msg.stop_reason == "tool_use"
    assert msg.usage.input_tokens == 50
    assert msg.usage.output_tokens == 120
    assert msg.usage.cache_read_input_tokens == 4000
    assert msg.usage.cache_creation_input_tokens == 10
    assert msg.id == "msg_resp_abc" and msg.model == "claude-opus-4-8"
    # the daemon side parsed the SDK's request
    assert upstream.requests[0].cache_key == "0b6c1f9e-1111-4c2d-9a7e-5f0e3d2c1b0a"


async def test_sdk_consumes_signed_thinking_and_decoded_roundtrip(upstream: FakeUpstream) -> None:
    # Anthropic SSE -> decoder -> encoder -> SDK: signed thinking survives intact.
    parser, dec, evs = SSEParser(), codec.StreamDecoder(), []
    for name, data in parser.feed(RECORDED_SSE):
        evs += dec.feed(name, data)
    upstream.stream_bytes = _encode(evs, "claude-sonnet-5")

    def run():
        with _client(upstream.url).messages.stream(
            model="claude-sonnet-5", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            return stream.get_final_message()

    msg = await asyncio.to_thread(run)
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[0].thinking == "Let me check the files."
    assert msg.content[0].signature == "EqQBCkYIBxgCKkB=="
    assert msg.content[1].text == "I'll list the files ✓"
    assert msg.content[2].input == {"command": "ls -la"}
    assert msg.usage.cache_creation_input_tokens == 300
    assert msg.usage.cache_read_input_tokens == 4000
    assert msg.usage.output_tokens == 87


async def test_sdk_sees_stream_error(upstream: FakeUpstream) -> None:
    upstream.stream_bytes = _encode(
        [
            MessageStart("r", "m"),
            BlockStart(0, "text"),
            BlockDelta(0, text="partial"),
            StreamError(529, "overloaded", "upstream overloaded"),
        ]
    )

    def run():
        with _client(upstream.url).messages.stream(
            model="m", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            return stream.get_final_message()

    with pytest.raises(anthropic.APIStatusError, match="upstream overloaded"):
        await asyncio.to_thread(run)


async def test_sdk_non_stream_response(upstream: FakeUpstream) -> None:
    upstream.response = codec.build_response(
        ChatResponse(
            id="chatcmpl-1",
            model="gpt-5",
            parts=[TextPart("done"), ToolUsePart("call_1", "Read", {"path": "a"})],
            stop_reason="tool_use",
            usage=Usage(
                input_tokens=3, output_tokens=9, cache_read_tokens=2048, cache_write_1h_tokens=100
            ),
        ),
        "claude-opus-4-8",
    )

    def run():
        return _client(upstream.url).messages.create(
            model="claude-opus-4-8", max_tokens=64, messages=[{"role": "user", "content": "x"}]
        )

    msg = await asyncio.to_thread(run)
    assert msg.content[0].text == "done"
    assert msg.content[1].input == {"path": "a"}
    assert msg.stop_reason == "tool_use"
    assert msg.usage.cache_read_input_tokens == 2048
    assert msg.usage.cache_creation_input_tokens == 100
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 100
