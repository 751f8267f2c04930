"""A fault-injecting fake provider for the fault matrix (aiohttp, 127.0.0.1 only).

Speaks OpenAI chat (``POST /v1/chat/completions``) and Anthropic messages
(``POST /v1/messages``), streaming or not. Each request's behaviour is chosen by,
in order: an ``x-fault`` header, a ``[[fault:KIND]]`` marker anywhere in the body,
or a ``~KIND`` suffix on the model id (``fault-a~500``). A marker may be scoped to
one upstream model with ``[[fault:KIND@MODEL]]``; other models then answer
normally (so a chain of two faulty models can fail on the first only).

KIND is one of ``FAULTS``:

- ``ok``             a normal answer with usage
- ``slow-headers``   no response at all for ``SLOW_S`` (the read timeout fires)
- ``slow-body``      200 and SSE headers at once, then nothing for ``SLOW_S``
- ``429`` / ``429-ra``  rate limited, without / with ``Retry-After: 1``
- ``500`` ``502`` ``503`` ``529``  provider errors (JSON body in the format)
- ``502-html`` / ``400-html``  an error page from a proxy in front of the provider
- ``reset-before``   TCP reset after reading the request, before any response
- ``reset-mid``      a few events (usage-bearing start included), then a TCP reset
- ``malformed``      a normal stream with broken SSE / JSON events interleaved
- ``truncated``      a few events, then a clean EOF with no terminal event
- ``html``           200 ``text/html`` (a captive portal or a misrouted proxy)
- ``no-usage``       a complete, normal answer without any usage fields
- ``hold``           no response until the test calls ``release`` (or ``SLOW_S``), then a
                     normal answer
- ``hold-mid``       a stream's first events, then nothing until ``release``, then the rest
- ``late``           a normal answer whose body (a stream's first event) comes ``LATE_S`` late
- ``pause-mid``      a stream's first events, a pause of ``LATE_S``, then the rest

Every request is appended to ``app[CALLS]`` as ``(path, model, kind)``; requests
waiting in a hold are in ``app[HOLDS]`` until released.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct

import orjson
from aiohttp import web

FAULTS = ("ok", "slow-headers", "slow-body", "429", "429-ra", "500", "502", "503", "529",
          "502-html", "400-html", "reset-before", "reset-mid", "malformed", "truncated", "html",
          "no-usage", "hold", "hold-mid", "late", "pause-mid")
SLOW_S = 5.0  # longer than any read timeout the tests configure
LATE_S = 0.8  # longer than the first-byte bounds the tests configure
CALLS: web.AppKey[list[tuple[str, str, str]]] = web.AppKey("faulty_calls", list)
HOLDS: web.AppKey[list[asyncio.Future[None]]] = web.AppKey("faulty_holds", list)

# usage the tests check for; input side arrives first (message_start) on Anthropic
AN_INPUT, AN_CACHE_READ, AN_OUTPUT = 120, 30, 17
OA_PROMPT, OA_CACHED, OA_COMPLETION = 150, 30, 17

_MARK = re.compile(rb"\[\[fault:([a-z0-9-]+)(?:@([\w.\-]+))?\]\]")
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def _kind(request: web.Request, body: bytes, model: str) -> str:
    if k := request.headers.get("x-fault"):
        return k
    for m in _MARK.finditer(body):
        if m.group(2) is None or m.group(2).decode() == model:
            return m.group(1).decode()
    if "~" in model:
        return model.rsplit("~", 1)[1]
    return "ok"


def _ev(obj: object, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


def _an_events(model: str, usage: bool) -> list[bytes]:
    u0 = {"input_tokens": AN_INPUT, "cache_read_input_tokens": AN_CACHE_READ,
          "cache_creation_input_tokens": 0, "output_tokens": 1} if usage else None
    msg = {"id": "msg_fault", "type": "message", "role": "assistant", "model": model,
           "content": [], "stop_reason": None, "stop_sequence": None}
    if u0 is not None:
        msg["usage"] = u0
    delta: dict = {"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
    if usage:
        delta["usage"] = {"output_tokens": AN_OUTPUT}
    return [
        _ev({"type": "message_start", "message": msg}, "message_start"),
        _ev({"type": "content_block_start", "index": 0,
             "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        *(_ev({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": f"part{i} "}}, "content_block_delta")
          for i in range(4)),
        _ev({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _ev(delta, "message_delta"),
        _ev({"type": "message_stop"}, "message_stop"),
    ]


def _oa_usage() -> dict:
    return {"prompt_tokens": OA_PROMPT, "completion_tokens": OA_COMPLETION,
            "total_tokens": OA_PROMPT + OA_COMPLETION,
            "prompt_tokens_details": {"cached_tokens": OA_CACHED}}


def _oa_events(model: str, usage: bool, include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1,
            "model": model}
    out = [_ev({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]})]
    out += [_ev({**base, "choices": [{"index": 0, "delta": {"content": f"part{i} "},
                                      "finish_reason": None}]}) for i in range(4)]
    out.append(_ev({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage and include_usage:
        out.append(_ev({**base, "choices": [], "usage": _oa_usage()}))
    out.append(b"data: [DONE]\n\n")
    return out


def _whole(anthropic: bool, model: str, usage: bool) -> bytes:
    if anthropic:
        j: dict = {"id": "msg_fault", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": "whole answer"}],
                   "stop_reason": "end_turn", "stop_sequence": None}
        if usage:
            j["usage"] = {"input_tokens": AN_INPUT, "cache_read_input_tokens": AN_CACHE_READ,
                          "cache_creation_input_tokens": 0, "output_tokens": AN_OUTPUT}
    else:
        j = {"id": "chatcmpl-fault", "object": "chat.completion", "created": 1, "model": model,
             "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": "whole answer"}}]}
        if usage:
            j["usage"] = _oa_usage()
    return orjson.dumps(j)


def _error(anthropic: bool, status: int) -> bytes:
    msg = f"injected fault {status}"
    if anthropic:
        etype = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": msg}})
    return orjson.dumps({"error": {"message": msg, "type": "server_error", "param": None,
                                   "code": None}})


async def _stall(request: web.Request) -> None:
    """Sleep ``SLOW_S``, or until the client gives up (so the app stops fast)."""
    for _ in range(int(SLOW_S / 0.02)):
        t = request.transport
        if t is None or t.is_closing():
            return
        await asyncio.sleep(0.02)


async def _hold(request: web.Request) -> None:
    """Wait until ``release`` (or ``SLOW_S``, or the client gives up)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    holds = request.app[HOLDS]
    holds.append(fut)
    try:
        for _ in range(int(SLOW_S / 0.02)):
            t = request.transport
            if fut.done() or t is None or t.is_closing():
                return
            await asyncio.sleep(0.02)
    finally:
        holds.remove(fut)


def release(app: web.Application) -> None:
    """Let every held request go on; call on the app's loop
    (``loop.call_soon_threadsafe(release, app)``)."""
    for f in app[HOLDS]:
        if not f.done():
            f.set_result(None)


def _reset(request: web.Request) -> None:
    """Close with RST (SO_LINGER 0), not FIN: what a crashed middlebox does."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _handle(request: web.Request, anthropic: bool) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = {}
    model = str(body.get("model", ""))
    kind = _kind(request, raw, model)
    request.app[CALLS].append((request.path, model, kind))
    stream = body.get("stream") is True
    usage = kind != "no-usage"

    if kind == "slow-headers":
        await _stall(request)
    if kind == "hold":
        await _hold(request)
    if kind == "late" and not stream:
        await asyncio.sleep(LATE_S)
    if kind in ("429", "429-ra", "500", "502", "503", "529"):
        status = int(kind[:3])
        headers = {"retry-after": "1"} if kind == "429-ra" else {}
        return web.Response(status=status, body=_error(anthropic, status),
                            content_type="application/json", headers=headers)
    if kind in ("502-html", "400-html"):
        return web.Response(status=int(kind[:3]), text="<html><h1>Bad Gateway</h1></html>",
                            content_type="text/html")
    if kind == "reset-before":
        _reset(request)
        await asyncio.sleep(0.05)  # let the handler be torn down with the connection
        return web.Response(status=500)
    if kind == "html":
        return web.Response(status=200, text="<html><body>Sign in to the Wi-Fi</body></html>",
                            content_type="text/html")
    if not stream:
        if kind == "reset-mid":  # headers and half a body, then RST
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.content_length = 4096
            await resp.prepare(request)
            await resp.write(_whole(anthropic, model, usage)[:40])
            _reset(request)
            return resp
        if kind == "truncated":
            data = _whole(anthropic, model, usage)
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        return web.Response(body=_whole(anthropic, model, usage), content_type="application/json")

    so = body.get("stream_options")
    include_usage = isinstance(so, dict) and bool(so.get("include_usage"))
    events = _an_events(model, usage) if anthropic else _oa_events(model, usage, include_usage)
    resp = web.StreamResponse(headers=_SSE)
    await resp.prepare(request)
    if kind == "slow-body":
        await _stall(request)
    if kind == "late":
        await asyncio.sleep(LATE_S)
    if kind in ("hold-mid", "pause-mid"):
        await resp.write(b"".join(events[:3]))
        if kind == "hold-mid":
            await _hold(request)
        else:
            await asyncio.sleep(LATE_S)
        events = events[3:]
    if kind in ("reset-mid", "truncated"):
        await resp.write(b"".join(events[:3]))
        await asyncio.sleep(0.02)  # the first events reach the client first
        if kind == "reset-mid":
            _reset(request)
            return resp
        await resp.write_eof()
        return resp
    if kind == "malformed":
        junk = [b"data: {this is not json\n\n", b"event: message_delta\ndata: [1, 2\n\n",
                b": a comment line\n\n", b"data:\n\n", b"\xff\xfe binary junk\n\n"]
        mixed = [events[0]]
        for i, ev in enumerate(events[1:]):
            mixed += [junk[i % len(junk)], ev]
        events = mixed
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
    app[HOLDS] = []
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/messages", _messages)
    return app
