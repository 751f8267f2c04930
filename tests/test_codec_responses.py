"""Responses codec: Codex-shaped requests, IR -> upstream bodies, response and
stream translation, and the stream encoder checked against the real openai SDK
over HTTP (the SDK's stream accumulator is strict about event shapes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from switchman_daemon.errors import ApiError, ErrorKind
from switchman_daemon.protocol import responses as rs
from switchman_daemon.protocol.ir import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    MessageEnd,
    MessageStart,
    StreamError,
    StreamEvent,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from switchman_daemon.protocol.sse import SSEParser, encode_event

# ---- a Codex-shaped request ------------------------------------------------------

BASE_PROMPT = "You are Codex, a coding agent based on GPT-5. " * 400  # ~21 KB
LARK = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\n'
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"


def codex_body() -> dict:
    return {
        "model": "gpt-5.5",
        "stream": True,
        "instructions": None,
        "input": [
            {
                "type": "message",
                "id": "msg_dev1",
                "role": "developer",
                "content": [{"type": "input_text", "text": BASE_PROMPT}],
            },
            {
                "type": "message",
                "id": "msg_dev2",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions>workspace-write"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "<environment_context>cwd=/w"}],
            },
            {"type": "message", "role": "user", "content": "create hello.txt"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [
                    {"type": "summary_text", "text": "Listing files"},
                    {"type": "summary_text", "text": "then patching"},
                ],
                "encrypted_content": "gAAAA-enc-1",
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_ls",
                "name": "exec_command",
                "arguments": '{"cmd":"ls","workdir":"/w"}',
            },
            {"type": "function_call_output", "call_id": "call_ls", "output": "a.py\nb.py\n"},
            {"type": "tool_search_call", "id": "tsc_1", "arguments": {"query": "agents"}},
            {
                "type": "custom_tool_call",
                "id": "ctc_1",
                "call_id": "call_patch",
                "name": "apply_patch",
                "input": PATCH,
            },
            {
                "type": "custom_tool_call_output",
                "call_id": "call_patch",
                "output": [{"type": "input_text", "text": "Success. Updated: A hello.txt"}],
            },
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "mid-session note"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Created hello.txt."}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is in this image?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0K"},
                    {"type": "input_image", "file_id": "file_123"},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "exec_command",
                "description": "Runs a command in a PTY.",
                "strict": False,
                "parameters": {
                    "type": "object",
                    "properties": {"cmd": {"type": "string"}, "workdir": {"type": "string"}},
                    "required": ["cmd"],
                    "additionalProperties": False,
                },
            },
            {
                "type": "custom",
                "name": "apply_patch",
                "description": "Use the apply_patch tool to edit files.",
                "format": {"type": "grammar", "syntax": "lark", "definition": LARK},
            },
            {"type": "tool_search", "execution": "client", "description": "Find tools"},
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a-thread",
        "text": {"verbosity": "low"},
        "client_metadata": {"session_id": "019a-thread", "turn_id": "t1"},
    }


def test_codex_request_to_ir() -> None:
    req = rs.parse_request(codex_body())
    assert req.source_format == "responses"
    assert req.model == "gpt-5.5" and req.stream is True
    # both leading developer messages are the system prompt, the later one stays in place
    assert [p.text for p in req.system] == [BASE_PROMPT, "<permissions>workspace-write"]
    assert [m.role for m in req.messages] == [
        "user",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "system",
        "assistant",
        "user",
    ]
    env, prompt, a1, r1, a2, r2, note, a3, img = req.messages
    assert env.parts == [TextPart("<environment_context>cwd=/w")]
    assert prompt.parts == [TextPart("create hello.txt")]
    # reasoning + function_call merge into one assistant turn
    assert a1.parts == [
        ThinkingPart(
            text="Listing files\n\nthen patching",
            encrypted="gAAAA-enc-1",
            id="rs_1",
            origin="openai",
        ),
        ToolUsePart(id="call_ls", name="exec_command", input={"cmd": "ls", "workdir": "/w"}),
    ]
    assert r1.parts == [ToolResultPart("call_ls", [TextPart("a.py\nb.py\n")])]
    assert a2.parts == [ToolUsePart("call_patch", "apply_patch", PATCH, kind="custom")]
    assert r2.parts == [
        ToolResultPart("call_patch", [TextPart("Success. Updated: A hello.txt")], kind="custom")
    ]
    assert note.parts == [TextPart("mid-session note")]
    assert a3.parts == [TextPart("Created hello.txt.")]
    # the file_id image has nothing to forward and is skipped
    assert img.parts == [
        TextPart("what is in this image?"),
        ImagePart(media_type="image/png", data="iVBORw0K"),
    ]

    assert [(t.name, t.kind) for t in req.tools] == [
        ("exec_command", "function"),
        ("apply_patch", "custom"),
        ("tool_search", "builtin"),
        ("web_search", "builtin"),
    ]
    assert req.tools[0].input_schema["required"] == ["cmd"]
    assert req.tools[1].raw["format"]["definition"] == LARK
    assert req.tools[3].raw == {"type": "web_search", "external_web_access": False}
    assert req.tool_choice == ToolChoice(mode="auto", parallel=False)
    assert req.reasoning_effort == "medium"
    assert req.cache_key == "019a-thread"
    assert req.max_tokens is None and req.temperature is None
    assert req.extra["store"] is False
    assert req.extra["include"] == ["reasoning.encrypted_content"]
    assert req.extra["client_metadata"]["turn_id"] == "t1"
    assert req.extra["verbosity"] == "low"
    assert req.extra["unmapped_items"] == [[4, codex_body()["input"][7]]]


def test_codex_request_rebuilt_for_responses_upstream() -> None:
    body = rs.build_request(rs.parse_request(codex_body()), "gpt-5.4", stream=True)
    assert body["model"] == "gpt-5.4" and body["stream"] is True and body["store"] is False
    items = body["input"]
    assert items[0] == {
        "type": "message",
        "role": "developer",
        "content": [
            {"type": "input_text", "text": BASE_PROMPT},
            {"type": "input_text", "text": "<permissions>workspace-write"},
        ],
    }
    types = [i["type"] for i in items]
    assert types == [
        "message",
        "message",
        "message",
        "reasoning",
        "function_call",
        "function_call_output",
        "tool_search_call",
        "custom_tool_call",
        "custom_tool_call_output",
        "message",
        "message",
        "message",
    ]
    assert items[3] == {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "Listing files\n\nthen patching"}],
        "encrypted_content": "gAAAA-enc-1",
    }
    assert json.loads(items[4]["arguments"]) == {"cmd": "ls", "workdir": "/w"}
    assert items[5] == {
        "type": "function_call_output",
        "call_id": "call_ls",
        "output": "a.py\nb.py\n",
    }
    assert items[7] == {
        "type": "custom_tool_call",
        "call_id": "call_patch",
        "name": "apply_patch",
        "input": PATCH,
    }
    assert items[8]["type"] == "custom_tool_call_output"
    assert items[9]["role"] == "developer"
    assert items[10]["content"][0]["type"] == "output_text"
    assert items[11]["content"][1] == {
        "type": "input_image",
        "image_url": "data:image/png;base64,iVBORw0K",
        "detail": "auto",
    }
    tools = body["tools"]
    assert tools[0]["strict"] is False and tools[0]["name"] == "exec_command"
    assert tools[1] == codex_body()["tools"][1]
    assert tools[2:] == codex_body()["tools"][2:]
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["prompt_cache_key"] == "019a-thread"
    assert body["text"] == {"verbosity": "low"}
    assert body["client_metadata"] == {"session_id": "019a-thread", "turn_id": "t1"}


def test_string_input_and_instructions() -> None:
    req = rs.parse_request(
        {
            "model": "m",
            "instructions": "be brief",
            "input": "hi",
            "max_output_tokens": 50,
            "temperature": 0.2,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "r",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            "tool_choice": {"type": "function", "name": "f"},
            "user": "u1",
        }
    )
    assert req.system == [TextPart("be brief")]
    assert req.messages == [Message("user", [TextPart("hi")])]
    assert req.max_tokens == 50 and req.temperature == 0.2 and req.user == "u1"
    assert req.json_schema == {"name": "r", "schema": {"type": "object"}, "strict": True}
    assert req.tool_choice == ToolChoice(mode="tool", name="f")


# ---- build_request from another format ---------------------------------------------


def anthropic_ir() -> ChatRequest:
    return ChatRequest(
        model="claude-sonnet-5",
        system=[
            TextPart("x-anthropic-billing-header: cc_version=2.1; cch=abc;"),
            TextPart("You are Claude Code."),
        ],
        messages=[
            Message("user", [TextPart("look"), ImagePart(url="https://x.test/a.png")]),
            Message(
                "assistant",
                [
                    ThinkingPart(text="hmm", signature="sig", origin="anthropic"),
                    TextPart("Reading."),
                    ToolUsePart(id="toolu_1", name="Read", input={"file_path": "a.py"}),
                ],
            ),
            Message(
                "user",
                [
                    ToolResultPart(
                        "toolu_1",
                        [TextPart("print(1)"), ImagePart(media_type="image/jpeg", data="/9j/")],
                    ),
                    TextPart("now fix it"),
                ],
            ),
            Message("system", [TextPart("Reminder: be careful")]),
        ],
        tools=[
            Tool("Read", "Read a file", {"type": "object", "properties": {"file_path": {}}}),
            Tool(
                "web_search",
                kind="builtin",
                raw={"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            ),
        ],
        tool_choice=ToolChoice(mode="tool", name="Read", parallel=True),
        max_tokens=8,
        stop=["\n\nHuman:"],
        reasoning_effort="high",
        thinking={"type": "enabled", "budget_tokens": 4000},
        json_schema={"name": "out", "schema": {"type": "object"}, "strict": None},
        cache_key="session-1",
        extra={"client_metadata": {"x": 1}, "metadata": {"user_id": "u"}},
        source_format="anthropic",
    )


def test_build_request_from_anthropic_ir() -> None:
    body = rs.build_request(anthropic_ir(), "gpt-5.5", stream=False)
    assert body["input"] == [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "You are Claude Code."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "auto"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Reading.", "annotations": []}],
        },
        {
            "type": "function_call",
            "call_id": "toolu_1",
            "name": "Read",
            "arguments": '{"file_path":"a.py"}',
        },
        {
            "type": "function_call_output",
            "call_id": "toolu_1",
            "output": [
                {"type": "input_text", "text": "print(1)"},
                {
                    "type": "input_image",
                    "image_url": "data:image/jpeg;base64,/9j/",
                    "detail": "auto",
                },
            ],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "now fix it"}],
        },
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Reminder: be careful"}],
        },
    ]
    # Anthropic server tool dropped; function tool non-strict
    assert body["tools"] == [
        {
            "type": "function",
            "name": "Read",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"file_path": {}}},
            "strict": False,
        }
    ]
    assert body["tool_choice"] == {"type": "function", "name": "Read"}
    assert body["parallel_tool_calls"] is True
    assert body["max_output_tokens"] == 16
    assert body["reasoning"] == {"effort": "high"}
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["store"] is False and body["stream"] is False
    assert body["text"] == {
        "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}
    }
    assert body["prompt_cache_key"] == "session-1"
    # Anthropic-only fields and extras never leak into an OpenAI body
    for k in ("client_metadata", "metadata", "stop", "thinking", "instructions"):
        assert k not in body


def test_build_request_custom_tool_from_wrapped_call() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message(
                "assistant", [ToolUsePart("c1", "apply_patch", {"input": PATCH}, kind="custom")]
            ),
            Message("user", [ToolResultPart("c1", [TextPart("ok")])]),
        ],
        tools=[Tool("apply_patch", kind="custom", raw={"type": "custom", "name": "apply_patch"})],
        source_format="chat",
    )
    items = rs.build_request(req, "gpt-5.5", stream=True)["input"]
    assert items[0] == {
        "type": "custom_tool_call",
        "call_id": "c1",
        "name": "apply_patch",
        "input": PATCH,
    }
    # the result kind follows its call, even when the part says "function"
    assert items[1] == {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"}


# ---- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": 3, "input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": ["x"]}, "input[0]"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user", "content": 5}]}, "input[0].content"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
        (
            {"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
            "input[0].call_id",
        ),
        ({"model": "m", "input": "x", "tools": {}}, "tools"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
        ({"model": "m", "input": "x", "temperature": "hot"}, "temperature"),
        ({"model": "m", "input": "x", "reasoning": "high"}, "reasoning"),
        ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions"),
    ],
)
def test_parse_request_errors_name_the_param(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as ei:
        rs.parse_request(body)
    assert ei.value.kind == ErrorKind.invalid_request
    assert ei.value.status == 400
    assert ei.value.param == param
    assert ei.value.message


# ---- non-streamed responses -----------------------------------------------------------


def openai_response_body() -> dict:
    return {
        "id": "resp_abc",
        "object": "response",
        "created_at": 1764300000,
        "status": "completed",
        "model": "gpt-5.5-2026-01-01",
        "output": [
            {
                "id": "rs_9",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "t"}],
                "encrypted_content": "enc9",
            },
            {
                "id": "msg_9",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Running ls.", "annotations": []}],
            },
            {
                "id": "fc_9",
                "type": "function_call",
                "status": "completed",
                "call_id": "call_9",
                "name": "exec_command",
                "arguments": '{"cmd":"ls"}',
            },
            {"id": "ws_9", "type": "web_search_call", "status": "completed"},
        ],
        "usage": {
            "input_tokens": 12000,
            "input_tokens_details": {"cached_tokens": 11000, "cache_write_tokens": 500},
            "output_tokens": 90,
            "output_tokens_details": {"reasoning_tokens": 40},
            "total_tokens": 12090,
        },
    }


def test_parse_response() -> None:
    r = rs.parse_response(openai_response_body())
    assert r.id == "resp_abc" and r.model == "gpt-5.5-2026-01-01"
    assert r.parts == [
        ThinkingPart(text="t", encrypted="enc9", id="rs_9", origin="openai"),
        TextPart("Running ls."),
        ToolUsePart("call_9", "exec_command", {"cmd": "ls"}),
    ]
    assert r.stop_reason == "tool_use"
    assert r.usage == Usage(
        input_tokens=500,
        output_tokens=90,
        cache_read_tokens=11000,
        cache_write_tokens=500,
        reasoning_tokens=40,
    )
    inc = openai_response_body() | {
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": openai_response_body()["output"][:2],
    }
    assert rs.parse_response(inc).stop_reason == "max_tokens"
    done = openai_response_body() | {"output": openai_response_body()["output"][1:2]}
    assert rs.parse_response(done).stop_reason == "end_turn"


def test_response_round_trip_keeps_usage_and_parts() -> None:
    resp = ChatResponse(
        id="msg_01XYZ",
        model="claude-sonnet-5",
        parts=[
            ThinkingPart(text="secret", signature="sig", origin="anthropic"),
            TextPart("Patching."),
            ToolUsePart("toolu_2", "apply_patch", {"input": PATCH}),
            ToolUsePart("toolu_3", "exec_command", {"cmd": "ls"}),
        ],
        stop_reason="tool_use",
        usage=Usage(
            input_tokens=100,
            output_tokens=20,
            cache_read_tokens=4000,
            cache_write_tokens=300,
            cache_write_1h_tokens=50,
        ),
    )
    body = rs.build_response(resp, "gpt-5.5", custom_tools=["apply_patch"])
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["status"] == "completed" and body["model"] == "gpt-5.5"
    assert [i["type"] for i in body["output"]] == ["message", "custom_tool_call", "function_call"]
    assert body["output"][0]["id"].startswith("msg_")
    assert body["output"][1]["id"].startswith("ctc_") and body["output"][1]["input"] == PATCH
    assert body["output"][2]["id"].startswith("fc_")
    assert all(i["status"] == "completed" for i in body["output"])
    assert body["usage"] == {
        "input_tokens": 4450,
        "input_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 350},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 4470,
    }
    back = rs.parse_response(body)
    assert back.parts == [
        TextPart("Patching."),
        ToolUsePart("toolu_2", "apply_patch", PATCH, kind="custom"),
        ToolUsePart("toolu_3", "exec_command", {"cmd": "ls"}),
    ]
    assert back.stop_reason == "tool_use"
    # 1h writes fold into cache_write_tokens; the prompt total is preserved
    assert back.usage == Usage(
        input_tokens=100, output_tokens=20, cache_read_tokens=4000, cache_write_tokens=350
    )
    assert rs.usage_from_response(body) == back.usage
    assert rs.usage_from_response(body["usage"]) == back.usage


def test_build_response_max_tokens_is_incomplete() -> None:
    body = rs.build_response(
        ChatResponse("r", "m", [TextPart("trunc")], stop_reason="max_tokens"), "gpt-5.5"
    )
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}


# ---- stream decoding ------------------------------------------------------------------


def upstream_events() -> list[dict]:
    """What OpenAI streams for reasoning + text + function_call + custom_tool_call."""
    resp0 = {
        "id": "resp_up",
        "object": "response",
        "status": "in_progress",
        "model": "gpt-5.5",
        "output": [],
        "usage": None,
    }
    rsn = {"id": "rs_u", "type": "reasoning", "summary": []}
    msg = {
        "id": "msg_u",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    fc = {
        "id": "fc_u",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_u",
        "name": "exec_command",
        "arguments": "",
    }
    ctc = {
        "id": "ctc_u",
        "type": "custom_tool_call",
        "call_id": "call_p",
        "name": "apply_patch",
        "input": "",
    }
    evs: list[dict] = [
        {"type": "response.created", "response": resp0},
        {"type": "response.in_progress", "response": resp0},
        {"type": "response.output_item.added", "output_index": 0, "item": rsn},
        {
            "type": "response.reasoning_summary_part.added",
            "item_id": "rs_u",
            "output_index": 0,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_u",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Plan: ",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_u",
            "output_index": 0,
            "summary_index": 0,
            "delta": "list",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_u",
            "output_index": 0,
            "summary_index": 1,
            "delta": "then patch",
        },
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": rsn
            | {
                "summary": [
                    {"type": "summary_text", "text": "Plan: list"},
                    {"type": "summary_text", "text": "then patch"},
                ],
                "encrypted_content": "ENC==",
            },
        },
        {"type": "response.output_item.added", "output_index": 1, "item": msg},
        {
            "type": "response.content_part.added",
            "item_id": "msg_u",
            "output_index": 1,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_u",
            "output_index": 1,
            "content_index": 0,
            "delta": "Héllo ",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_u",
            "output_index": 1,
            "content_index": 0,
            "delta": "wörld",
            "logprobs": [],
        },
        {
            "type": "response.output_text.done",
            "item_id": "msg_u",
            "output_index": 1,
            "content_index": 0,
            "text": "Héllo wörld",
            "logprobs": [],
        },
        {
            "type": "response.output_item.done",
            "output_index": 1,
            "item": msg
            | {
                "status": "completed",
                "content": [{"type": "output_text", "text": "Héllo wörld", "annotations": []}],
            },
        },
        {"type": "response.output_item.added", "output_index": 2, "item": fc},
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_u",
            "output_index": 2,
            "delta": '{"cmd":',
        },
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_u",
            "output_index": 2,
            "delta": '"ls"}',
        },
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_u",
            "output_index": 2,
            "arguments": '{"cmd":"ls"}',
        },
        {
            "type": "response.output_item.done",
            "output_index": 2,
            "item": fc | {"status": "completed", "arguments": '{"cmd":"ls"}'},
        },
        {"type": "response.output_item.added", "output_index": 3, "item": ctc},
        {
            "type": "response.custom_tool_call_input.delta",
            "item_id": "ctc_u",
            "output_index": 3,
            "delta": PATCH[:20],
        },
        {
            "type": "response.custom_tool_call_input.delta",
            "item_id": "ctc_u",
            "output_index": 3,
            "delta": PATCH[20:],
        },
        {
            "type": "response.custom_tool_call_input.done",
            "item_id": "ctc_u",
            "output_index": 3,
            "input": PATCH,
        },
        {"type": "response.output_item.done", "output_index": 3, "item": ctc | {"input": PATCH}},
        {
            "type": "response.completed",
            "response": resp0
            | {
                "status": "completed",
                "usage": {
                    "input_tokens": 9000,
                    "input_tokens_details": {"cached_tokens": 8192},
                    "output_tokens": 77,
                    "output_tokens_details": {"reasoning_tokens": 30},
                    "total_tokens": 9077,
                },
            },
        },
    ]
    for i, e in enumerate(evs):
        e["sequence_number"] = i
    return evs


def sse_bytes(events: list[dict]) -> bytes:
    return b"".join(encode_event(e, e["type"]) for e in events)


def decode_chunked(raw: bytes, size: int) -> list[StreamEvent]:
    parser, dec = SSEParser(), rs.StreamDecoder()
    out: list[StreamEvent] = []
    for i in range(0, len(raw), size):
        for name, data in parser.feed(raw[i : i + size]):
            out.extend(dec.feed(name, data))
    for name, data in parser.flush():
        out.extend(dec.feed(name, data))
    return out + dec.finish()


@pytest.mark.parametrize("size", [1, 7, 61, 4096])
def test_stream_decode_realistic_sequence(size: int) -> None:
    evs = decode_chunked(sse_bytes(upstream_events()), size)
    assert evs == [
        MessageStart(id="resp_up", model="gpt-5.5"),
        BlockStart(0, "thinking", item_id="rs_u"),
        BlockDelta(0, thinking="Plan: "),
        BlockDelta(0, thinking="list"),
        BlockDelta(0, thinking="\n\n"),
        BlockDelta(0, thinking="then patch"),
        BlockDelta(0, encrypted="ENC=="),
        BlockStop(0),
        BlockStart(1, "text"),
        BlockDelta(1, text="Héllo "),
        BlockDelta(1, text="wörld"),
        BlockStop(1),
        BlockStart(2, "tool_use", tool_id="call_u", tool_name="exec_command"),
        BlockDelta(2, json='{"cmd":'),
        BlockDelta(2, json='"ls"}'),
        BlockStop(2),
        BlockStart(3, "tool_use", tool_id="call_p", tool_name="apply_patch", tool_kind="custom"),
        BlockDelta(3, json=PATCH[:20]),
        BlockDelta(3, json=PATCH[20:]),
        BlockStop(3),
        MessageEnd(
            stop_reason="tool_use",
            usage=Usage(
                input_tokens=808, output_tokens=77, cache_read_tokens=8192, reasoning_tokens=30
            ),
        ),
    ]


def test_stream_decode_items_without_deltas() -> None:
    # Responses-compatible servers that send only finished items still decode fully.
    evs = [e for e in upstream_events() if not e["type"].endswith(".delta")]
    out = decode_chunked(sse_bytes(evs), 100)
    text = "".join(e.text for e in out if isinstance(e, BlockDelta) and e.text)
    args = [e.json for e in out if isinstance(e, BlockDelta) and e.json]
    thinking = "".join(e.thinking for e in out if isinstance(e, BlockDelta) and e.thinking)
    assert text == "Héllo wörld"
    assert args == ['{"cmd":"ls"}', PATCH]
    assert thinking == "Plan: list\n\nthen patch"


def test_stream_decode_truncated_and_failed() -> None:
    cut = decode_chunked(sse_bytes(upstream_events()[:12]), 50)
    assert cut[-1] == StreamError(
        502, "upstream_unavailable", "stream closed before response.completed"
    )
    failed = [
        *upstream_events()[:3],
        {
            "type": "response.failed",
            "sequence_number": 3,
            "response": {
                "id": "resp_up",
                "status": "failed",
                "error": {"code": "rate_limit_exceeded", "message": "slow down"},
            },
        },
    ]
    out = decode_chunked(sse_bytes(failed), 13)
    assert out[-1] == StreamError(429, "rate_limit", "slow down")
    assert sum(isinstance(e, StreamError) for e in out) == 1  # finish() adds nothing
    err = decode_chunked(
        b'event: error\ndata: {"type":"error","code":"server_error",'
        b'"message":"boom","param":null,"sequence_number":0}\n\n',
        5,
    )
    assert err == [StreamError(500, "api_error", "boom")]


def test_stream_decode_incomplete_is_max_tokens() -> None:
    evs = [
        *upstream_events()[:14],
        {
            "type": "response.incomplete",
            "sequence_number": 14,
            "response": {
                "id": "resp_up",
                "status": "incomplete",
                "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"input_tokens": 10, "output_tokens": 16, "total_tokens": 26},
            },
        },
    ]
    out = decode_chunked(sse_bytes(evs), 9)
    assert out[-1] == MessageEnd("max_tokens", Usage(input_tokens=10, output_tokens=16))


# ---- stream encoding, checked with the real openai SDK -----------------------------------


def ir_events() -> list[StreamEvent]:
    """An Anthropic-upstream turn: thinking, text, Read-style call, wrapped apply_patch."""
    return [
        MessageStart(id="msg_01ABC", model="claude-sonnet-5", usage=Usage(input_tokens=10)),
        BlockStart(0, "thinking"),
        BlockDelta(0, thinking="Let me think"),
        BlockDelta(0, signature="anthropic-sig"),
        BlockStop(0),
        BlockStart(1, "text"),
        BlockDelta(1, text="I'll list "),
        BlockDelta(1, text="and patch."),
        BlockStop(1),
        BlockStart(2, "tool_use", tool_id="toolu_ls", tool_name="exec_command"),
        BlockDelta(2, json='{"cmd": '),
        BlockDelta(2, json='"ls"}'),
        BlockStop(2),
        # apply_patch from a format without custom tools: {"input": "..."} JSON
        BlockStart(3, "tool_use", tool_id="toolu_patch", tool_name="apply_patch"),
        BlockDelta(3, json='{"input": '),
        BlockDelta(3, json=orjson.dumps(PATCH).decode() + "}"),
        BlockStop(3),
        # a native custom call (e.g. decoded by a codec that unwraps itself)
        BlockStart(4, "tool_use", tool_id="call_c2", tool_name="apply_patch", tool_kind="custom"),
        BlockDelta(4, json=PATCH[:9]),
        BlockDelta(4, json=PATCH[9:]),
        BlockStop(4),
        MessageEnd(
            stop_reason="tool_use",
            usage=Usage(
                input_tokens=312,
                output_tokens=80,
                cache_read_tokens=5000,
                cache_write_tokens=300,
                reasoning_tokens=12,
            ),
        ),
    ]


def encode_all(events: list[StreamEvent], **kw: Any) -> bytes:
    enc = rs.StreamEncoder("gpt-5.5", custom_tools=["apply_patch"], **kw)
    return b"".join(enc.encode(e) for e in events) + enc.finish()


def parse_sse(raw: bytes) -> list[tuple[str | None, dict]]:
    return [(n, orjson.loads(d)) for n, d in SSEParser().feed(raw)]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., openai.OpenAI]]:
    """An aiohttp server answering POST /v1/responses with a preset payload."""
    state: dict = {"payload": b"", "json": False, "requests": []}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["requests"].append(await request.json())
        if state["json"]:
            return web.Response(body=state["payload"], content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        payload = state["payload"]
        for i in range(0, len(payload), 53):  # odd-size writes
            await resp.write(payload[i : i + 53])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/responses", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def make(payload: bytes, *, as_json: bool = False) -> openai.OpenAI:
        state["payload"], state["json"] = payload, as_json
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

    make.state = state  # type: ignore[attr-defined]
    yield make
    await runner.cleanup()


def _stream_final(client: openai.OpenAI) -> tuple[list[Any], Any]:
    with client.responses.stream(model="gpt-5.5", input="create hello.txt") as stream:
        events = list(stream)
        return events, stream.get_final_response()


async def test_encoder_with_openai_sdk_stream(serve) -> None:
    client = serve(encode_all(ir_events()))
    # the sync SDK blocks: run it off the loop that serves it
    events, final = await asyncio.to_thread(_stream_final, client)
    assert final.status == "completed"
    assert final.output_text == "I'll list and patch."
    assert final.id.startswith("resp_") and final.model == "gpt-5.5"
    assert [o.type for o in final.output] == [
        "message",
        "function_call",
        "custom_tool_call",
        "custom_tool_call",
    ]
    fc = final.output[1]
    assert (fc.call_id, fc.name, json.loads(fc.arguments)) == (
        "toolu_ls",
        "exec_command",
        {"cmd": "ls"},
    )
    assert [(o.call_id, o.name, o.input) for o in final.output[2:]] == [
        ("toolu_patch", "apply_patch", PATCH),
        ("call_c2", "apply_patch", PATCH),
    ]
    u = final.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (5612, 80, 5692)
    assert u.input_tokens_details.cached_tokens == 5000
    assert u.input_tokens_details.cache_write_tokens == 300
    assert u.output_tokens_details.reasoning_tokens == 12
    types = [e.type for e in events]
    # the Anthropic-signed thinking block is not forwarded
    assert "response.reasoning_summary_text.delta" not in types
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-1] == "response.completed"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "I'll list ",
        "and patch.",
    ]
    assert sum(t == "response.output_item.done" for t in types) == 4
    seqs = [e.sequence_number for e in events]
    assert seqs == list(range(len(seqs)))


def test_encoder_event_shapes_match_openai() -> None:
    evs = parse_sse(encode_all(ir_events()))
    assert all(n == d["type"] for n, d in evs)
    added = [d for _, d in evs if d["type"] == "response.output_item.added"]
    assert [a["output_index"] for a in added] == [0, 1, 2, 3]
    assert added[0]["item"]["status"] == "in_progress" and added[0]["item"]["content"] == []
    assert added[1]["item"] | {"id": "x"} == {
        "id": "x",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "toolu_ls",
        "name": "exec_command",
        "arguments": "",
    }
    by_type = {d["type"]: d for _, d in evs}
    assert by_type["response.function_call_arguments.done"]["arguments"] == '{"cmd": "ls"}'
    assert by_type["response.custom_tool_call_input.done"]["input"] == PATCH
    assert by_type["response.output_text.done"]["text"] == "I'll list and patch."
    assert by_type["response.content_part.done"]["part"]["text"] == "I'll list and patch."
    # wrapped custom input is sent once, unwrapped; native custom input streams as is
    deltas = [d["delta"] for _, d in evs if d["type"] == "response.custom_tool_call_input.delta"]
    assert deltas == [PATCH, PATCH[:9], PATCH[9:]]
    created = by_type["response.created"]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    done = by_type["response.completed"]["response"]
    assert [o["id"][:3] for o in done["output"]] == ["msg", "fc_", "ctc", "ctc"]
    assert done["usage"]["total_tokens"] == 5692


def test_encoder_forwards_openai_reasoning() -> None:
    evs = parse_sse(
        encode_all(
            [
                MessageStart("resp_x", "gpt-5.5"),
                BlockStart(0, "thinking", item_id="rs_keep"),
                BlockDelta(0, thinking="summary"),
                BlockDelta(0, encrypted="ENC"),
                BlockStop(0),
                BlockStart(1, "text"),
                BlockDelta(1, text="ok"),
                BlockStop(1),
                MessageEnd("end_turn", Usage(input_tokens=5, output_tokens=2)),
            ]
        )
    )
    done = [d for _, d in evs if d["type"] == "response.output_item.done"]
    assert done[0]["item"] == {
        "id": "rs_keep",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "summary"}],
        "encrypted_content": "ENC",
    }
    assert done[0]["output_index"] == 0 and done[1]["output_index"] == 1
    final = evs[-1][1]["response"]
    assert final["id"] == "resp_x" and final["output"][0]["encrypted_content"] == "ENC"


async def test_upstream_stream_decoded_then_encoded_for_sdk(serve) -> None:
    dec_events = decode_chunked(sse_bytes(upstream_events()), 17)
    client = serve(encode_all(dec_events))
    _, final = await asyncio.to_thread(_stream_final, client)
    assert final.output_text == "Héllo wörld"
    assert [o.type for o in final.output] == [
        "reasoning",
        "message",
        "function_call",
        "custom_tool_call",
    ]
    assert final.output[0].encrypted_content == "ENC=="
    assert final.output[0].summary[0].text == "Plan: list\n\nthen patch"
    assert final.output[2].arguments == '{"cmd":"ls"}'
    assert final.output[3].input == PATCH
    assert final.usage.input_tokens == 9000
    assert final.usage.input_tokens_details.cached_tokens == 8192


def _iterate(client: openai.OpenAI) -> list[Any]:
    with client.responses.stream(model="gpt-5.5", input="hi") as stream:
        return list(stream)


async def test_encoder_max_tokens_is_response_incomplete(serve) -> None:
    raw = encode_all(
        [
            MessageStart("m", "x"),
            BlockStart(0, "text"),
            BlockDelta(0, text="cut"),
            MessageEnd("max_tokens", Usage(input_tokens=3, output_tokens=16)),
        ]
    )
    events = await asyncio.to_thread(_iterate, serve(raw))
    assert [e.type for e in events][-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    last = events[-1].response
    assert last.status == "incomplete"
    assert last.incomplete_details.reason == "max_output_tokens"
    assert last.output_text == "cut"
    assert last.usage.total_tokens == 19


@pytest.mark.parametrize(
    ("events", "code", "message"),
    [
        (
            [
                MessageStart("m", "x"),
                BlockStart(0, "text"),
                BlockDelta(0, text="a"),
                StreamError(429, "rate_limit", "Rate limited; try again in 2s"),
            ],
            "rate_limit_exceeded",
            "Rate limited; try again in 2s",
        ),
        ([StreamError(529, "overloaded", "busy")], "server_error", "busy"),
        (
            [MessageStart("m", "x"), BlockStart(0, "text")],
            "server_error",
            "stream closed before response.completed",
        ),
    ],
)
async def test_encoder_errors_are_response_failed(serve, events, code, message) -> None:
    got = await asyncio.to_thread(_iterate, serve(encode_all(events)))
    assert got[0].type == "response.created"
    assert got[-1].type == "response.failed"
    assert got[-1].response.status == "failed"
    assert got[-1].response.output == []  # no half-open item placeholders
    assert (got[-1].response.error.code, got[-1].response.error.message) == (code, message)


async def test_build_response_parsed_by_sdk_create(serve) -> None:
    resp = ChatResponse(
        id="msg_1",
        model="claude",
        stop_reason="tool_use",
        parts=[
            TextPart("Hello "),
            TextPart("there."),
            ToolUsePart("toolu_9", "exec_command", {"cmd": "pwd"}),
        ],
        usage=Usage(input_tokens=40, output_tokens=7, cache_read_tokens=1024),
    )
    client = serve(orjson.dumps(rs.build_response(resp, "gpt-5.5")), as_json=True)
    r = await asyncio.to_thread(client.responses.create, model="gpt-5.5", input="hi")
    assert r.output_text == "Hello there."
    assert r.status == "completed" and r.object == "response"
    assert r.output[1].type == "function_call" and r.output[1].arguments == '{"cmd":"pwd"}'
    assert r.usage.input_tokens == 1064 and r.usage.total_tokens == 1071
    assert r.usage.input_tokens_details.cached_tokens == 1024
    assert serve.state["requests"][-1]["input"] == "hi"


# ---- same-format passthrough usage tap ------------------------------------------------


@pytest.mark.parametrize("size", [3, 64, 100000])
def test_usage_tap_reads_terminal_event(size: int) -> None:
    raw = sse_bytes(upstream_events())
    tap = rs.UsageTap()
    for i in range(0, len(raw), size):
        tap.feed_bytes(raw[i : i + size])
    tap.finish()
    assert tap.done and tap.error is None
    assert tap.response_id == "resp_up"
    assert tap.stop_reason == "end_turn"  # completed event carries no output list here
    assert tap.usage == Usage(
        input_tokens=808, output_tokens=77, cache_read_tokens=8192, reasoning_tokens=30
    )


def test_usage_tap_on_encoder_output_and_failures() -> None:
    tap = rs.UsageTap()
    tap.feed_bytes(encode_all(ir_events()))
    assert tap.stop_reason == "tool_use"
    assert tap.usage is not None and tap.usage.cache_read_tokens == 5000
    # data-only events (no "event:" line) are recognised too
    failed = (
        b'data: {"type":"response.failed","sequence_number":9,"response":{"id":"r",'
        b'"status":"failed","error":{"code":"server_error","message":"x"}}}\n\n'
    )
    tap2 = rs.UsageTap()
    tap2.feed_bytes(failed)
    assert tap2.done and tap2.stop_reason == "error"
    assert tap2.error == StreamError(500, "api_error", "x")
    tap3 = rs.UsageTap()
    tap3.feed_bytes(sse_bytes(upstream_events()[:10]))
    tap3.finish()
    assert not tap3.done and tap3.usage is None
