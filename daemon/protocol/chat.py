"""OpenAI Chat Completions codec: wire JSON/SSE <-> IR.

Used only when client and upstream speak different formats; same-format traffic
is passed through and only ``UsageTap`` looks at it (for billing).

Chat has no cache breakpoints, thinking signatures, ``developer`` vs ``system``
distinction after parsing, or ``is_error`` on tool results; those are dropped or
approximated as noted inline.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ApiError, ErrorKind, error_body, kind_for_status
from .ir import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    MessageEnd,
    MessageStart,
    Part,
    StopReason,
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
from .sse import DONE, encode_event

__all__ = [
    "StreamDecoder",
    "StreamEncoder",
    "UsageTap",
    "build_request",
    "build_response",
    "client_wants_usage",
    "parse_request",
    "parse_response",
    "usage_from_response",
]

# Request keys the IR models; everything else goes to ChatRequest.extra.
_KNOWN_KEYS = frozenset(
    {
        "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
        "max_completion_tokens", "temperature", "top_p", "stop", "stream", "reasoning_effort",
        "prompt_cache_key", "user", "functions", "function_call",
    }
)  # fmt: skip
# Keys build_request sets itself; never overwritten from extra.
_OWNED_KEYS = frozenset({"model", "messages", "stream"})

_FINISH_TO_STOP: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_STOP_TO_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "error": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Freeform (custom) tools become a one-string-argument function for chat upstreams.
_CUSTOM_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
}


def _bad(message: str, param: str) -> ApiError:
    return ApiError(ErrorKind.invalid_request, message, param=param)


# ---- request: chat -> IR ----------------------------------------------------


def _text_of(content: Any, param: str) -> list[TextPart]:
    """Text-only content (system/developer/tool messages): str or text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts", param)
    out: list[TextPart] = []
    for i, p in enumerate(content):
        pp = f"{param}[{i}]"
        if not isinstance(p, dict):
            raise _bad(f"'{pp}' must be an object", pp)
        # "refusal" parts only occur in assistant content; keep their text.
        t = p.get("text") if p.get("type") in ("text", None) else p.get("refusal")
        if not isinstance(t, str):
            raise _bad(f"'{pp}.text' must be a string", f"{pp}.text")
        out.append(TextPart(t))
    return out


def _image(p: dict[str, Any], param: str) -> ImagePart:
    iu = p.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu  # some clients send a bare string
    if not isinstance(url, str) or not url:
        raise _bad(f"'{param}.image_url.url' must be a string", f"{param}.image_url.url")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        if not sep or not head.endswith(";base64"):
            raise _bad(f"'{param}.image_url.url' must be a base64 data URL", f"{param}.image_url")
        return ImagePart(media_type=head[:-7] or "image/png", data=data)
    return ImagePart(url=url)


def _user_parts(content: Any, param: str, dropped: list[str]) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts", param)
    out: list[Part] = []
    for i, p in enumerate(content):
        pp = f"{param}[{i}]"
        if not isinstance(p, dict):
            raise _bad(f"'{pp}' must be an object", pp)
        kind = p.get("type")
        if kind == "text":
            if not isinstance(p.get("text"), str):
                raise _bad(f"'{pp}.text' must be a string", f"{pp}.text")
            out.append(TextPart(p["text"]))
        elif kind == "image_url":
            out.append(_image(p, pp))
        elif isinstance(kind, str):
            # input_audio / file: valid chat parts the IR cannot carry; recorded, not fatal.
            dropped.append(pp)
        else:
            raise _bad(f"'{pp}.type' must be a string", f"{pp}.type")
    return out


def _parse_args(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        v = orjson.loads(raw)
    except orjson.JSONDecodeError:
        v = None
    # Models occasionally emit invalid JSON; keep it verbatim so it round-trips.
    return v if isinstance(v, dict) else {"_raw": raw}


def _tool_call(tc: Any, param: str) -> ToolUsePart:
    if not isinstance(tc, dict):
        raise _bad(f"'{param}' must be an object", param)
    tc_id = tc.get("id")
    if not isinstance(tc_id, str):
        raise _bad(f"'{param}.id' must be a string", f"{param}.id")
    if tc.get("type") == "custom":
        c = tc.get("custom")
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise _bad(f"'{param}.custom.name' must be a string", f"{param}.custom.name")
        inp = c.get("input")
        return ToolUsePart(tc_id, c["name"], inp if isinstance(inp, str) else "", kind="custom")
    fn = tc.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise _bad(f"'{param}.function.name' must be a string", f"{param}.function.name")
    return ToolUsePart(tc_id, fn["name"], _parse_args(fn.get("arguments")))


def _parse_messages(msgs: list[Any], req: ChatRequest, dropped: list[str]) -> list[Message]:
    out: list[Message] = []
    leading = True  # system/developer before the first other message -> req.system
    call_kinds: dict[str, str] = {}  # tool_call id -> "function" | "custom"
    legacy_ids: dict[str, str] = {}  # legacy function_call name -> synthetic id
    results: Message | None = None  # open user message collecting tool results
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"'{p}' must be an object", p)
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            parts = _text_of(content, f"{p}.content")
            if leading:
                req.system.extend(parts)
            else:
                out.append(Message("system", list(parts)))
            results = None
            continue
        leading = False
        if role == "user":
            parts = _user_parts(content, f"{p}.content", dropped)
            if results is not None:
                # User text right after tool results: one IR user turn, results first.
                results.parts.extend(parts)
            else:
                out.append(Message("user", parts))
            results = None
        elif role == "assistant":
            parts = []
            if content is not None:
                parts.extend(_text_of(content, f"{p}.content"))
            refusal = m.get("refusal")
            if isinstance(refusal, str) and refusal:
                parts.append(TextPart(refusal))
            tcs = m.get("tool_calls")
            if tcs is not None:
                if not isinstance(tcs, list):
                    raise _bad(f"'{p}.tool_calls' must be an array", f"{p}.tool_calls")
                for j, tc in enumerate(tcs):
                    tu = _tool_call(tc, f"{p}.tool_calls[{j}]")
                    call_kinds[tu.id] = tu.kind
                    parts.append(tu)
            fc = m.get("function_call")
            if isinstance(fc, dict) and isinstance(fc.get("name"), str):
                fid = f"call_legacy_{i}"
                legacy_ids[fc["name"]] = fid
                parts.append(ToolUsePart(fid, fc["name"], _parse_args(fc.get("arguments"))))
            out.append(Message("assistant", parts))
            results = None
        elif role in ("tool", "function"):
            if role == "tool":
                tid = m.get("tool_call_id")
                if not isinstance(tid, str):
                    raise _bad(f"'{p}.tool_call_id' must be a string", f"{p}.tool_call_id")
            else:
                name = m.get("name")
                if not isinstance(name, str):
                    raise _bad(f"'{p}.name' must be a string", f"{p}.name")
                tid = legacy_ids.get(name, f"call_legacy_{name}")
            tr = ToolResultPart(
                tid,
                list(_text_of(content, f"{p}.content")),
                kind="custom" if call_kinds.get(tid) == "custom" else "function",
            )
            if results is None:
                results = Message("user", [])
                out.append(results)
            results.parts.append(tr)
        else:
            raise _bad(
                f"'{p}.role' must be one of system, developer, user, assistant, tool",
                f"{p}.role",
            )
    return out


def _parse_tools(tools: Any) -> list[Tool]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array", "tools")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict):
            raise _bad(f"'{p}' must be an object", p)
        kind = t.get("type")
        if kind == "function":
            fn = t.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad(f"'{p}.function.name' must be a string", f"{p}.function.name")
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise _bad(f"'{p}.function.parameters' must be an object", f"{p}.function")
            # raw keeps the original so `strict` survives a chat->IR->chat trip.
            out.append(
                Tool(
                    fn["name"],
                    fn.get("description") or "",
                    params or {"type": "object", "properties": {}},
                    raw=t,
                )
            )
        elif kind == "custom":
            c = t.get("custom")
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                raise _bad(f"'{p}.custom.name' must be a string", f"{p}.custom.name")
            out.append(Tool(c["name"], c.get("description") or "", kind="custom", raw=c))
        else:
            out.append(Tool(str(t.get("name", kind)), kind="builtin", raw=t))
    return out


def _parse_tool_choice(tc: Any, extra: dict[str, Any]) -> ToolChoice:
    if isinstance(tc, str):
        modes = {"auto": "auto", "none": "none", "required": "any"}
        if tc not in modes:
            raise _bad("'tool_choice' must be one of auto, none, required", "tool_choice")
        return ToolChoice(modes[tc])  # type: ignore[arg-type]
    if isinstance(tc, dict):
        kind = tc.get("type")
        inner = tc.get(kind) if isinstance(kind, str) else None
        if kind in ("function", "custom") and isinstance(inner, dict):
            if not isinstance(inner.get("name"), str):
                raise _bad(f"'tool_choice.{kind}.name' must be a string", "tool_choice")
            return ToolChoice("tool", inner["name"])
        if kind == "allowed_tools" and isinstance(inner, dict):
            # The IR has no allow-list; keep it for chat upstreams, approximate the mode.
            extra["tool_choice"] = tc
            return ToolChoice("any" if inner.get("mode") == "required" else "auto")
    raise _bad("'tool_choice' has an unsupported shape", "tool_choice")


def _num(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, kind):
        want = "an integer" if kind is int else "a number"
        raise _bad(f"'{key}' must be {want}", key)
    return v


def parse_request(body: dict) -> ChatRequest:
    """A client Chat Completions body -> IR. Raises ``ApiError`` (400) on bad shapes."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("'messages' is required and must be a non-empty array", "messages")
    extra = {k: v for k, v in body.items() if k not in _KNOWN_KEYS}
    req = ChatRequest(model=model, messages=[], source_format="chat", extra=extra)
    dropped: list[str] = []
    req.messages = _parse_messages(msgs, req, dropped)
    if dropped:
        extra["_dropped_parts"] = dropped  # "_" keys are never sent upstream

    tools = body.get("tools")
    if tools is None and body.get("functions") is not None:  # legacy
        fns = body["functions"]
        tools = [{"type": "function", "function": f} for f in fns] if isinstance(fns, list) else fns
    if tools is not None:
        req.tools = _parse_tools(tools)
    tc = body.get("tool_choice")
    if tc is None and isinstance(body.get("function_call"), (str, dict)):  # legacy
        fc = body["function_call"]
        tc = fc if isinstance(fc, str) else {"type": "function", "function": fc}
    if tc is not None:
        req.tool_choice = _parse_tool_choice(tc, extra)
    ptc = body.get("parallel_tool_calls")
    if ptc is not None:
        if not isinstance(ptc, bool):
            raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
        req.tool_choice = req.tool_choice or ToolChoice()
        req.tool_choice.parallel = ptc

    mct = _num(body, "max_completion_tokens", int)
    req.max_tokens = mct if mct is not None else _num(body, "max_tokens", int)
    req.temperature = _num(body, "temperature", (int, float))
    req.top_p = _num(body, "top_p", (int, float))
    stop = body.get("stop")
    if isinstance(stop, str):
        req.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        req.stop = list(stop)
    elif stop is not None:
        raise _bad("'stop' must be a string or an array of strings", "stop")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")
    req.stream = bool(stream)
    for key in ("reasoning_effort", "prompt_cache_key", "user"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _bad(f"'{key}' must be a string", key)
    req.reasoning_effort = body.get("reasoning_effort")
    req.cache_key = body.get("prompt_cache_key")
    req.user = body.get("user")

    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise _bad("'response_format.json_schema' must be an object", "response_format")
        req.json_schema = {
            "name": js.get("name") or "output",
            "schema": js.get("schema") or {"type": "object"},
            "strict": bool(js.get("strict")),
        }
        del extra["response_format"]
    # json_object / text response_format stay in extra (no IR meaning).
    return req


def client_wants_usage(body: dict) -> bool:
    """Did a chat client ask for the streamed usage chunk (``stream_options.include_usage``)?"""
    so = body.get("stream_options")
    return isinstance(so, dict) and so.get("include_usage") is True


# ---- request: IR -> chat ----------------------------------------------------


def _image_url(p: ImagePart) -> dict[str, Any]:
    url = p.url if p.url else f"data:{p.media_type or 'image/png'};base64,{p.data or ''}"
    return {"type": "image_url", "image_url": {"url": url}}


def _args_json(p: ToolUsePart) -> str:
    if isinstance(p.input, str):
        # custom input travels as {"input": s}; a str on a function call is raw JSON text
        return orjson.dumps({"input": p.input}).decode() if p.kind == "custom" else p.input
    if len(p.input) == 1 and isinstance(p.input.get("_raw"), str):
        return p.input["_raw"]  # unparseable arguments kept verbatim by a decoder
    return orjson.dumps(p.input).decode()


def _content(parts: list[Any]) -> str | list[dict[str, Any]]:
    """Text only -> one string (broadest upstream support); else a parts list."""
    if all(isinstance(p, TextPart) for p in parts):
        return "\n\n".join(p.text for p in parts)
    return [
        {"type": "text", "text": p.text} if isinstance(p, TextPart) else _image_url(p)
        for p in parts
    ]


def _build_messages(req: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": "\n\n".join(p.text for p in req.system)})
    for m in req.messages:
        if m.role == "system":
            out.append(
                {"role": "system", "content": "\n\n".join(
                    p.text for p in m.parts if isinstance(p, TextPart))}
            )  # fmt: skip
        elif m.role == "user":
            rest: list[TextPart | ImagePart] = []
            for p in m.parts:
                if isinstance(p, ToolResultPart):
                    # Tool messages must directly follow the assistant turn, so they go
                    # first. They are text only: images are moved to the user content.
                    texts = [c.text for c in p.content if isinstance(c, TextPart)]
                    rest.extend(c for c in p.content if isinstance(c, ImagePart))
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": p.tool_use_id,
                            "content": "\n\n".join(texts),
                        }
                    )
                elif isinstance(p, TextPart | ImagePart):
                    rest.append(p)
            if rest:
                out.append({"role": "user", "content": _content(rest)})
        else:
            texts = [p.text for p in m.parts if isinstance(p, TextPart)]
            calls = [
                {
                    "id": p.id,
                    "type": "function",
                    "function": {"name": p.name, "arguments": _args_json(p)},
                }
                for p in m.parts
                if isinstance(p, ToolUsePart)
            ]
            msg: dict[str, Any] = {
                "role": "assistant",
                "content": "\n\n".join(texts) if texts or not calls else None,
            }
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
    return out


def _build_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in tools:
        if t.kind == "function":
            fn: dict[str, Any] = {"name": t.name, "parameters": t.input_schema}
            if t.description:
                fn["description"] = t.description
            strict = (t.raw or {}).get("function", {}).get("strict") if t.raw else None
            if isinstance(strict, bool):
                fn["strict"] = strict
            out.append({"type": "function", "function": fn})
        elif t.kind == "custom":
            desc = "Freeform tool: put the whole raw input in the `input` string."
            if t.description:
                desc = f"{t.description}\n\n{desc}"
            out.append(
                {
                    "type": "function",
                    "function": {"name": t.name, "description": desc, "parameters": _CUSTOM_PARAMS},
                }
            )
        # builtin (provider-hosted) tools cannot run on a chat upstream: dropped.
    return out


def build_request(
    req: ChatRequest, model: str, *, stream: bool, max_tokens_field: str = "max_tokens"
) -> dict:
    """IR -> upstream Chat Completions body.

    ``max_tokens_field``: OpenAI's own reasoning models reject ``max_tokens`` and
    want ``max_completion_tokens``; most compatible servers only know ``max_tokens``.
    """
    body: dict[str, Any] = {"model": model, "messages": _build_messages(req)}
    if req.source_format == "chat":
        body.update((k, v) for k, v in req.extra.items() if k not in _OWNED_KEYS and k[0] != "_")
    tools = _build_tools(req.tools)
    if tools:
        body["tools"] = tools
        tc = req.tool_choice
        if tc is not None:
            if tc.mode == "tool" and tc.name:
                body["tool_choice"] = {"type": "function", "function": {"name": tc.name}}
            elif "tool_choice" not in body:  # allowed_tools from extra wins
                body["tool_choice"] = {"any": "required"}.get(tc.mode, tc.mode)
            if tc.parallel is not None:
                body["parallel_tool_calls"] = tc.parallel
    else:
        # OpenAI rejects tool_choice / parallel_tool_calls without tools.
        body.pop("tool_choice", None)
    if req.max_tokens is not None:
        body[max_tokens_field] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = list(req.stop)
    if req.reasoning_effort:
        body["reasoning_effort"] = req.reasoning_effort
    if req.json_schema:
        js = req.json_schema
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": js.get("name") or "output",
                "schema": js.get("schema") or {"type": "object"},
                "strict": bool(js.get("strict")),
            },
        }
    if req.cache_key:
        body["prompt_cache_key"] = req.cache_key
    if req.user:
        body["user"] = req.user
    if stream:
        # The router bills from usage, so always ask for it; the encoder / UsageTap
        # keep it from clients that did not ask.
        so = body.get("stream_options")
        body["stream"] = True
        body["stream_options"] = {**(so if isinstance(so, dict) else {}), "include_usage": True}
    else:
        body.pop("stream_options", None)
    return body


# ---- responses ----------------------------------------------------------------


def _usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    ptd = u.get("prompt_tokens_details") or {}
    ctd = u.get("completion_tokens_details") or {}
    read = ptd.get("cached_tokens")
    if read is None:  # DeepSeek reports hits at the top level
        read = u.get("prompt_cache_hit_tokens")
    read = int(read or 0)
    write = int(ptd.get("cache_write_tokens") or 0)
    prompt = int(u.get("prompt_tokens") or 0)
    return Usage(
        input_tokens=max(prompt - read - write, 0),
        output_tokens=int(u.get("completion_tokens") or 0),
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=int(ctd.get("reasoning_tokens") or 0),
    )


def _usage_json(u: Usage) -> dict[str, Any]:
    prompt = u.prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            # chat has no TTL split: 1h writes are reported as writes
            "cache_write_tokens": u.cache_write_tokens + u.cache_write_1h_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def usage_from_response(body: dict) -> Usage:
    """IR usage from a chat.completion body (or any chunk carrying ``usage``)."""
    return _usage(body.get("usage"))


def _reasoning_text(d: dict[str, Any]) -> Any:
    # DeepSeek / vLLM use reasoning_content; OpenRouter and newer vLLM use reasoning.
    r = d.get("reasoning_content")
    return r if r is not None else d.get("reasoning")


def _unwrap_custom(args: str) -> str:
    """``{"input": s}`` (how custom tools travel over chat) -> s; else the text as is."""
    try:
        v = orjson.loads(args)
    except orjson.JSONDecodeError:
        return args
    return v["input"] if isinstance(v, dict) and isinstance(v.get("input"), str) else args


def parse_response(body: dict, custom_tools: frozenset[str] = frozenset()) -> ChatResponse:
    """An upstream chat.completion body -> IR. ``custom_tools`` as for ``StreamDecoder``."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ApiError(ErrorKind.upstream_unavailable, "upstream response has no choices")
    ch = choices[0]
    msg = ch.get("message") or {}
    parts: list[Part] = []
    reasoning = _reasoning_text(msg)
    if isinstance(reasoning, str) and reasoning:
        parts.append(ThinkingPart(text=reasoning, origin="openai"))
    content = msg.get("content")
    if isinstance(content, str) and content:
        parts.append(TextPart(content))
    elif isinstance(content, list):
        parts.extend(_text_of(content, "content"))
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(TextPart(refusal))
    for j, tc in enumerate(msg.get("tool_calls") or []):
        tu = _tool_call(tc, f"choices[0].message.tool_calls[{j}]")
        if tu.kind == "function" and tu.name in custom_tools:
            raw = (tc.get("function") or {}).get("arguments")
            tu = ToolUsePart(tu.id, tu.name, _unwrap_custom(raw if isinstance(raw, str) else ""),
                             kind="custom")  # fmt: skip
        parts.append(tu)
    fc = msg.get("function_call")
    if isinstance(fc, dict) and isinstance(fc.get("name"), str):
        parts.append(ToolUsePart("call_legacy_0", fc["name"], _parse_args(fc.get("arguments"))))
    stop = _FINISH_TO_STOP.get(ch.get("finish_reason") or "stop", "end_turn")
    if isinstance(refusal, str) and refusal:
        stop = "refusal"
    return ChatResponse(
        id=str(body.get("id") or _new_id()),
        model=str(body.get("model") or ""),
        parts=parts,
        stop_reason=stop,
        usage=usage_from_response(body),
    )


def _new_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def _chat_id(src: str | None) -> str:
    if src and src.startswith("chatcmpl-"):
        return src
    return f"chatcmpl-{src}" if src else _new_id()


def build_response(resp: ChatResponse, model: str) -> dict:
    """IR -> the chat.completion object a chat client expects."""
    texts = [p.text for p in resp.parts if isinstance(p, TextPart)]
    thinking = [p.text for p in resp.parts if isinstance(p, ThinkingPart) and p.text]
    calls = [
        {
            "id": p.id,
            "type": "function",
            "function": {"name": p.name, "arguments": _args_json(p)},
        }
        for p in resp.parts
        if isinstance(p, ToolUsePart)
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "\n\n".join(texts) if texts else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = calls
    if thinking:
        # Non-standard but what DeepSeek-style clients (Aider) display; SDKs ignore it.
        message["reasoning_content"] = "\n\n".join(thinking)
    return {
        "id": _chat_id(resp.id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _STOP_TO_FINISH.get(resp.stop_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": _usage_json(resp.usage),
        "system_fingerprint": None,
    }


# ---- streaming: upstream chat SSE -> IR ------------------------------------------


def _stream_error(err: Any) -> StreamError:
    if not isinstance(err, dict):
        return StreamError(500, ErrorKind.api_error.value, str(err))
    msg = str(err.get("message") or "upstream stream error")
    code, etype = err.get("code"), str(err.get("type") or "")
    if isinstance(code, int) and not isinstance(code, bool):
        kind = kind_for_status(code)
        return StreamError(code, kind.value, msg)
    tag = f"{code} {etype}"
    if "rate_limit" in tag:
        return StreamError(429, ErrorKind.rate_limit.value, msg)
    if "overloaded" in tag:
        return StreamError(529, ErrorKind.overloaded.value, msg)
    if "context_length" in tag or "invalid_request" in tag:
        return StreamError(400, ErrorKind.invalid_request.value, msg)
    return StreamError(500, ErrorKind.api_error.value, msg)


@dataclass(slots=True)
class StreamDecoder:
    """Upstream ``chat.completion.chunk`` SSE -> IR stream events.

    ``custom_tools``: names of request tools with ``kind="custom"``, which
    ``build_request`` wrapped as ``{"input": str}`` functions. Their arguments are
    buffered and unwrapped back to the raw string (one delta, at block end).
    """

    custom_tools: frozenset[str] = frozenset()
    started: bool = False
    ended: bool = False
    next_index: int = 0
    open_index: int | None = None
    open_kind: str | None = None
    tools: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # oa idx -> (blk, id)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    wrapped: list[str] | None = None  # argument fragments of an open wrapped-custom call

    def _close(self, out: list[StreamEvent]) -> None:
        if self.open_index is not None:
            if self.wrapped is not None:
                s = _unwrap_custom("".join(self.wrapped))
                if s:
                    out.append(BlockDelta(self.open_index, json=s))
                self.wrapped = None
            out.append(BlockStop(self.open_index))
            self.open_index = self.open_kind = None

    def _open(self, out: list[StreamEvent], start: BlockStart) -> None:
        self._close(out)
        out.append(start)
        self.open_index, self.open_kind = start.index, start.kind
        self.next_index += 1

    def _end(self, out: list[StreamEvent]) -> None:
        self._close(out)
        stop = _FINISH_TO_STOP.get(self.finish_reason or "stop", "end_turn")
        if self.finish_reason is None and self.tools:
            stop = "tool_use"
        out.append(MessageEnd(stop, self.usage))
        self.ended = True

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        if self.ended:
            return []
        out: list[StreamEvent] = []
        if data.strip() == b"[DONE]":
            if not self.started:
                out.append(MessageStart(_new_id(), ""))
                self.started = True
            self._end(out)
            return out
        if not data.strip():
            return out
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.ended = True
            return [
                StreamError(502, ErrorKind.upstream_unavailable.value, "malformed upstream chunk")
            ]
        if not isinstance(chunk, dict):
            return out
        if chunk.get("error") is not None:
            self.ended = True
            return [_stream_error(chunk["error"])]
        if not self.started:
            self.started = True
            out.append(
                MessageStart(str(chunk.get("id") or _new_id()), str(chunk.get("model") or ""))
            )
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for ch in chunk.get("choices") or ():
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue  # n>1: only the first choice is translated
            delta = ch.get("delta") or {}
            self._delta(delta, out)
            if ch.get("finish_reason"):
                self.finish_reason = ch["finish_reason"]
        return out

    def _delta(self, d: dict[str, Any], out: list[StreamEvent]) -> None:
        r = _reasoning_text(d)
        if isinstance(r, str) and r:
            if self.open_kind != "thinking":
                self._open(out, BlockStart(self.next_index, "thinking"))
            out.append(BlockDelta(self.open_index, thinking=r))  # type: ignore[arg-type]
        for key in ("content", "refusal"):
            t = d.get(key)
            if isinstance(t, str) and t:
                if key == "refusal":
                    self.finish_reason = self.finish_reason or "content_filter"
                if self.open_kind != "text":
                    self._open(out, BlockStart(self.next_index, "text"))
                out.append(BlockDelta(self.open_index, text=t))  # type: ignore[arg-type]
        for tc in d.get("tool_calls") or ():
            if isinstance(tc, dict):
                self._tool_delta(tc, out)

    def _tool_delta(self, tc: dict[str, Any], out: list[StreamEvent]) -> None:
        oi = tc.get("index", 0)
        custom = tc.get("type") == "custom" or "custom" in tc
        fn = (tc.get("custom") if custom else tc.get("function")) or {}
        tid, name = tc.get("id"), fn.get("name")
        known = self.tools.get(oi)
        # A new call: unseen index, or (providers that reuse index 0) a different id.
        if known is None or (tid and known[1] and tid != known[1]):
            blk = self.next_index
            wrapped = not custom and name in self.custom_tools
            self._open(
                out,
                BlockStart(
                    blk,
                    "tool_use",
                    tool_id=tid or f"call_{secrets.token_hex(8)}",
                    tool_name=name or "",
                    tool_kind="custom" if custom or wrapped else "function",
                ),
            )
            self.tools[oi] = (blk, tid)
            if wrapped:
                self.wrapped = []
        else:
            blk = known[0]
        frag = fn.get("input") if custom else fn.get("arguments")
        if isinstance(frag, str) and frag:
            if self.wrapped is not None and blk == self.open_index:
                self.wrapped.append(frag)
                return
            # OpenAI streams parallel calls one after another; a fragment for an
            # earlier call would be out of order and is still attributed to it.
            out.append(BlockDelta(blk, json=frag))

    def finish(self) -> list[StreamEvent]:
        """Upstream closed. Complete the message if it had finished, else report an error."""
        if self.ended:
            return []
        if self.finish_reason is not None:
            out: list[StreamEvent] = []
            self._end(out)
            return out
        self.ended = True
        return [
            StreamError(
                502, ErrorKind.upstream_unavailable.value, "upstream stream ended before completion"
            )
        ]


# ---- streaming: IR -> chat SSE for a chat client -----------------------------------


class StreamEncoder:
    """IR stream events -> ``chat.completion.chunk`` SSE bytes, shaped like OpenAI's.

    Thinking is sent as ``delta.reasoning_content`` (DeepSeek style): the openai SDK
    ignores it, Aider shows it.
    """

    __slots__ = (
        "_created",
        "_done",
        "_ended",
        "_id",
        "_include_usage",
        "_model",
        "_text_seen",
        "_tool_idx",
        "_tool_kind",
        "_tool_n",
    )  # fmt: skip

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage
        self._id = _new_id()
        self._created = int(time.time())
        self._tool_idx: dict[int, int] = {}  # IR block index -> tool_calls index
        self._tool_kind: dict[int, str] = {}
        self._tool_n = 0
        self._text_seen = False
        self._ended = False
        self._done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        c: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            c["usage"] = None  # OpenAI sends usage:null on every chunk when asked
        return encode_event(c)

    def encode(self, ev: StreamEvent) -> bytes:
        if self._ended:
            return b""
        if isinstance(ev, BlockDelta):  # most frequent first
            if ev.text:
                return self._chunk({"content": ev.text})
            if ev.json is not None and ev.index in self._tool_idx:
                if not ev.json:
                    return b""
                k = self._tool_idx[ev.index]
                key, sub = ("custom", "input") if self._tool_kind[ev.index] == "custom" else (
                    "function", "arguments")  # fmt: skip
                return self._chunk({"tool_calls": [{"index": k, key: {sub: ev.json}}]})
            if ev.thinking:
                return self._chunk({"reasoning_content": ev.thinking})
            return b""
        if isinstance(ev, MessageStart):
            if ev.id:
                self._id = _chat_id(ev.id)
            return self._chunk({"role": "assistant", "content": "", "refusal": None})
        if isinstance(ev, BlockStart):
            if ev.kind == "tool_use":
                k = self._tool_n
                self._tool_n += 1
                self._tool_idx[ev.index] = k
                # Custom tools only reach a chat client if it declared them (chat supports
                # custom tools); otherwise decoders report them as functions.
                self._tool_kind[ev.index] = ev.tool_kind
                if ev.tool_kind == "custom":
                    call = {"index": k, "id": ev.tool_id, "type": "custom",
                            "custom": {"name": ev.tool_name, "input": ""}}  # fmt: skip
                else:
                    call = {"index": k, "id": ev.tool_id, "type": "function",
                            "function": {"name": ev.tool_name, "arguments": ""}}  # fmt: skip
                return self._chunk({"tool_calls": [call]})
            if ev.kind == "text" and self._text_seen:
                return self._chunk({"content": "\n\n"})  # separate text blocks, as build_response
            if ev.kind == "text":
                self._text_seen = True
            return b""
        if isinstance(ev, BlockStop):
            return b""
        if isinstance(ev, MessageEnd):
            self._ended = True
            out = self._chunk({}, _STOP_TO_FINISH.get(ev.stop_reason, "stop"))
            if self._include_usage:
                out += encode_event(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": self._model,
                        "choices": [],
                        "usage": _usage_json(ev.usage),
                    }
                )
            return out
        if isinstance(ev, StreamError):
            self._ended = True
            try:
                kind = ErrorKind(ev.kind)
            except ValueError:
                kind = ErrorKind.api_error
            return encode_event(error_body("chat", ApiError(kind, ev.message, status=ev.status)))
        return b""

    def finish(self) -> bytes:
        """The terminating ``data: [DONE]`` (once)."""
        if self._done:
            return b""
        self._done = True
        return DONE


# ---- same-format passthrough: usage only -----------------------------------------


class UsageTap:
    """Watches a chat SSE stream passed through verbatim, parsing only what bills.

    Most chunks are content deltas; they are skipped with a substring test.
    """

    __slots__ = ("done", "error", "stop_reason", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, event: str | None, data: bytes) -> None:
        if data[:6] == b"[DONE]":
            self.done = True
            return
        has_usage = b'"usage":{' in data or b'"usage": {' in data
        has_finish = b'"finish_reason":"' in data or b'"finish_reason": "' in data
        has_error = data[:9] == b'{"error":' or data[:10] == b'{"error": '
        if not (has_usage or has_finish or has_error):
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        if chunk.get("error") is not None:
            err = chunk["error"]
            self.error = str(err.get("message") if isinstance(err, dict) else err)
            return
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for ch in chunk.get("choices") or ():
            if isinstance(ch, dict) and ch.get("finish_reason"):
                self.stop_reason = _FINISH_TO_STOP.get(ch["finish_reason"], "end_turn")

    @staticmethod
    def is_usage_only_chunk(data: bytes) -> bool:
        """The final ``{"choices":[],"usage":{...}}`` chunk (drop it for clients that
        did not ask for usage)."""
        if b'"usage"' not in data:
            return False
        return b'"choices":[]' in data or b'"choices": []' in data
