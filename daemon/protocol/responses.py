"""OpenAI Responses API codec: wire bodies and SSE <-> the internal representation.

Codex CLI speaks only this API, so the client-facing side (``parse_request``,
``build_response``, ``StreamEncoder``) follows what OpenAI itself sends,
event for event; the upstream side (``build_request``, ``parse_response``,
``StreamDecoder``) serves Anthropic/Chat clients routed to a Responses model.
Same-format traffic never comes here except for ``UsageTap``, which reads usage
off a passed-through stream.

Usage mapping: Responses ``input_tokens`` is the whole prompt, including
``input_tokens_details.cached_tokens`` (cache reads) and ``cache_write_tokens``;
the IR keeps only the uncached rest in ``Usage.input_tokens``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import orjson

from switchman_daemon.errors import ApiError, ErrorKind
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
from switchman_daemon.protocol.sse import SSEParser

__all__ = [
    "StreamDecoder",
    "StreamEncoder",
    "UsageTap",
    "build_request",
    "build_response",
    "parse_request",
    "parse_response",
    "usage_from_response",
]

# Body fields with no IR meaning, kept in ``req.extra`` and re-emitted only when
# the request came from a Responses client. ``store`` is kept for the record but
# never re-emitted: the router always sends ``store: false``.
_EXTRA_FIELDS = (
    "store",
    "include",
    "client_metadata",
    "metadata",
    "previous_response_id",
    "service_tier",
    "truncation",
    "prompt_cache_retention",
    "safety_identifier",
    "max_tool_calls",
    "top_logprobs",
    "background",
    "conversation",
    "prompt",
)
_NO_REEMIT = frozenset({"store"})

# Hosted tool types OpenAI accepts in ``tools``. Anthropic server tools
# (``web_search_20250305``, ``bash_20250124``...) also land in Tool(kind="builtin")
# and must not be sent here.
_OPENAI_BUILTINS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "computer",
        "computer_use",
        "computer_use_preview",
        "code_interpreter",
        "image_generation",
        "local_shell",
        "shell",
        "apply_patch",
        "mcp",
        "tool_search",
    }
)

_SYSTEM_ROLES = frozenset({"system", "developer"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_ENCRYPTED_INCLUDE = "reasoning.encrypted_content"
_BILLING_HEADER = "x-anthropic-billing-header:"
_MIN_OUTPUT_TOKENS = 16  # OpenAI rejects max_output_tokens < 16


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _err(msg: str, param: str | None) -> ApiError:
    return ApiError(ErrorKind.invalid_request, msg, param=param)


# ---- usage --------------------------------------------------------------------


def _usage_from_dict(u: dict[str, Any] | None) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    total_in = int(u.get("input_tokens") or 0)
    in_d = u.get("input_tokens_details") or {}
    out_d = u.get("output_tokens_details") or {}
    cached = int(in_d.get("cached_tokens") or 0)
    written = int(in_d.get("cache_write_tokens") or 0)
    return Usage(
        input_tokens=max(0, total_in - cached - written),
        output_tokens=int(u.get("output_tokens") or 0),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=int(out_d.get("reasoning_tokens") or 0),
    )


def usage_from_response(body: dict) -> Usage:
    """IR usage from a Responses object (or from its ``usage`` dict itself)."""
    if "usage" in body or "output" in body:
        return _usage_from_dict(body.get("usage"))
    return _usage_from_dict(body)


def _usage_dict(u: Usage) -> dict[str, Any]:
    prompt = u.prompt_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens + u.cache_write_1h_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": prompt + u.output_tokens,
    }


# ---- request: Responses body -> IR ---------------------------------------------


def _parse_image(c: dict[str, Any]) -> ImagePart | None:
    url = c.get("image_url")
    if isinstance(url, dict):  # chat-style {"url": ...} seen from lenient clients
        url = url.get("url")
    if not isinstance(url, str) or not url:
        return None  # file_id-only images reference OpenAI storage: nothing to forward
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return ImagePart(media_type=head or None, data=data)
    return ImagePart(url=url)


def _parse_content(content: Any, param: str) -> list[TextPart | ImagePart]:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise _err(f"'{param}' must be a string or an array of content parts.", param)
    parts: list[TextPart | ImagePart] = []
    for j, c in enumerate(content):
        if not isinstance(c, dict):
            raise _err(f"'{param}[{j}]' must be an object.", f"{param}[{j}]")
        t = c.get("type")
        if t in ("input_text", "output_text", "text", "summary_text"):
            text = c.get("text")
            if not isinstance(text, str):
                raise _err(f"'{param}[{j}].text' must be a string.", f"{param}[{j}].text")
            parts.append(TextPart(text))
        elif t == "refusal":
            parts.append(TextPart(str(c.get("refusal") or "")))
        elif t == "input_image":
            img = _parse_image(c)
            if img is not None:
                parts.append(img)
        # input_file / input_audio: no IR equivalent; dropped.
    return parts


def _loads_args(s: Any) -> dict[str, Any]:
    if isinstance(s, dict):
        return s
    if not isinstance(s, str) or not s.strip():
        return {}
    try:
        v = orjson.loads(s)
    except orjson.JSONDecodeError:
        return {"_raw_arguments": s}  # model produced broken JSON; keep it visible
    return v if isinstance(v, dict) else {"_raw_arguments": s}


def _tool_output(out: Any) -> tuple[list[TextPart | ImagePart], bool]:
    if isinstance(out, str):
        return [TextPart(out)], False
    if isinstance(out, list):
        return _parse_content(out, "output"), False
    if isinstance(out, dict):  # older Codex payload {"content": ..., "success": bool}
        parts, _ = _tool_output(out.get("content", ""))
        return parts, out.get("success") is False
    return [TextPart("" if out is None else str(out))], False


def _parse_tools(tools: Any) -> tuple[list[Tool], dict[str, bool]]:
    if tools is None:
        return [], {}
    if not isinstance(tools, list):
        raise _err("'tools' must be an array.", "tools")
    out: list[Tool] = []
    strict: dict[str, bool] = {}
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise _err(f"'tools[{i}]' must be an object.", f"tools[{i}]")
        typ = t.get("type")
        if typ in ("function", "custom"):
            name = t.get("name")
            if not isinstance(name, str) or not name:
                raise _err(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name")
            if typ == "function":
                params = t.get("parameters")
                out.append(
                    Tool(
                        name=name,
                        description=t.get("description") or "",
                        input_schema=params if isinstance(params, dict) else {"type": "object"},
                    )
                )
                if isinstance(t.get("strict"), bool):
                    strict[name] = t["strict"]
            else:
                out.append(
                    Tool(name=name, description=t.get("description") or "", kind="custom", raw=t)
                )
        elif isinstance(typ, str):
            out.append(Tool(name=typ, kind="builtin", raw=t))
        else:
            raise _err(f"Missing required parameter: 'tools[{i}].type'.", f"tools[{i}].type")
    return out, strict


def _parse_tool_choice(tc: Any, parallel: Any, extra: dict[str, Any]) -> ToolChoice | None:
    par = parallel if isinstance(parallel, bool) else None
    if tc is None:
        return ToolChoice(parallel=par) if par is not None else None
    if isinstance(tc, str):
        modes = {"auto": "auto", "none": "none", "required": "any"}
        if tc not in modes:
            raise _err(f"Invalid value for 'tool_choice': {tc!r}.", "tool_choice")
        return ToolChoice(mode=modes[tc], parallel=par)  # type: ignore[arg-type]
    if isinstance(tc, dict):
        if tc.get("type") in ("function", "custom") and isinstance(tc.get("name"), str):
            return ToolChoice(mode="tool", name=tc["name"], parallel=par)
        # allowed_tools, hosted-tool choices, mcp: no IR form; same-family only.
        extra["tool_choice"] = tc
        return ToolChoice(parallel=par)
    raise _err("'tool_choice' must be a string or an object.", "tool_choice")


def parse_request(body: dict) -> ChatRequest:
    """A Responses request body as the IR. Raises ``ApiError`` on malformed input."""
    if not isinstance(body, dict):
        raise _err("Request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _err("Missing required parameter: 'model'.", "model")

    extra: dict[str, Any] = {k: body[k] for k in _EXTRA_FIELDS if k in body}
    system: list[TextPart] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            system.append(TextPart(instructions))
    elif instructions is not None:
        raise _err("'instructions' must be a string.", "instructions")

    inp = body.get("input")
    if inp is None:
        raise _err("Missing required parameter: 'input'.", "input")
    if isinstance(inp, str):
        items: list[Any] = [{"type": "message", "role": "user", "content": inp}]
    elif isinstance(inp, list):
        items = inp
    else:
        raise _err("'input' must be a string or an array of input items.", "input")

    messages: list[Message] = []
    unmapped: list[list[Any]] = []
    leading = True  # still in the run of system/developer items at the start
    # Which message the last item was merged into, to merge consecutive assistant
    # items (reasoning + text + calls = one turn) and consecutive tool outputs.
    tail: str | None = None

    def _assistant() -> Message:
        nonlocal tail
        if tail != "assistant":
            messages.append(Message("assistant", []))
            tail = "assistant"
        return messages[-1]

    for i, item in enumerate(items):
        p = f"input[{i}]"
        if not isinstance(item, dict):
            raise _err(f"'{p}' must be an object.", p)
        typ = item.get("type", "message")
        if typ == "message":
            role = item.get("role")
            # isinstance first: a list or dict role is unhashable (fuzz-found TypeError)
            if not isinstance(role, str) or role not in _ROLES:
                raise _err(f"Invalid value for '{p}.role': {role!r}.", f"{p}.role")
            parts = _parse_content(item.get("content"), f"{p}.content")
            if role in _SYSTEM_ROLES:
                texts = [x for x in parts if isinstance(x, TextPart)]
                if leading:
                    system.extend(texts)
                else:
                    messages.append(Message("system", list(texts)))
                    tail = "system"
                continue
            leading = False
            if role == "assistant":
                _assistant().parts.extend(parts)
            else:
                messages.append(Message("user", list(parts)))
                tail = "user"
            continue
        leading = False
        if typ in ("function_call", "custom_tool_call"):
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise _err(f"Missing required parameter: '{p}.call_id'.", f"{p}.call_id")
            if not isinstance(name, str) or not name:
                raise _err(f"Missing required parameter: '{p}.name'.", f"{p}.name")
            if typ == "function_call":
                part = ToolUsePart(id=call_id, name=name, input=_loads_args(item.get("arguments")))
            else:
                raw = item.get("input")
                part = ToolUsePart(
                    id=call_id, name=name, input=raw if isinstance(raw, str) else "", kind="custom"
                )
            _assistant().parts.append(part)
        elif typ in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _err(f"Missing required parameter: '{p}.call_id'.", f"{p}.call_id")
            content, is_error = _tool_output(item.get("output"))
            res = ToolResultPart(
                tool_use_id=call_id,
                content=content,
                is_error=is_error,
                kind="function" if typ == "function_call_output" else "custom",
            )
            if tail != "tool_results":
                messages.append(Message("user", []))
                tail = "tool_results"
            messages[-1].parts.append(res)
        elif typ == "reasoning":
            summary = item.get("summary") or []
            text = "\n\n".join(
                s.get("text", "") for s in summary if isinstance(s, dict) and s.get("text")
            )
            _assistant().parts.append(
                ThinkingPart(
                    text=text,
                    encrypted=item.get("encrypted_content"),
                    id=item.get("id"),
                    origin="openai",
                )
            )
        else:
            # web_search_call, tool_search_call/_output, local_shell_call, compaction,
            # item_reference...: no IR form. Kept, anchored before the next IR
            # message, so a Responses encoder can put them back in place; other
            # formats never see them.
            unmapped.append([len(messages), item])
            tail = None  # nothing merges across it, so the anchor stays exact

    if unmapped:
        extra["unmapped_items"] = unmapped

    tools, strict = _parse_tools(body.get("tools"))
    if strict:
        extra["tool_strict"] = strict
    tool_choice = _parse_tool_choice(
        body.get("tool_choice"), body.get("parallel_tool_calls"), extra
    )

    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _err("'max_output_tokens' must be a positive integer.", "max_output_tokens")
    for k in ("temperature", "top_p"):
        v = body.get(k)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise _err(f"'{k}' must be a number.", k)

    effort = None
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _err("'reasoning' must be an object.", "reasoning")
        effort = reasoning.get("effort")
        if reasoning.get("summary") is not None:
            extra["reasoning_summary"] = reasoning["summary"]

    json_schema = None
    text = body.get("text")
    if isinstance(text, dict):
        fmt = text.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            json_schema = {
                "name": fmt.get("name") or "response",
                "schema": fmt.get("schema") or {},
                "strict": fmt.get("strict"),
            }
        elif isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
            extra["text_format"] = fmt  # json_object: no IR field
        if text.get("verbosity") is not None:
            extra["verbosity"] = text["verbosity"]

    return ChatRequest(
        model=model,
        messages=messages,
        system=system,
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=max_tokens,
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stream=bool(body.get("stream", False)),
        reasoning_effort=effort,
        json_schema=json_schema,
        cache_key=body.get("prompt_cache_key"),
        user=body.get("user"),
        extra=extra,
        source_format="responses",
    )


# ---- request: IR -> Responses upstream body --------------------------------------


def _image_item(p: ImagePart) -> dict[str, Any] | None:
    if p.data is not None:
        url = f"data:{p.media_type or 'image/png'};base64,{p.data}"
    elif p.url:
        url = p.url
    else:
        return None
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _input_content(parts: Iterable[TextPart | ImagePart]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "input_text", "text": p.text})
        else:
            img = _image_item(p)
            if img is not None:
                out.append(img)
    return out


def _tool_output_value(parts: list[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts)  # type: ignore[union-attr]
    return _input_content(parts)


def _custom_input(inp: dict[str, Any] | str) -> str:
    # Formats without custom tools carry a freeform call as {"input": "<string>"}.
    if isinstance(inp, str):
        return inp
    if isinstance(inp.get("input"), str):
        return inp["input"]
    return orjson.dumps(inp).decode()


def _arguments(inp: dict[str, Any] | str) -> str:
    return inp if isinstance(inp, str) else orjson.dumps(inp).decode()


def _message_items(req: ChatRequest) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kinds = {p.id: p.kind for m in req.messages for p in m.parts if isinstance(p, ToolUsePart)}
    # items parse_request could not map, keyed by the IR message they preceded
    anchored: dict[int, list[dict[str, Any]]] = {}
    if req.source_format == "responses":
        for pos, item in req.extra.get("unmapped_items", ()):
            anchored.setdefault(pos, []).append(item)
    for k, m in enumerate(req.messages):
        items.extend(anchored.pop(k, ()))
        if m.role == "system":
            content = _input_content(p for p in m.parts if isinstance(p, TextPart))
            if content:
                items.append({"type": "message", "role": "developer", "content": content})
            continue
        if m.role == "user":
            pending: list[TextPart | ImagePart] = []

            def flush(pending: list[TextPart | ImagePart] = pending) -> None:
                if pending:
                    content = _input_content(pending)
                    if content:
                        items.append({"type": "message", "role": "user", "content": content})
                    pending.clear()

            for p in m.parts:
                if isinstance(p, TextPart | ImagePart):
                    pending.append(p)
                elif isinstance(p, ToolResultPart):
                    flush()
                    kind = kinds.get(p.tool_use_id, p.kind)
                    items.append(
                        {
                            "type": "function_call_output"
                            if kind == "function"
                            else "custom_tool_call_output",
                            "call_id": p.tool_use_id,
                            "output": _tool_output_value(p.content),
                        }
                    )
            flush()
            continue
        # assistant: text runs become one message item; calls and reasoning split it
        texts: list[dict[str, Any]] = []

        def flush_text(texts: list[dict[str, Any]] = texts) -> None:
            if texts:
                items.append({"type": "message", "role": "assistant", "content": list(texts)})
                texts.clear()

        for p in m.parts:
            if isinstance(p, TextPart):
                if p.text:
                    texts.append({"type": "output_text", "text": p.text, "annotations": []})
            elif isinstance(p, ToolUsePart):
                flush_text()
                if p.kind == "custom":
                    items.append(
                        {
                            "type": "custom_tool_call",
                            "call_id": p.id,
                            "name": p.name,
                            "input": _custom_input(p.input),
                        }
                    )
                else:
                    items.append(
                        {
                            "type": "function_call",
                            "call_id": p.id,
                            "name": p.name,
                            "arguments": _arguments(p.input),
                        }
                    )
            # Only OpenAI's own encrypted reasoning can be replayed; Anthropic
            # signatures and plain reasoning text mean nothing to this API.
            elif isinstance(p, ThinkingPart) and p.origin == "openai" and p.encrypted:
                flush_text()
                item: dict[str, Any] = {"type": "reasoning"}
                if p.id:
                    item["id"] = p.id
                item["summary"] = [{"type": "summary_text", "text": p.text}] if p.text else []
                item["encrypted_content"] = p.encrypted
                items.append(item)
            # images in assistant turns have no Responses form: dropped
        flush_text()
    for rest in anchored.values():  # anchored after the last message
        items.extend(rest)
    return items


def _tool_defs(req: ChatRequest) -> list[dict[str, Any]]:
    strict = req.extra.get("tool_strict", {}) if req.source_format == "responses" else {}
    out: list[dict[str, Any]] = []
    for t in req.tools:
        if t.kind == "function":
            d: dict[str, Any] = {"type": "function", "name": t.name}
            if t.description:
                d["description"] = t.description
            d["parameters"] = t.input_schema
            # Responses defaults strict to true, which rejects ordinary schemas.
            d["strict"] = strict.get(t.name, False)
            out.append(d)
        elif t.kind == "custom":
            if t.raw is not None and t.raw.get("type") == "custom":
                out.append(t.raw)
            else:
                d = {"type": "custom", "name": t.name}
                if t.description:
                    d["description"] = t.description
                out.append(d)
        elif (
            t.raw is not None
            and "input_schema" not in t.raw
            and t.raw.get("type") in _OPENAI_BUILTINS
        ):
            out.append(t.raw)
    return out


def build_request(req: ChatRequest, model: str, *, stream: bool) -> dict:
    """An upstream Responses body for ``req``, addressed to ``model``."""
    items: list[dict[str, Any]] = []
    # System as a leading developer message rather than ``instructions``: this is
    # where Codex puts it, so the cached prefix looks the same either way.
    sys_texts = [p.text for p in req.system if p.text and not p.text.startswith(_BILLING_HEADER)]
    if sys_texts:
        items.append(
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": t} for t in sys_texts],
            }
        )
    items.extend(_message_items(req))

    same = req.source_format == "responses"
    body: dict[str, Any] = {"model": model, "input": items, "stream": stream, "store": False}
    tools = _tool_defs(req)
    if tools:
        body["tools"] = tools
    tc = req.tool_choice
    if tc is not None:
        if tools:
            if same and "tool_choice" in req.extra:
                body["tool_choice"] = req.extra["tool_choice"]
            elif tc.mode == "tool" and tc.name:
                kind = next((t.kind for t in req.tools if t.name == tc.name), "function")
                body["tool_choice"] = {
                    "type": "custom" if kind == "custom" else "function",
                    "name": tc.name,
                }
            else:
                body["tool_choice"] = {"auto": "auto", "none": "none", "any": "required"}.get(
                    tc.mode, "auto"
                )
        if tc.parallel is not None:
            body["parallel_tool_calls"] = tc.parallel
    if req.max_tokens is not None:
        body["max_output_tokens"] = max(req.max_tokens, _MIN_OUTPUT_TOKENS)
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    # Responses has no stop sequences: req.stop is dropped.

    include: list[str] = []
    if same and isinstance(req.extra.get("include"), list):
        include = list(req.extra["include"])
    if req.reasoning_effort:
        reasoning: dict[str, Any] = {"effort": req.reasoning_effort}
        if same and req.extra.get("reasoning_summary") is not None:
            reasoning["summary"] = req.extra["reasoning_summary"]
        body["reasoning"] = reasoning
        # store:false means reasoning survives between turns only if encrypted
        if req.reasoning_effort != "none" and _ENCRYPTED_INCLUDE not in include:
            include.append(_ENCRYPTED_INCLUDE)
    if include:
        body["include"] = include

    text: dict[str, Any] = {}
    if req.json_schema is not None:
        fmt: dict[str, Any] = {
            "type": "json_schema",
            "name": req.json_schema.get("name") or "response",
            "schema": req.json_schema.get("schema") or {},
        }
        if req.json_schema.get("strict") is not None:
            fmt["strict"] = req.json_schema["strict"]
        text["format"] = fmt
    elif same and "text_format" in req.extra:
        text["format"] = req.extra["text_format"]
    if same and req.extra.get("verbosity") is not None:
        text["verbosity"] = req.extra["verbosity"]
    if text:
        body["text"] = text
    if req.cache_key:
        body["prompt_cache_key"] = req.cache_key
    if req.user:
        body["user"] = req.user
    if same:
        for k in _EXTRA_FIELDS:
            if k in req.extra and k not in _NO_REEMIT and k not in body:
                body[k] = req.extra[k]
    return body


# ---- response: Responses object <-> IR -------------------------------------------


def _stop_reason(status: Any, incomplete: Any, has_tool: bool, refused: bool) -> StopReason:
    if status == "incomplete":
        reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
        if reason == "max_output_tokens":
            return "max_tokens"
        if reason == "content_filter":
            return "refusal"
        return "end_turn"
    if status == "failed":
        return "error"
    if has_tool:
        return "tool_use"
    return "refusal" if refused else "end_turn"


def parse_response(body: dict) -> ChatResponse:
    """A non-streamed Responses object as the IR."""
    parts: list[Part] = []
    has_tool = refused = False
    for item in body.get("output") or []:
        if not isinstance(item, dict):
            continue
        typ = item.get("type")
        if typ == "message":
            for c in item.get("content") or []:
                if c.get("type") == "output_text":
                    parts.append(TextPart(c.get("text") or ""))
                elif c.get("type") == "refusal":
                    refused = True
                    parts.append(TextPart(c.get("refusal") or ""))
        elif typ == "function_call":
            has_tool = True
            parts.append(
                ToolUsePart(
                    id=item.get("call_id") or item.get("id") or "",
                    name=item.get("name") or "",
                    input=_loads_args(item.get("arguments")),
                )
            )
        elif typ == "custom_tool_call":
            has_tool = True
            parts.append(
                ToolUsePart(
                    id=item.get("call_id") or item.get("id") or "",
                    name=item.get("name") or "",
                    input=item.get("input") or "",
                    kind="custom",
                )
            )
        elif typ == "reasoning":
            summary = item.get("summary") or []
            parts.append(
                ThinkingPart(
                    text="\n\n".join(s.get("text", "") for s in summary if s.get("text")),
                    encrypted=item.get("encrypted_content"),
                    id=item.get("id"),
                    origin="openai",
                )
            )
        # hosted tool calls (web_search_call...) ran upstream; nothing for the client
    return ChatResponse(
        id=body.get("id") or _new_id("resp_"),
        model=body.get("model") or "",
        parts=parts,
        stop_reason=_stop_reason(
            body.get("status"), body.get("incomplete_details"), has_tool, refused
        ),
        usage=usage_from_response(body),
    )


def _is_custom(p: ToolUsePart, custom_tools: frozenset[str]) -> bool:
    return p.kind == "custom" or p.name in custom_tools


def _response_object(
    resp_id: str,
    model: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    *,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": _usage_dict(usage) if usage is not None else None,
        "user": None,
        "metadata": {},
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [_text_part(text)] if status == "completed" else [],
        "role": "assistant",
    }


def _call_item(
    item_id: str, call_id: str, name: str, custom: bool, args: str, status: str
) -> dict[str, Any]:
    if custom:
        return {
            "id": item_id,
            "type": "custom_tool_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "input": args,
        }
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": args,
    }


def _reasoning_item(item_id: str, text: str, encrypted: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if encrypted:
        item["encrypted_content"] = encrypted
    return item


def build_response(resp: ChatResponse, model: str, *, custom_tools: Iterable[str] = ()) -> dict:
    """The Responses object a client receives for ``resp``.

    ``custom_tools``: names the client declared as custom (freeform) tools, so a
    call that came back from a format without them as ``{"input": "..."}`` is
    returned as a ``custom_tool_call``.
    """
    customs = frozenset(custom_tools)
    output: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            item = _message_item(_new_id("msg_"), "", "completed")
            item["content"] = [_text_part(t) for t in texts]
            output.append(item)
            texts.clear()

    for p in resp.parts:
        if isinstance(p, TextPart):
            texts.append(p.text)
        elif isinstance(p, ToolUsePart):
            flush()
            custom = _is_custom(p, customs)
            args = _custom_input(p.input) if custom else _arguments(p.input)
            output.append(
                _call_item(
                    _new_id("ctc_" if custom else "fc_"), p.id, p.name, custom, args, "completed"
                )
            )
        elif isinstance(p, ThinkingPart) and p.origin == "openai" and (p.encrypted or p.id):
            flush()
            output.append(_reasoning_item(p.id or _new_id("rs_"), p.text, p.encrypted))
    flush()
    incomplete = "max_output_tokens" if resp.stop_reason == "max_tokens" else None
    rid = resp.id if resp.id.startswith("resp_") else _new_id("resp_")
    return _response_object(
        rid,
        model,
        int(time.time()),
        "incomplete" if incomplete else "completed",
        output,
        resp.usage,
        incomplete_reason=incomplete,
    )


# ---- streaming: upstream Responses SSE -> IR --------------------------------------

_ERROR_CODE_KIND: dict[str, ErrorKind] = {
    "rate_limit_exceeded": ErrorKind.rate_limit,
    "insufficient_quota": ErrorKind.rate_limit,
    "context_length_exceeded": ErrorKind.invalid_request,
    "invalid_prompt": ErrorKind.invalid_request,
    "server_error": ErrorKind.api_error,
    "server_overloaded": ErrorKind.overloaded,
}


def _stream_error(err: Any, default: str) -> StreamError:
    code = message = None
    if isinstance(err, dict):
        code, message = err.get("code"), err.get("message")
    kind = _ERROR_CODE_KIND.get(code or "", ErrorKind.api_error)
    return StreamError(ApiError(kind, "").status, kind.value, message or default)


class StreamDecoder:
    """Upstream Responses SSE events -> IR stream events."""

    __slots__ = (
        "_acc",
        "_blocks",
        "_done",
        "_has_tool",
        "_kinds",
        "_open",
        "_refused",
        "_started",
        "_summary_idx",
    )

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # output_index -> block index
        self._kinds: dict[int, str] = {}  # block index -> kind
        self._acc: dict[int, int] = {}  # block index -> chars of delta seen
        self._summary_idx: dict[int, int] = {}
        self._open: set[int] = set()
        self._started = False
        self._done = False
        self._has_tool = False
        self._refused = False

    def _start(self, resp: Any) -> list[StreamEvent]:
        if self._started:
            return []
        self._started = True
        r = resp if isinstance(resp, dict) else {}
        return [MessageStart(id=r.get("id") or _new_id("resp_"), model=r.get("model") or "")]

    def _close_all(self) -> list[StreamEvent]:
        evs: list[StreamEvent] = [BlockStop(i) for i in sorted(self._open)]
        self._open.clear()
        return evs

    def _delta(self, d: dict[str, Any], field: str, text: str) -> list[StreamEvent]:
        idx = self._blocks.get(d.get("output_index", -1))
        if idx is None or idx not in self._open or not text:
            return []
        self._acc[idx] = self._acc.get(idx, 0) + len(text)
        return [BlockDelta(idx, **{field: text})]

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        """Decode one SSE event (name, data) into IR events."""
        if self._done or not data or data.strip() == b"[DONE]":
            return []
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(d, dict):
            return []
        typ = d.get("type") or event
        evs: list[StreamEvent] = []
        if typ in ("response.created", "response.in_progress", "response.queued"):
            return self._start(d.get("response"))
        if not self._started and typ != "error":
            evs.extend(self._start(d.get("response")))

        if typ == "response.output_item.added":
            item = d.get("item") or {}
            it = item.get("type")
            idx = len(self._blocks)
            if it == "message":
                start = BlockStart(idx, "text")
            elif it in ("function_call", "custom_tool_call"):
                self._has_tool = True
                start = BlockStart(
                    idx,
                    "tool_use",
                    tool_id=item.get("call_id") or item.get("id"),
                    tool_name=item.get("name"),
                    tool_kind="custom" if it == "custom_tool_call" else "function",
                )
            elif it == "reasoning":
                start = BlockStart(idx, "thinking", item_id=item.get("id"))
            else:
                return evs  # hosted tool items: not part of the client's content
            self._blocks[d.get("output_index", idx)] = idx
            self._kinds[idx] = it
            self._open.add(idx)
            evs.append(start)
            pre = item.get("arguments") or item.get("input") if it != "message" else None
            if isinstance(pre, str) and pre:
                evs.extend(self._delta(d, "json", pre))
        elif typ in ("response.output_text.delta", "response.refusal.delta"):
            self._refused |= typ == "response.refusal.delta"
            evs.extend(self._delta(d, "text", d.get("delta") or ""))
        elif typ in (
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta",
        ):
            evs.extend(self._delta(d, "json", d.get("delta") or ""))
        elif typ in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            idx = self._blocks.get(d.get("output_index", -1))
            si = d.get("summary_index", 0)
            if idx is not None and self._acc.get(idx) and si != self._summary_idx.get(idx, 0):
                evs.extend(self._delta(d, "thinking", "\n\n"))
            if idx is not None:
                self._summary_idx[idx] = si
            evs.extend(self._delta(d, "thinking", d.get("delta") or ""))
        elif typ == "response.output_item.done":
            idx = self._blocks.get(d.get("output_index", -1))
            if idx is None or idx not in self._open:
                return evs
            evs.extend(self._finish_item(idx, d.get("item") or {}, d))
            self._open.discard(idx)
            evs.append(BlockStop(idx))
        elif typ in ("response.completed", "response.incomplete"):
            resp = d.get("response") or {}
            evs.extend(self._close_all())
            self._done = True
            evs.append(
                MessageEnd(
                    stop_reason=_stop_reason(
                        resp.get("status") or typ.rsplit(".", 1)[1],
                        resp.get("incomplete_details"),
                        self._has_tool,
                        self._refused,
                    ),
                    usage=_usage_from_dict(resp.get("usage")),
                )
            )
        elif typ == "response.failed":
            self._done = True
            evs.append(_stream_error((d.get("response") or {}).get("error"), "response failed"))
        elif typ == "error":
            self._done = True
            err = d.get("error") if isinstance(d.get("error"), dict) else d
            evs.append(_stream_error(err, "upstream stream error"))
        return evs

    def _finish_item(self, idx: int, item: dict[str, Any], d: dict[str, Any]) -> list[StreamEvent]:
        # Some Responses-compatible servers send no deltas, only the finished item:
        # emit whatever the deltas did not cover.
        kind = self._kinds[idx]
        seen = self._acc.get(idx, 0)
        evs: list[StreamEvent] = []
        if kind == "message":
            full = "".join(
                c.get("text") or c.get("refusal") or "" for c in item.get("content") or []
            )
            if len(full) > seen:
                evs.extend(self._delta(d, "text", full[seen:]))
        elif kind in ("function_call", "custom_tool_call"):
            full = item.get("arguments" if kind == "function_call" else "input") or ""
            if len(full) > seen:
                evs.extend(self._delta(d, "json", full[seen:]))
        else:
            if not seen:
                summary = item.get("summary") or []
                text = "\n\n".join(s.get("text", "") for s in summary if s.get("text"))
                evs.extend(self._delta(d, "thinking", text))
            if item.get("encrypted_content"):
                evs.append(BlockDelta(idx, encrypted=item["encrypted_content"]))
        return evs

    def finish(self) -> list[StreamEvent]:
        """Call when the upstream stream ends; reports a truncated stream."""
        if self._done:
            return []
        self._done = True
        return [
            StreamError(
                502, ErrorKind.upstream_unavailable.value, "stream closed before response.completed"
            )
        ]


# ---- streaming: IR -> Responses SSE for the client --------------------------------

# ErrorKind -> response.error.code that Codex understands
_KIND_CODE: dict[str, str] = {
    "rate_limit": "rate_limit_exceeded",
    "budget_exceeded": "insufficient_quota",
    "invalid_request": "invalid_prompt",
    "request_too_large": "context_length_exceeded",
}


class _Block:
    __slots__ = (
        "args",
        "call_id",
        "custom",
        "encrypted",
        "item_id",
        "kind",
        "name",
        "output_index",
        "text",
        "unwrap",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.item_id = ""
        self.output_index = -1
        self.text: list[str] = []
        self.call_id = ""
        self.name = ""
        self.custom = False
        self.unwrap = False  # custom tool carried as {"input": "..."} JSON
        self.encrypted: str | None = None


class StreamEncoder:
    """IR stream events -> the SSE byte stream OpenAI sends for a Responses call.

    ``custom_tools``: names of the client's custom (freeform) tools, so calls from
    an upstream without custom tools (arriving as ``{"input": "..."}`` JSON) are
    sent as ``custom_tool_call`` with the unwrapped input.
    """

    def __init__(self, model: str, *, custom_tools: Iterable[str] = ()) -> None:
        self.model = model
        self._customs = frozenset(custom_tools)
        self._seq = 0
        self._id = ""
        self._created = int(time.time())
        self._started = False
        self._ended = False
        self._blocks: dict[int, _Block] = {}
        self._output: list[dict[str, Any]] = []  # finished items, by output_index

    def _ev(self, typ: str, payload: dict[str, Any]) -> bytes:
        payload = {"type": typ, "sequence_number": self._seq, **payload}
        self._seq += 1
        return b"event: " + typ.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _resp(self, status: str, usage: Usage | None = None, **kw: Any) -> dict[str, Any]:
        return _response_object(
            self._id,
            self.model,
            self._created,
            status,
            # empty dicts are slots of items still open (a failure mid-block)
            [o for o in self._output if o] if status != "in_progress" else [],
            usage,
            **kw,
        )

    def _start(self, resp_id: str | None = None) -> bytes:
        if self._started:
            return b""
        self._started = True
        self._id = resp_id if resp_id and resp_id.startswith("resp_") else _new_id("resp_")
        return self._ev("response.created", {"response": self._resp("in_progress")}) + self._ev(
            "response.in_progress", {"response": self._resp("in_progress")}
        )

    def encode(self, ev: StreamEvent) -> bytes:
        """SSE bytes for one IR event (may be empty)."""
        if self._ended:
            return b""
        if isinstance(ev, MessageStart):
            return self._start(ev.id)
        out = self._start()
        if isinstance(ev, BlockStart):
            out += self._block_start(ev)
        elif isinstance(ev, BlockDelta):
            out += self._block_delta(ev)
        elif isinstance(ev, BlockStop):
            out += self._block_stop(ev.index)
        elif isinstance(ev, MessageEnd):
            out += self._close_all()
            self._ended = True
            if ev.stop_reason == "max_tokens":
                resp = self._resp("incomplete", ev.usage, incomplete_reason="max_output_tokens")
                out += self._ev("response.incomplete", {"response": resp})
            else:
                out += self._ev(
                    "response.completed", {"response": self._resp("completed", ev.usage)}
                )
        elif isinstance(ev, StreamError):
            out += self._fail(ev.kind, ev.message)
        return out

    def _fail(self, kind: str, message: str) -> bytes:
        self._ended = True
        err = {"code": _KIND_CODE.get(kind, "server_error"), "message": message}
        return self._ev("response.failed", {"response": self._resp("failed", None, error=err)})

    def _close_all(self) -> bytes:
        return b"".join(self._block_stop(i) for i in sorted(self._blocks))

    def _block_start(self, ev: BlockStart) -> bytes:
        b = _Block(ev.kind)
        self._blocks[ev.index] = b
        if ev.kind == "thinking":
            b.item_id = ev.item_id or ""
            return b""  # emitted whole at BlockStop, once we know it is replayable
        b.output_index = len(self._output)
        self._output.append({})  # reserve the slot
        if ev.kind == "text":
            b.item_id = _new_id("msg_")
            return self._ev(
                "response.output_item.added",
                {
                    "output_index": b.output_index,
                    "item": _message_item(b.item_id, "", "in_progress"),
                },
            ) + self._ev(
                "response.content_part.added",
                {
                    "item_id": b.item_id,
                    "output_index": b.output_index,
                    "content_index": 0,
                    "part": _text_part(""),
                },
            )
        b.call_id = ev.tool_id or _new_id("call_")
        b.name = ev.tool_name or ""
        b.custom = ev.tool_kind == "custom" or b.name in self._customs
        b.unwrap = b.custom and ev.tool_kind != "custom"
        b.item_id = _new_id("ctc_" if b.custom else "fc_")
        item = _call_item(b.item_id, b.call_id, b.name, b.custom, "", "in_progress")
        return self._ev(
            "response.output_item.added", {"output_index": b.output_index, "item": item}
        )

    def _block_delta(self, ev: BlockDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None:
            return b""
        if b.kind == "text" and ev.text:
            b.text.append(ev.text)
            return self._ev(
                "response.output_text.delta",
                {
                    "item_id": b.item_id,
                    "output_index": b.output_index,
                    "content_index": 0,
                    "delta": ev.text,
                    "logprobs": [],
                },
            )
        if b.kind == "tool_use" and ev.json:
            b.text.append(ev.json)
            if b.unwrap:
                return b""  # wrapped JSON: unwrap once complete, at BlockStop
            typ = (
                "response.custom_tool_call_input.delta"
                if b.custom
                else "response.function_call_arguments.delta"
            )
            return self._ev(
                typ, {"item_id": b.item_id, "output_index": b.output_index, "delta": ev.json}
            )
        if b.kind == "thinking":
            if ev.thinking:
                b.text.append(ev.thinking)
            if ev.encrypted:
                b.encrypted = ev.encrypted
        return b""

    def _block_stop(self, index: int) -> bytes:
        b = self._blocks.pop(index, None)
        if b is None:
            return b""
        text = "".join(b.text)
        if b.kind == "thinking":
            # Anthropic signatures and bare reasoning text cannot be replayed to
            # OpenAI by Codex; only reasoning with OpenAI identity is forwarded.
            if not (b.encrypted or b.item_id):
                return b""
            b.output_index = len(self._output)
            item = _reasoning_item(b.item_id or _new_id("rs_"), text, b.encrypted)
            self._output.append(item)
            return self._ev(
                "response.output_item.added",
                {"output_index": b.output_index, "item": {**item, "summary": []}},
            ) + self._ev(
                "response.output_item.done", {"output_index": b.output_index, "item": item}
            )
        ids = {"item_id": b.item_id, "output_index": b.output_index}
        if b.kind == "text":
            item = _message_item(b.item_id, text, "completed")
            self._output[b.output_index] = item
            return (
                self._ev(
                    "response.output_text.done",
                    {**ids, "content_index": 0, "text": text, "logprobs": []},
                )
                + self._ev(
                    "response.content_part.done",
                    {**ids, "content_index": 0, "part": _text_part(text)},
                )
                + self._ev(
                    "response.output_item.done", {"output_index": b.output_index, "item": item}
                )
            )
        out = b""
        if b.custom:
            if b.unwrap:
                text = _custom_input(_loads_args(text)) if text else ""
                if text:
                    out += self._ev("response.custom_tool_call_input.delta", {**ids, "delta": text})
            out += self._ev("response.custom_tool_call_input.done", {**ids, "input": text})
        else:
            text = text or "{}"  # a no-argument call still needs valid JSON
            out += self._ev("response.function_call_arguments.done", {**ids, "arguments": text})
        item = _call_item(b.item_id, b.call_id, b.name, b.custom, text, "completed")
        self._output[b.output_index] = item
        return out + self._ev(
            "response.output_item.done", {"output_index": b.output_index, "item": item}
        )

    def finish(self) -> bytes:
        """Bytes to send when the IR stream ends; a stream that never reached
        MessageEnd or StreamError is reported as ``response.failed``."""
        if self._ended:
            return b""
        return self._start() + self._fail(
            ErrorKind.upstream_unavailable.value, "stream closed before response.completed"
        )


# ---- same-format passthrough: read usage only -------------------------------------

_TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


class UsageTap:
    """Watches a passed-through Responses SSE stream for its terminal event.

    Only ``response.completed`` / ``.incomplete`` / ``.failed`` (and ``error``)
    events are JSON-decoded; everything else is skipped after a name check.
    """

    __slots__ = ("_parser", "done", "error", "response_id", "stop_reason", "usage")

    def __init__(self) -> None:
        self._parser = SSEParser()
        self.usage: Usage | None = None
        self.stop_reason: StopReason | None = None
        self.done = False
        self.error: StreamError | None = None
        self.response_id: str | None = None

    def feed_bytes(self, chunk: bytes) -> None:
        """Feed raw bytes as they are forwarded to the client."""
        if self.done:
            return
        for name, data in self._parser.feed(chunk):
            self.feed(name, data)

    def finish(self) -> None:
        """Feed whatever is left when the stream ends without a final blank line."""
        for name, data in self._parser.flush():
            self.feed(name, data)

    def feed(self, event: str | None, data: bytes) -> None:
        """Feed one already-split SSE event (the same call as the other codecs' taps)."""
        if self.done:
            return
        if event is not None:
            if event not in (
                "response.completed",
                "response.incomplete",
                "response.failed",
                "error",
            ):
                return
        else:
            head = data[:64]
            if not any(t in head for t in _TERMINAL) and b'"error"' not in head:
                return
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(d, dict):
            return
        typ = d.get("type") or event
        if typ == "error":
            self.done = True
            self.stop_reason = "error"
            self.error = _stream_error(
                d.get("error") if isinstance(d.get("error"), dict) else d, "upstream stream error"
            )
            return
        resp = d.get("response") or {}
        if typ not in ("response.completed", "response.incomplete", "response.failed"):
            return
        self.done = True
        self.response_id = resp.get("id")
        if resp.get("usage"):
            self.usage = _usage_from_dict(resp["usage"])
        if typ == "response.failed":
            self.stop_reason = "error"
            self.error = _stream_error(resp.get("error"), "response failed")
        else:
            has_tool = any(
                isinstance(i, dict) and i.get("type") in ("function_call", "custom_tool_call")
                for i in resp.get("output") or ()
            )
            self.stop_reason = _stop_reason(
                resp.get("status") or typ.rsplit(".", 1)[1],
                resp.get("incomplete_details"),
                has_tool,
                False,
            )
