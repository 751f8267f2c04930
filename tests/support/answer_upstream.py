"""A fake provider whose answers are scripted per model (aiohttp, 127.0.0.1 only),
for the cascade tests. Bodies follow the public API shapes: Anthropic Messages
(``POST /v1/messages``) and OpenAI Chat Completions (``POST /v1/chat/completions``),
non-streaming and streaming (SSE), with usage.

A ``[[as:KIND@MODEL]]`` marker anywhere in the request picks the answer of the
upstream model ``MODEL`` (``[[as:KIND]]``: every model); others answer ``good``:

- ``good``          text naming the model, a normal stop
- ``truncated``     a partial text, stop ``max_tokens`` / finish ``length``
- ``empty``         no text and no tool calls
- ``refusal``       "I'm sorry, but I can't help with that."
- ``tool-good``     a call to the request's first tool with its required arguments
- ``tool-unknown``  a call to a tool the request does not offer
- ``tool-badjson``  chat: arguments that are not JSON; Anthropic: ``input: {}``
- ``500``           an API error in the format

Each request is appended to ``app[CALLS]`` as ``Call(path, model, kind, stream,
input_tokens, output_tokens)``: the usage the fake reported, for cost checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Call:
    path: str
    model: str
    kind: str
    stream: bool
    input_tokens: int
    output_tokens: int


CALLS: web.AppKey[list[Call]] = web.AppKey("answer_calls", list)
_MARK = re.compile(rb"\[\[as:([a-z0-9-]+)(?:@([\w.\-]+))?\]\]")
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def _kind(raw: bytes, model: str) -> str:
    for m in _MARK.finditer(raw):
        if m.group(2) is None or m.group(2).decode() == model:
            return m.group(1).decode()
    return "good"


def _first_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The request's first tool and arguments that satisfy its schema's required."""
    t = (body.get("tools") or [{}])[0]
    fn = t.get("function") or t
    schema = fn.get("input_schema") or fn.get("parameters") or {}
    return str(fn.get("name") or "none"), {k: "a.py" for k in schema.get("required", [])}


def _script(kind: str, model: str, body: dict[str, Any]) -> tuple[str, list[tuple[str, Any]], str]:
    """(text, [(tool name, arguments as the model wrote them)], stop) for a kind."""
    name, args = _first_tool(body)
    return {
        "good": (f"Answer from {model}.", [], "stop"),
        "truncated": ("The answer starts like this and then", [], "length"),
        "empty": ("", [], "stop"),
        "refusal": ("I'm sorry, but I can't help with that.", [], "stop"),
        "tool-good": ("", [(name, args)], "tool"),
        "tool-unknown": ("", [("delete_everything", {})], "tool"),
        "tool-badjson": ("", [(name, '{"path": "a.py"')], "tool"),
    }[kind]


def _usage_numbers(raw: bytes, text: str) -> tuple[int, int]:
    return 40 + len(raw) // 16, 5 + len(text.split()) * 2


# -- Anthropic Messages ------------------------------------------------------------

_AN_STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}


def _an_message(model: str, text: str, calls: list[tuple[str, Any]], stop: str,
                usage: tuple[int, int]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for i, (name, args) in enumerate(calls):
        content.append({"type": "tool_use", "id": f"toolu_fake{i}", "name": name,
                        "input": args if isinstance(args, dict) else {}})
    return {"id": "msg_fake01", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _AN_STOP[stop], "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": usage[1]}}


def _an_events(msg: dict[str, Any]) -> list[bytes]:
    start = {**msg, "content": [], "stop_reason": None,
             "usage": {**msg["usage"], "output_tokens": 1}}
    text = next((b["text"] for b in msg["content"] if b["type"] == "text"), "")
    return [
        _ev({"type": "message_start", "message": start}, "message_start"),
        _ev({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        _ev({"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": text}}, "content_block_delta"),
        _ev({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _ev({"type": "message_delta", "delta": {"stop_reason": msg["stop_reason"],
                                                "stop_sequence": None},
             "usage": {"output_tokens": msg["usage"]["output_tokens"]}}, "message_delta"),
        _ev({"type": "message_stop"}, "message_stop"),
    ]


# -- OpenAI Chat Completions ----------------------------------------------------------

_OA_STOP = {"stop": "stop", "length": "length", "tool": "tool_calls"}


def _oa_usage(usage: tuple[int, int]) -> dict[str, Any]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def _oa_completion(model: str, text: str, calls: list[tuple[str, Any]], stop: str,
                   usage: tuple[int, int]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": text if not calls else None,
                           "refusal": None, "annotations": []}
    if calls:
        msg["tool_calls"] = [
            {"id": f"call_fake{i}", "type": "function",
             "function": {"name": name,
                          "arguments": args if isinstance(args, str) else orjson.dumps(
                              args).decode()}}
            for i, (name, args) in enumerate(calls)]
    return {"id": "chatcmpl-fake01", "object": "chat.completion", "created": 1_760_000_000,
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": msg, "logprobs": None,
                         "finish_reason": _OA_STOP[stop]}],
            "usage": _oa_usage(usage), "service_tier": "default"}


def _oa_events(model: str, text: str, usage: tuple[int, int], include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-fake01", "object": "chat.completion.chunk",
            "created": 1_760_000_000, "model": model, "system_fingerprint": "fp_fake"}
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        return _ev({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}], **extra})

    out = [chunk({"role": "assistant", "content": "", "refusal": None}, None),
           chunk({"content": text}, None), chunk({}, "stop")]
    if include_usage:
        out.append(_ev({**base, "choices": [], "usage": _oa_usage(usage)}))
    return [*out, b"data: [DONE]\n\n"]


# -- the app ------------------------------------------------------------------------


def _ev(obj: object, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _error(anthropic: bool) -> bytes:
    if anthropic:
        return orjson.dumps({"type": "error", "error": {"type": "api_error",
                                                        "message": "Internal server error"}})
    return orjson.dumps({"error": {"message": "The server had an error", "type": "server_error",
                                   "param": None, "code": None}})


async def _handle(request: web.Request, anthropic: bool) -> web.StreamResponse:
    raw = await request.read()
    body = orjson.loads(raw)
    model = str(body.get("model", ""))
    stream = body.get("stream") is True
    kind = "good" if stream else _kind(raw, model)
    if kind == "500":
        request.app[CALLS].append(Call(request.path, model, kind, stream, 0, 0))
        return web.Response(status=500, body=_error(anthropic), content_type="application/json")
    text, calls, stop = _script(kind, model, body)
    usage = _usage_numbers(raw, text)
    request.app[CALLS].append(Call(request.path, model, kind, stream, *usage))
    if anthropic:
        msg = _an_message(model, text, calls, stop, usage)
        if not stream:
            return web.json_response(msg)
        events = _an_events(msg)
    else:
        if not stream:
            return web.json_response(_oa_completion(model, text, calls, stop, usage))
        so = body.get("stream_options")
        events = _oa_events(model, text, usage, isinstance(so, dict) and bool(
            so.get("include_usage")))
    resp = web.StreamResponse(headers=_SSE)
    await resp.prepare(request)
    for ev in events:
        await resp.write(ev)
    await resp.write_eof()
    return resp


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _handle(request, anthropic=False)


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _handle(request, anthropic=True)


def make_app() -> web.Application:
    """The fake provider; run it with ``tests.support.running.RunningApp``."""
    app = web.Application()
    app[CALLS] = []
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/messages", _messages)
    return app
