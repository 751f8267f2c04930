"""Chat Completions codec: request/response translation, stream decode, and the
stream encoder checked against the real openai SDK over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import openai
import orjson
import pytest
from aiohttp import web

from switchman_daemon.errors import ApiError, ErrorKind
from switchman_daemon.protocol import chat
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
    StreamEvent,
    TextPart,
    ThinkingPart,
    Tool,
    ToolChoice,
    ToolResultPart,
    ToolUsePart,
    Usage,
)
from switchman_daemon.protocol.sse import SSEParser

# ---- parse_request -----------------------------------------------------------------


def aider_body() -> dict:
    return {
        "model": "gpt-4o",
        "stream": True,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Act as an expert software developer."},
            {"role": "user", "content": "I have *added these files*: hello.py"},
            {"role": "assistant", "content": "Ok, I will edit those files."},
            {"role": "user", "content": "Make greet return hello."},
            {"role": "system", "content": "# SEARCH/REPLACE block rules: ..."},
        ],
    }


def test_parse_aider_request_keeps_last_system_in_place() -> None:
    req = chat.parse_request(aider_body())
    assert req.source_format == "chat"
    assert req.model == "gpt-4o"
    assert req.stream is True and req.temperature == 0
    assert [p.text for p in req.system] == ["Act as an expert software developer."]
    assert [m.role for m in req.messages] == ["user", "assistant", "user", "system"]
    assert req.messages[-1].parts == [TextPart("# SEARCH/REPLACE block rules: ...")]
    assert req.extra == {}
    # and back: one leading system, the trailing system stays last
    body = chat.build_request(req, "local-model", stream=True)
    assert [m["role"] for m in body["messages"]] == [
        "system", "user", "assistant", "user", "system",
    ]  # fmt: skip
    assert body["messages"][-1]["content"] == "# SEARCH/REPLACE block rules: ..."
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0


def test_parse_request_fields_and_extra() -> None:
    req = chat.parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hi"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get",
                        "description": "d",
                        "parameters": {"type": "object", "properties": {"a": {}}},
                        "strict": True,
                    },
                },
                {"type": "custom", "custom": {"name": "apply_patch", "description": "p"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "get"}},
            "parallel_tool_calls": False,
            "max_completion_tokens": 99,
            "max_tokens": 5,
            "top_p": 0.5,
            "stop": "END",
            "reasoning_effort": "high",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
            "prompt_cache_key": "sess-1",
            "user": "u1",
            "stream_options": {"include_usage": True},
            "seed": 7,
            "n": 1,
            "metadata": {"k": "v"},
        }
    )
    assert [p.text for p in req.system] == ["dev", "sys"]
    assert req.tools[0].name == "get" and req.tools[0].input_schema["properties"] == {"a": {}}
    assert req.tools[1].kind == "custom"
    assert req.tool_choice == ToolChoice("tool", "get", parallel=False)
    assert req.max_tokens == 99  # max_completion_tokens wins
    assert req.stop == ["END"] and req.top_p == 0.5
    assert req.reasoning_effort == "high"
    assert req.json_schema == {"name": "out", "schema": {"type": "object"}, "strict": True}
    assert req.cache_key == "sess-1" and req.user == "u1"
    assert req.extra == {
        "stream_options": {"include_usage": True},
        "seed": 7,
        "n": 1,
        "metadata": {"k": "v"},
    }
    assert chat.client_wants_usage({"stream_options": {"include_usage": True}})
    assert not chat.client_wants_usage({"stream": True})

    body = chat.build_request(req, "up", stream=False)
    assert body["tools"][0]["function"]["strict"] is True
    assert body["tools"][1]["function"]["parameters"]["required"] == ["input"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get"}}
    assert body["parallel_tool_calls"] is False
    assert body["max_tokens"] == 99
    assert body["seed"] == 7 and body["metadata"] == {"k": "v"}
    assert "stream" not in body and "stream_options" not in body  # not streaming upstream
    assert body["response_format"]["json_schema"]["name"] == "out"
    assert body["prompt_cache_key"] == "sess-1"
    assert (
        chat.build_request(req, "up", stream=False, max_tokens_field="max_completion_tokens")[
            "max_completion_tokens"
        ]
        == 99
    )


def test_tool_calls_and_tool_messages_round_trip() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "list and read"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "thinking...",  # DeepSeek echo: ignored
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "ls", "arguments": '{"path": "."}'}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "read", "arguments": "{not json"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
            {"role": "tool", "tool_call_id": "call_2",
             "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": "thanks"},
        ],
    }  # fmt: skip
    req = chat.parse_request(body)
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    asst = req.messages[1]
    assert asst.parts == [
        ToolUsePart("call_1", "ls", {"path": "."}),
        ToolUsePart("call_2", "read", {"_raw": "{not json"}),
    ]
    # two tool messages + following user text merged into one user turn, results first
    merged = req.messages[2].parts
    assert merged == [
        ToolResultPart("call_1", [TextPart("a.txt")]),
        ToolResultPart("call_2", [TextPart("hello")]),
        TextPart("thanks"),
    ]
    out = chat.build_request(req, "m2", stream=False)["messages"]
    assert out == [
        {"role": "user", "content": "list and read"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "ls", "arguments": '{"path":"."}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "read", "arguments": "{not json"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_2", "content": "hello"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip


def test_legacy_function_role_tolerated() -> None:
    req = chat.parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": None,
                 "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "42"},
            ],
        }
    )  # fmt: skip
    call = req.messages[1].parts[0]
    res = req.messages[2].parts[0]
    assert isinstance(call, ToolUsePart) and isinstance(res, ToolResultPart)
    assert res.tool_use_id == call.id and res.content == [TextPart("42")]


def test_image_parts() -> None:
    req = chat.parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url",
                     "image_url": {"url": "data:image/jpeg;base64,QUJD", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    {"type": "input_audio", "input_audio": {"data": "..", "format": "wav"}},
                ]},
            ],
        }
    )  # fmt: skip
    assert req.messages[0].parts == [
        TextPart("what is this"),
        ImagePart(media_type="image/jpeg", data="QUJD"),
        ImagePart(url="https://x.test/a.png"),
    ]
    assert req.extra["_dropped_parts"] == ["messages[0].content[3]"]
    body = chat.build_request(req, "m", stream=False)
    assert "_dropped_parts" not in body
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}, "oops"]}, "messages[1]"),
        (
            {"model": "m", "messages": [
                {"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": 5},
            ]},
            "messages[3].content",
        ),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]},
         "messages[0].tool_call_id"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "messages[0].content[0].text"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"},
         "max_tokens"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": True},
         "temperature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 3}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": {}}, "tools"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}],
          "tool_choice": "sometimes"}, "tool_choice"),
    ],
)  # fmt: skip
def test_parse_request_errors_name_the_param(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as ei:
        chat.parse_request(body)
    assert ei.value.kind is ErrorKind.invalid_request
    assert ei.value.status == 400
    assert ei.value.param == param
    assert param.split("[")[0].split(".")[0] in ei.value.message


# ---- build_request from an Anthropic-origin IR ------------------------------------


def anthropic_ir() -> ChatRequest:
    return ChatRequest(
        model="claude-opus-4-8",
        source_format="anthropic",
        system=[
            TextPart("You are Claude Code."),
            TextPart("Main prompt.", cache=CacheMark()),
        ],
        messages=[
            Message("user", [TextPart("<system-reminder>r</system-reminder>"),
                             TextPart("List files", cache=CacheMark("1h"))]),
            Message("system", [TextPart("Available agent types ...")]),
            Message("assistant", [
                ThinkingPart("let me look", signature="sig", origin="anthropic"),
                TextPart("Looking."),
                ToolUsePart("toolu_01", "Bash", {"command": "ls"}),
                ToolUsePart("toolu_02", "apply_patch", "*** Begin Patch", kind="custom"),
            ]),
            Message("user", [
                TextPart("also this"),
                ToolResultPart("toolu_01", [TextPart("a\nb"),
                                            ImagePart(media_type="image/png", data="AAA")]),
                ToolResultPart("toolu_02", [TextPart("done")], kind="custom"),
            ]),
        ],
        tools=[
            Tool("Bash", "Run a command", {"type": "object", "properties": {"command": {}}}),
            Tool("apply_patch", "Edit files", kind="custom", raw={"format": {"type": "grammar"}}),
            Tool("web_search", kind="builtin", raw={"type": "web_search_20250305"}),
        ],
        tool_choice=ToolChoice("any", parallel=True),
        max_tokens=64000,
        thinking={"type": "adaptive"},
        cache_key="sess-9",
        extra={"context_management": {"edits": []}, "metadata": {"user_id": "x"}},
    )  # fmt: skip


def test_build_request_from_anthropic_ir() -> None:
    body = chat.build_request(anthropic_ir(), "gpt-5.5", stream=True)
    assert body["model"] == "gpt-5.5"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    # extra of another format is never copied
    assert "context_management" not in body and "metadata" not in body
    assert body["max_tokens"] == 64000
    assert body["prompt_cache_key"] == "sess-9"
    assert "reasoning_effort" not in body  # only when set
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is True
    assert [t["function"]["name"] for t in body["tools"]] == ["Bash", "apply_patch"]
    patch_tool = body["tools"][1]["function"]
    assert patch_tool["description"].startswith("Edit files")
    assert patch_tool["parameters"]["properties"] == {"input": {"type": "string"}}
    msgs = body["messages"]
    assert msgs[0] == {"role": "system", "content": "You are Claude Code.\n\nMain prompt."}
    assert msgs[1] == {
        "role": "user",
        "content": "<system-reminder>r</system-reminder>\n\nList files",
    }
    assert msgs[2] == {"role": "system", "content": "Available agent types ..."}
    assert msgs[3]["role"] == "assistant" and msgs[3]["content"] == "Looking."
    assert "reasoning_content" not in msgs[3]  # thinking dropped
    calls = msgs[3]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"command": "ls"}
    assert json.loads(calls[1]["function"]["arguments"]) == {"input": "*** Begin Patch"}
    # tool results first, then the user's own content (+ the image from the result)
    assert msgs[4] == {"role": "tool", "tool_call_id": "toolu_01", "content": "a\nb"}
    assert msgs[5] == {"role": "tool", "tool_call_id": "toolu_02", "content": "done"}
    assert msgs[6]["role"] == "user"
    assert msgs[6]["content"] == [
        {"type": "text", "text": "also this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
    ]
    assert len(msgs) == 7


def test_build_request_without_tools_omits_tool_choice() -> None:
    req = anthropic_ir()
    req.tools = [Tool("web_search", kind="builtin", raw={})]
    body = chat.build_request(req, "x", stream=False)
    assert "tools" not in body and "tool_choice" not in body
    assert "parallel_tool_calls" not in body


# ---- responses ----------------------------------------------------------------------


def openai_completion() -> dict:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-5.6",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "refusal": None,
                "tool_calls": [{"id": "call_9", "type": "function",
                                "function": {"name": "ls", "arguments": '{"p":1}'}}],
            },
            "finish_reason": "tool_calls",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
            "completion_tokens_details": {"reasoning_tokens": 20},
        },
    }  # fmt: skip


def test_parse_response() -> None:
    resp = chat.parse_response(openai_completion())
    assert resp.id == "chatcmpl-abc" and resp.model == "gpt-5.6"
    assert resp.parts == [TextPart("Checking."), ToolUsePart("call_9", "ls", {"p": 1})]
    assert resp.stop_reason == "tool_use"
    assert resp.usage == Usage(
        input_tokens=100, output_tokens=50, cache_read_tokens=600,
        cache_write_tokens=300, reasoning_tokens=20,
    )  # fmt: skip
    assert resp.usage.prompt_tokens == 1000


def test_response_round_trip_preserves_cache_usage() -> None:
    src = openai_completion()
    out = chat.build_response(chat.parse_response(src), "gpt-5.6")
    assert out["usage"] == src["usage"]
    assert out["choices"][0]["message"]["tool_calls"] == src["choices"][0]["message"]["tool_calls"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["choices"][0]["message"]["content"] == "Checking."
    # the real SDK model accepts it
    parsed = openai.types.chat.ChatCompletion.model_validate(out)
    assert parsed.usage is not None and parsed.usage.prompt_tokens_details is not None
    assert parsed.usage.prompt_tokens_details.cached_tokens == 600


def test_build_response_from_anthropic_ir() -> None:
    resp = ChatResponse(
        id="msg_01",
        model="claude",
        parts=[
            ThinkingPart("hmm", signature="s", origin="anthropic"),
            TextPart("Hello"),
            ToolUsePart("toolu_1", "Read", {"file": "a"}),
        ],
        stop_reason="max_tokens",
        usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=1000,
                    cache_write_tokens=200, cache_write_1h_tokens=50),
    )  # fmt: skip
    out = chat.build_response(resp, "claude-sonnet-5")
    assert out["id"].startswith("chatcmpl-") and out["object"] == "chat.completion"
    assert isinstance(out["created"], int) and out["model"] == "claude-sonnet-5"
    ch = out["choices"][0]
    assert ch["finish_reason"] == "length" and ch["logprobs"] is None
    assert ch["message"]["content"] == "Hello" and ch["message"]["refusal"] is None
    assert ch["message"]["tool_calls"][0]["id"] == "toolu_1"
    assert ch["message"]["reasoning_content"] == "hmm"
    assert out["usage"] == {
        "prompt_tokens": 1260,
        "completion_tokens": 5,
        "total_tokens": 1265,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 250},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    openai.types.chat.ChatCompletion.model_validate(out)


def test_parse_response_deepseek_usage_and_refusal() -> None:
    resp = chat.parse_response(
        {
            "id": "x",
            "model": "deepseek-reasoner",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "", "reasoning_content": "think",
                "refusal": "I can't help with that."}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 3,
                      "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36},
        }
    )  # fmt: skip
    assert resp.parts == [
        ThinkingPart("think", origin="openai"),
        TextPart("I can't help with that."),
    ]
    assert resp.stop_reason == "refusal"
    assert resp.usage.cache_read_tokens == 64 and resp.usage.input_tokens == 36
    with pytest.raises(ApiError):
        chat.parse_response({"choices": []})


# ---- stream decoding -------------------------------------------------------------


def _chunk(delta: dict | None = None, finish: str | None = None, **kw: object) -> dict:
    c: dict = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1,
               "model": "gpt-5.6", "system_fingerprint": "fp", "usage": None}  # fmt: skip
    c["choices"] = (
        [] if delta is None else
        [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )  # fmt: skip
    c.update(kw)
    return c


def upstream_stream() -> bytes:
    """What OpenAI sends for a text + two parallel tool calls turn with include_usage."""
    chunks = [
        _chunk({"role": "assistant", "content": "", "refusal": None}),
        _chunk({"content": "Let me "}),
        _chunk({"content": "check."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_A", "type": "function",
                                "function": {"name": "ls", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"pa'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th": "."}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "call_B", "type": "function",
                                "function": {"name": "read", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"file": '}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"ü.txt"}'}}]}),
        _chunk({}, "tool_calls"),
        _chunk(None, usage={
            "prompt_tokens": 2000, "completion_tokens": 40, "total_tokens": 2040,
            "prompt_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 100},
            "completion_tokens_details": {"reasoning_tokens": 7}}),
    ]  # fmt: skip
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def decode_all(raw: bytes, size: int) -> list[StreamEvent]:
    parser, dec, evs = SSEParser(), chat.StreamDecoder(), []
    for i in range(0, len(raw), size):
        for name, data in parser.feed(raw[i : i + size]):
            evs.extend(dec.feed(name, data))
    for name, data in parser.flush():
        evs.extend(dec.feed(name, data))
    evs.extend(dec.finish())
    return evs


EXPECTED_USAGE = Usage(input_tokens=400, output_tokens=40, cache_read_tokens=1500,
                       cache_write_tokens=100, reasoning_tokens=7)  # fmt: skip


@pytest.mark.parametrize("size", [1, 7, 13, 64, 100_000])
def test_stream_decode_parallel_tool_calls(size: int) -> None:
    evs = decode_all(upstream_stream(), size)
    assert evs[0] == MessageStart("chatcmpl-s1", "gpt-5.6")
    # text deltas may be split differently only by upstream chunks, not by byte splits
    assert evs[1:] == [
        BlockStart(0, "text"),
        BlockDelta(0, text="Let me "),
        BlockDelta(0, text="check."),
        BlockStop(0),
        BlockStart(1, "tool_use", tool_id="call_A", tool_name="ls"),
        BlockDelta(1, json='{"pa'),
        BlockDelta(1, json='th": "."}'),
        BlockStop(1),
        BlockStart(2, "tool_use", tool_id="call_B", tool_name="read"),
        BlockDelta(2, json='{"file": '),
        BlockDelta(2, json='"ü.txt"}'),
        BlockStop(2),
        MessageEnd("tool_use", EXPECTED_USAGE),
    ]


def test_stream_decode_reasoning_and_truncation() -> None:
    dec = chat.StreamDecoder()
    evs = dec.feed(None, orjson.dumps(_chunk({"role": "assistant", "reasoning_content": "hm"})))
    evs += dec.feed(None, orjson.dumps(_chunk({"reasoning_content": "m"})))
    evs += dec.feed(None, orjson.dumps(_chunk({"content": "ok"}, "length")))
    evs += dec.finish()  # no [DONE] but a finish_reason came: still a complete message
    assert evs[1:] == [
        BlockStart(0, "thinking"),
        BlockDelta(0, thinking="hm"),
        BlockDelta(0, thinking="m"),
        BlockStop(0),
        BlockStart(1, "text"),
        BlockDelta(1, text="ok"),
        BlockStop(1),
        MessageEnd("max_tokens", Usage()),
    ]
    assert dec.feed(None, b"[DONE]") == []  # MessageEnd exactly once


def test_stream_decode_cut_off_and_error() -> None:
    dec = chat.StreamDecoder()
    dec.feed(None, orjson.dumps(_chunk({"content": "par"})))
    evs = dec.finish()
    assert len(evs) == 1 and isinstance(evs[0], StreamError)
    assert evs[0].status == 502 and evs[0].kind == "upstream_unavailable"

    dec = chat.StreamDecoder()
    dec.feed(None, orjson.dumps(_chunk({"content": "x"})))
    evs = dec.feed(None, b'{"error":{"message":"Rate limit reached","type":"requests",'
                         b'"code":"rate_limit_exceeded"}}')  # fmt: skip
    assert evs == [StreamError(429, "rate_limit", "Rate limit reached")]
    assert dec.finish() == []


# ---- UsageTap ----------------------------------------------------------------------


def test_usage_tap_on_passthrough_stream() -> None:
    tap, parser, usage_only = chat.UsageTap(), SSEParser(), []
    for name, data in parser.feed(upstream_stream()):
        tap.feed(name, data)
        usage_only.append(chat.UsageTap.is_usage_only_chunk(data))
    assert tap.done and tap.error is None
    assert tap.stop_reason == "tool_use"
    assert tap.usage == EXPECTED_USAGE
    # only the choices:[] usage chunk is flagged (every chunk carries "usage":null)
    assert usage_only == [False] * 10 + [True, False]

    tap = chat.UsageTap()
    tap.feed(None, b'{"error": {"message": "boom"}}')
    assert tap.error == "boom" and not tap.done


# ---- StreamEncoder verified with the real openai SDK ------------------------------------


def ir_events() -> list[StreamEvent]:
    return [
        MessageStart("msg_01XYZ", "claude-sonnet-5"),
        BlockStart(0, "thinking"),
        BlockDelta(0, thinking="Planning"),
        BlockDelta(0, signature="sig"),
        BlockStop(0),
        BlockStart(1, "text"),
        BlockDelta(1, text="I'll read "),
        BlockDelta(1, text="both files."),
        BlockStop(1),
        BlockStart(2, "tool_use", tool_id="toolu_A", tool_name="Read"),
        BlockDelta(2, json=""),
        BlockDelta(2, json='{"file_path":'),
        BlockDelta(2, json=' "a.py"}'),
        BlockStop(2),
        BlockStart(3, "tool_use", tool_id="toolu_B", tool_name="Read"),
        BlockDelta(3, json='{"file_path": "b.py"}'),
        BlockStop(3),
        MessageEnd(
            "tool_use",
            Usage(input_tokens=12, output_tokens=80, cache_read_tokens=5000,
                  cache_write_tokens=300, cache_write_1h_tokens=0),
        ),
    ]  # fmt: skip


def encode_all(events: list[StreamEvent], include_usage: bool) -> bytes:
    enc = chat.StreamEncoder("claude-sonnet-5", include_usage)
    return b"".join(enc.encode(e) for e in events) + enc.finish()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[bytes], object]]:
    """Start an aiohttp server that streams ``payload`` for any chat request."""
    state: dict = {"payload": b"", "requests": []}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["requests"].append(await request.json())
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        payload = state["payload"]
        for i in range(0, len(payload), 37):  # odd-size writes
            await resp.write(payload[i : i + 37])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def make(payload: bytes) -> openai.AsyncOpenAI:
        state["payload"] = payload
        return openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
        )

    make.state = state  # type: ignore[attr-defined]
    yield make
    await runner.cleanup()


MSGS = [{"role": "user", "content": "read a.py and b.py"}]


async def test_encoder_with_openai_sdk_stream_helper(serve) -> None:
    client = serve(encode_all(ir_events(), include_usage=True))
    async with client.chat.completions.stream(
        model="claude-sonnet-5", messages=MSGS, stream_options={"include_usage": True}
    ) as stream:
        arg_deltas = [
            ev.arguments_delta
            async for ev in stream
            if ev.type == "tool_calls.function.arguments.delta"
        ]
        final = await stream.get_final_completion()
    assert "".join(arg_deltas) == '{"file_path": "a.py"}{"file_path": "b.py"}'
    msg = final.choices[0].message
    assert msg.content == "I'll read both files."
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(t.id, t.function.name, json.loads(t.function.arguments)) for t in msg.tool_calls] == [
        ("toolu_A", "Read", {"file_path": "a.py"}),
        ("toolu_B", "Read", {"file_path": "b.py"}),
    ]
    assert final.id.startswith("chatcmpl-")
    u = final.usage
    assert u is not None
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5312, 80, 5392)
    assert u.prompt_tokens_details.cached_tokens == 5000
    assert u.prompt_tokens_details.cache_write_tokens == 300


@pytest.mark.parametrize("include_usage", [True, False])
async def test_encoder_usage_chunk_only_when_asked(serve, include_usage: bool) -> None:
    client = serve(encode_all(ir_events(), include_usage=include_usage))
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="m", messages=MSGS, stream=True, **kw
        )
    ]
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
        assert chunks[-1].choices == []
        assert usage_chunks[0].usage.completion_tokens == 80
    else:
        assert usage_chunks == []
        assert all(c.choices for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "I'll read both files."
    # thinking is sent as delta.reasoning_content (SDK keeps it as an extra field)
    reasoning = [getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks
                 if c.choices]  # fmt: skip
    assert "Planning" in reasoning


async def test_upstream_stream_decoded_then_encoded_for_sdk(serve) -> None:
    """A chat upstream's bytes -> decoder -> IR -> encoder -> SDK: same content."""
    evs = decode_all(upstream_stream(), 29)
    client = serve(encode_all(evs, include_usage=True))
    async with client.chat.completions.stream(
        model="m", messages=MSGS, stream_options={"include_usage": True}
    ) as stream:
        final = await stream.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "Let me check."
    assert [json.loads(t.function.arguments) for t in msg.tool_calls] == [
        {"path": "."},
        {"file": "ü.txt"},
    ]
    assert final.usage.prompt_tokens == 2000
    assert final.usage.prompt_tokens_details.cached_tokens == 1500


async def test_encoder_stream_error_raises_in_sdk(serve) -> None:
    evs: list[StreamEvent] = [
        MessageStart("m1", "x"),
        BlockStart(0, "text"),
        BlockDelta(0, text="par"),
        StreamError(529, "overloaded", "Upstream overloaded"),
        BlockDelta(0, text="ignored"),
    ]
    raw = encode_all(evs, include_usage=False)
    assert raw.endswith(b"data: [DONE]\n\n") and b"ignored" not in raw
    client = serve(raw)
    with pytest.raises(openai.APIError, match="Upstream overloaded"):
        async for _ in await client.chat.completions.create(model="m", messages=MSGS, stream=True):
            pass


def test_wrapped_custom_tool_is_unwrapped() -> None:
    """A Responses custom tool sent to a chat upstream as {"input": s} comes back raw."""
    patch = "*** Begin Patch\n*** Add File: hello.txt\n+hi\n*** End Patch"
    args = orjson.dumps({"input": patch}).decode()
    raw = b"".join(
        b"data: " + orjson.dumps(c) + b"\n\n"
        for c in [
            _chunk({"role": "assistant", "content": ""}),
            _chunk({"tool_calls": [{"index": 0, "id": "call_P", "type": "function",
                                    "function": {"name": "apply_patch", "arguments": ""}}]}),
            *[_chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 9]}}]})
              for i in range(0, len(args), 9)],
            _chunk({"tool_calls": [{"index": 1, "id": "call_L", "type": "function",
                                    "function": {"name": "ls", "arguments": "{}"}}]}),
            _chunk({}, "tool_calls"),
        ]
    ) + b"data: [DONE]\n\n"  # fmt: skip
    dec, evs = chat.StreamDecoder(custom_tools=frozenset({"apply_patch"})), []
    for name, data in SSEParser().feed(raw):
        evs.extend(dec.feed(name, data))
    assert evs[1:] == [
        BlockStart(0, "tool_use", tool_id="call_P", tool_name="apply_patch", tool_kind="custom"),
        BlockDelta(0, json=patch),
        BlockStop(0),
        BlockStart(1, "tool_use", tool_id="call_L", tool_name="ls"),
        BlockDelta(1, json="{}"),
        BlockStop(1),
        MessageEnd("tool_use", Usage()),
    ]
    body = openai_completion()
    body["choices"][0]["message"]["tool_calls"][0]["function"] = {
        "name": "apply_patch",
        "arguments": args,
    }
    resp = chat.parse_response(body, custom_tools=frozenset({"apply_patch"}))
    assert resp.parts[1] == ToolUsePart("call_9", "apply_patch", patch, kind="custom")
    # and IR custom call -> chat request wraps it again
    req = ChatRequest(model="m", messages=[Message("assistant", [resp.parts[1]])])
    sent = chat.build_request(req, "m", stream=False)["messages"][0]["tool_calls"][0]
    assert json.loads(sent["function"]["arguments"]) == {"input": patch}


def test_sse_feed_marked_keeps_billing_events_across_any_split() -> None:
    """The pass-through tap parses only marked events; a marker split across
    chunks must still be seen, and unmarked events are skipped."""
    stream = (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
              b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'
              b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":5}}\n\n'
              b"data: [DONE]\n\n")
    markers = (b'"usage":{', b'finish_reason":"', b"[DONE]")
    for size in (1, 3, 7, 50, len(stream)):
        p = SSEParser()
        got = []
        for i in range(0, len(stream), size):
            got += p.feed_marked(stream[i:i + size], markers)
        got += p.flush()
        datas = [d for _, d in got]
        assert any(b"finish_reason" in d for d in datas)
        assert any(b'"usage"' in d for d in datas)
        assert datas[-1] == b"[DONE]"
