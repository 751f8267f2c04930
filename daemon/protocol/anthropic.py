"""Anthropic Messages wire format <-> IR.

Used only for translated traffic (an Anthropic client on an OpenAI upstream, or an
OpenAI client on an Anthropic upstream); same-format traffic is passed through and
only touches ``UsageTap`` / ``usage_from_response``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from ..errors import ApiError, ErrorKind, error_body
from .ir import (
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
from .sse import encode_event

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

# Claude Code's per-session attribution block: noise that breaks prefix sharing.
_BILLING_PREFIX = "x-anthropic-billing-header:"

# Anthropic output_config.effort -> IR (OpenAI words). "max" has no OpenAI peer.
_EFFORT_IN = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
_EFFORT_OUT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}
# thinking budget_tokens for an OpenAI effort sent to an Anthropic model
_BUDGETS = {"low": 2048, "medium": 8192, "high": 16384, "xhigh": 32000}

_STOP_REASONS = frozenset(
    ("end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn")
)

_KNOWN_KEYS = frozenset(
    (
        "model",
        "messages",
        "system",
        "max_tokens",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "metadata",
        "cache_control",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
    )
)

_TOOL_ID_OK = re.compile(r"[A-Za-z0-9_-]+")
_TOOL_ID_BAD = re.compile(r"[^A-Za-z0-9_-]")
# Anthropic server tools carry a dated type: web_search_20250305, bash_20250124...
_DATED_TYPE = re.compile(r".+_\d{8}$")

_FREEFORM_SCHEMA = {
    "type": "object",
    "properties": {
        "input": {"type": "string", "description": "freeform input, see tool description"}
    },
    "required": ["input"],
}

_MAX_BREAKPOINTS = 4


def _bad(message: str, param: str) -> ApiError:
    return ApiError(ErrorKind.invalid_request, message, param=param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cache(d: dict) -> CacheMark | None:
    cc = d.get("cache_control")
    if not isinstance(cc, dict):
        return None
    return CacheMark("1h") if cc.get("ttl") == "1h" else CacheMark()


def _cc(mark: CacheMark) -> dict:
    return {"type": "ephemeral", "ttl": "1h"} if mark.ttl == "1h" else {"type": "ephemeral"}


# ---- request: Anthropic -> IR ---------------------------------------------------


def _parse_image(b: dict) -> ImagePart | None:
    src = b.get("source")
    if not isinstance(src, dict):
        return None
    st = src.get("type")
    if st == "base64":
        return ImagePart(media_type=src.get("media_type"), data=src.get("data"), cache=_cache(b))
    if st == "url":
        return ImagePart(url=src.get("url"), cache=_cache(b))
    return None  # file ids etc. only resolve on Anthropic


def _parse_result_content(content: Any, param: str) -> list[TextPart | ImagePart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise _bad(f"{param}: expected a string or a list of blocks", param)
    out: list[TextPart | ImagePart] = []
    for b in content:
        if not isinstance(b, dict):
            continue
        t = b.get("type")
        if t == "image":
            img = _parse_image(b)
            if img is not None:
                out.append(img)
        elif isinstance(b.get("text"), str):  # text, and tolerant of unknown text-ish blocks
            out.append(TextPart(b["text"], _cache(b)))
    return out


def _parse_blocks(content: Any, param: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise _bad(f"{param}: expected a string or a list of content blocks", param)
    parts: list[Part] = []
    for i, b in enumerate(content):
        if not isinstance(b, dict):
            raise _bad(f"{param}.{i}: content block must be an object", f"{param}.{i}")
        t = b.get("type")
        if t == "text":
            text = b.get("text")
            if not isinstance(text, str):
                raise _bad(f"{param}.{i}.text: expected a string", f"{param}.{i}.text")
            parts.append(TextPart(text, _cache(b)))
        elif t == "tool_use":
            tid, name = b.get("id"), b.get("name")
            if not isinstance(tid, str) or not isinstance(name, str):
                raise _bad(f"{param}.{i}: tool_use needs string id and name", f"{param}.{i}")
            inp = b.get("input")
            parts.append(ToolUsePart(tid, name, inp if inp is not None else {}, cache=_cache(b)))
        elif t == "tool_result":
            tid = b.get("tool_use_id")
            if not isinstance(tid, str):
                raise _bad(
                    f"{param}.{i}.tool_use_id: expected a string", f"{param}.{i}.tool_use_id"
                )
            parts.append(
                ToolResultPart(
                    tid,
                    _parse_result_content(b.get("content"), f"{param}.{i}.content"),
                    is_error=bool(b.get("is_error")),
                    cache=_cache(b),
                )
            )
        elif t == "image":
            img = _parse_image(b)
            if img is not None:
                parts.append(img)
        elif t == "thinking":
            parts.append(
                ThinkingPart(
                    text=b.get("thinking") or "", signature=b.get("signature"), origin="anthropic"
                )
            )
        elif t == "redacted_thinking":
            parts.append(ThinkingPart(redacted_data=b.get("data"), origin="anthropic"))
        elif isinstance(b.get("text"), str):
            # newer/unknown block types (document with text, search_result...): keep text
            parts.append(TextPart(b["text"], _cache(b)))
    return parts


def _parse_system(system: Any) -> list[TextPart]:
    if system is None:
        return []
    if isinstance(system, str):
        return [] if system.startswith(_BILLING_PREFIX) else [TextPart(system)]
    if not isinstance(system, list):
        raise _bad("system: expected a string or a list of text blocks", "system")
    out: list[TextPart] = []
    for i, b in enumerate(system):
        if not isinstance(b, dict) or not isinstance(b.get("text"), str):
            raise _bad(f"system.{i}: expected a text block", f"system.{i}")
        text = b["text"]
        if text.startswith(_BILLING_PREFIX):
            continue
        out.append(TextPart(text, _cache(b)))
    return out


def _parse_tools(tools: Any) -> list[Tool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools: expected a list", "tools")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise _bad(f"tools.{i}: expected an object", f"tools.{i}")
        ttype = t.get("type")
        if ttype is not None and ttype != "custom":
            out.append(
                Tool(name=str(t.get("name") or ttype), kind="builtin", raw=t, cache=_cache(t))
            )
            continue
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"tools.{i}.name: expected a non-empty string", f"tools.{i}.name")
        schema = t.get("input_schema")
        if schema is None:
            schema = {"type": "object"}
        elif not isinstance(schema, dict):
            raise _bad(f"tools.{i}.input_schema: expected an object", f"tools.{i}.input_schema")
        desc = t.get("description")
        out.append(
            Tool(
                name=name,
                description=desc if isinstance(desc, str) else "",
                input_schema=schema,
                cache=_cache(t),
            )
        )
    return out


def _parse_tool_choice(tc: Any) -> ToolChoice | None:
    if tc is None:
        return None
    if not isinstance(tc, dict):
        raise _bad("tool_choice: expected an object", "tool_choice")
    mode = tc.get("type")
    if mode not in ("auto", "any", "none", "tool"):
        raise _bad("tool_choice.type: expected auto, any, none or tool", "tool_choice.type")
    name = tc.get("name")
    if mode == "tool" and not isinstance(name, str):
        raise _bad("tool_choice.name: required when type is tool", "tool_choice.name")
    dp = tc.get("disable_parallel_tool_use")
    return ToolChoice(
        mode=mode, name=name if mode == "tool" else None, parallel=None if dp is None else not dp
    )


def _session_key(user_id: str) -> str:
    # Claude Code sends a JSON string; its session_id is the stable per-session key.
    if user_id.startswith("{"):
        try:
            obj = orjson.loads(user_id)
        except orjson.JSONDecodeError:
            return user_id
        if isinstance(obj, dict) and isinstance(obj.get("session_id"), str) and obj["session_id"]:
            return obj["session_id"]
    return user_id


def parse_request(body: dict) -> ChatRequest:
    """A client's Anthropic Messages body -> IR. Raises ``ApiError`` on malformed input."""
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: field required (a non-empty string)", "model")
    raw_msgs = body.get("messages")
    if not isinstance(raw_msgs, list):
        raise _bad("messages: field required (a list)", "messages")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _bad("max_tokens: field required", "max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _bad("max_tokens: expected a positive integer", "max_tokens")

    system = _parse_system(body.get("system"))
    messages: list[Message] = []
    for i, m in enumerate(raw_msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages.{i}: expected an object", f"messages.{i}")
        role = m.get("role")
        if role not in ("user", "assistant", "system"):
            raise _bad(
                f"messages.{i}.role: expected user, assistant or system", f"messages.{i}.role"
            )
        if "content" not in m:
            raise _bad(f"messages.{i}.content: field required", f"messages.{i}.content")
        parts = _parse_blocks(m["content"], f"messages.{i}.content")
        if role == "system" and not messages:
            # leading system messages belong to the system prompt (IR contract)
            system.extend(p for p in parts if isinstance(p, TextPart))
            continue
        messages.append(Message(role, parts))

    req = ChatRequest(
        model=model,
        messages=messages,
        system=system,
        max_tokens=max_tokens,
        source_format="anthropic",
    )
    req.tools = _parse_tools(body.get("tools"))
    req.tool_choice = _parse_tool_choice(body.get("tool_choice"))

    for key in ("temperature", "top_p"):
        v = body.get(key)
        if v is not None:
            if not _is_num(v):
                raise _bad(f"{key}: expected a number", key)
            setattr(req, key, float(v))
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences: expected a list of strings", "stop_sequences")
        req.stop = stop
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _bad("stream: expected a boolean", "stream")
        req.stream = stream

    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise _bad("thinking: expected an object", "thinking")
        req.thinking = thinking

    oc = body.get("output_config")
    if oc is not None:
        if not isinstance(oc, dict):
            raise _bad("output_config: expected an object", "output_config")
        effort = oc.get("effort")
        if isinstance(effort, str):
            req.reasoning_effort = _EFFORT_IN.get(effort, effort)
        fmt = oc.get("format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            if not isinstance(schema, dict):
                raise _bad(
                    "output_config.format.schema: expected an object", "output_config.format.schema"
                )
            req.json_schema = {"name": "output", "schema": schema, "strict": True}
        rest = {k: v for k, v in oc.items() if k not in ("effort", "format")}
        if rest:
            req.extra["output_config"] = rest
    if (
        req.reasoning_effort is None
        and isinstance(thinking, dict)
        and thinking.get("type") == "enabled"
        and _is_int(thinking.get("budget_tokens"))
    ):
        # give OpenAI encoders an effort for an explicit budget
        b = thinking["budget_tokens"]
        req.reasoning_effort = (
            "low" if b <= 2048 else "medium" if b <= 8192 else "high" if b <= 16384 else "xhigh"
        )

    meta = body.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise _bad("metadata: expected an object", "metadata")
        uid = meta.get("user_id")
        if isinstance(uid, str) and uid:
            req.user = uid
            req.cache_key = _session_key(uid)

    if isinstance(body.get("cache_control"), dict):
        req.auto_cache = _cache(body)

    for k, v in body.items():
        if k not in _KNOWN_KEYS:
            req.extra[k] = v
    return req


# ---- request: IR -> Anthropic ---------------------------------------------------


def _tool_id(tid: str) -> str:
    # Anthropic requires ^[a-zA-Z0-9_-]+$; other providers' ids may contain ':' or '.'
    if _TOOL_ID_OK.fullmatch(tid):
        return tid
    return _TOOL_ID_BAD.sub("_", tid) or "toolu_missing"


def _image_block(p: ImagePart) -> dict | None:
    if p.data:
        block = {
            "type": "image",
            "source": {"type": "base64", "media_type": p.media_type or "image/png", "data": p.data},
        }
    elif p.url:
        if p.url.startswith("data:") and ";base64," in p.url:
            head, data = p.url[5:].split(";base64,", 1)
            block = {
                "type": "image",
                "source": {"type": "base64", "media_type": head or "image/png", "data": data},
            }
        else:
            block = {"type": "image", "source": {"type": "url", "url": p.url}}
    else:
        return None
    if p.cache:
        block["cache_control"] = _cc(p.cache)
    return block


def _text_block(p: TextPart) -> dict | None:
    if not p.text:
        return None  # Anthropic rejects empty text blocks
    block = {"type": "text", "text": p.text}
    if p.cache:
        block["cache_control"] = _cc(p.cache)
    return block


def _part_block(p: Part) -> dict | None:
    if isinstance(p, TextPart):
        return _text_block(p)
    if isinstance(p, ToolUsePart):
        inp = p.input
        if p.kind == "custom" or isinstance(inp, str):
            inp = {"input": inp if isinstance(inp, str) else orjson.dumps(inp).decode()}
        block = {"type": "tool_use", "id": _tool_id(p.id), "name": p.name, "input": inp}
    elif isinstance(p, ToolResultPart):
        content = []
        for c in p.content:
            b = _text_block(c) if isinstance(c, TextPart) else _image_block(c)
            if b is not None:
                content.append(b)
        block = {"type": "tool_result", "tool_use_id": _tool_id(p.tool_use_id)}
        if content:
            block["content"] = content
        if p.is_error:
            block["is_error"] = True
    elif isinstance(p, ImagePart):
        return _image_block(p)
    elif isinstance(p, ThinkingPart):
        # signatures are only valid on Anthropic; anything else would be rejected
        if p.origin != "anthropic":
            return None
        if p.redacted_data:
            return {"type": "redacted_thinking", "data": p.redacted_data}
        if p.signature:
            return {"type": "thinking", "thinking": p.text, "signature": p.signature}
        return None
    else:
        return None
    if p.cache:
        block["cache_control"] = _cc(p.cache)
    return block


def _build_tool(t: Tool) -> dict | None:
    if t.kind == "builtin":
        raw = t.raw or {}
        # only Anthropic server tools run here; OpenAI builtins (web_search...) cannot
        if not isinstance(raw.get("type"), str) or not _DATED_TYPE.match(raw["type"]):
            return None
        out = {k: v for k, v in raw.items() if k != "cache_control"}
    elif t.kind == "custom":
        out = {"name": t.name, "input_schema": _FREEFORM_SCHEMA}
        if t.description:
            out["description"] = t.description
    else:
        schema = t.input_schema if isinstance(t.input_schema, dict) else {}
        if schema.get("type") != "object":
            schema = {**schema, "type": "object"}
        out = {"name": t.name, "input_schema": schema}
        if t.description:
            out["description"] = t.description
    if t.cache:
        out["cache_control"] = _cc(t.cache)
    return out


def _build_messages(req: ChatRequest) -> list[dict]:
    out: list[dict] = []
    for m in req.messages:
        if m.role == "system":
            # mid-conversation system message: a user-turn reminder (alternation rule)
            text = "\n".join(p.text for p in m.parts if isinstance(p, TextPart) and p.text)
            if not text:
                continue
            role = "user"
            block = {"type": "text", "text": f"<system-reminder>\n{text}\n</system-reminder>"}
            mark = next(
                (p.cache for p in reversed(m.parts) if isinstance(p, TextPart) and p.cache), None
            )
            if mark:
                block["cache_control"] = _cc(mark)
            blocks = [block]
        else:
            role = m.role
            blocks = [b for b in map(_part_block, m.parts) if b is not None]
            if not blocks:
                continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for msg in out:
        c = msg["content"]
        if msg["role"] == "user" and len(c) > 1:
            # tool_result blocks must come first in their user message
            first_other = next((i for i, b in enumerate(c) if b["type"] != "tool_result"), None)
            if first_other is not None and any(
                b["type"] == "tool_result" for b in c[first_other + 1 :]
            ):
                msg["content"] = [b for b in c if b["type"] == "tool_result"] + [
                    b for b in c if b["type"] != "tool_result"
                ]

    if out and out[-1]["role"] == "assistant":
        # a final (prefill) assistant turn may not end with whitespace
        last = out[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                out[-1]["content"].pop()
                if not out[-1]["content"]:
                    out.pop()
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continued)"}]})
    return out


def _cacheable(blocks: list[dict]) -> dict | None:
    for b in reversed(blocks):
        if b["type"] not in ("thinking", "redacted_thinking"):
            return b
    return None


def _apply_breakpoints(body: dict, req: ChatRequest, place: bool) -> None:
    tools: list[dict] = body.get("tools") or []
    system: list[dict] = body.get("system") or []
    messages: list[dict] = body["messages"]
    marked: list[dict] = [b for b in tools if "cache_control" in b]
    marked += [b for b in system if "cache_control" in b]
    for m in messages:
        for b in m["content"]:
            if "cache_control" in b:
                marked.append(b)
            if b["type"] == "tool_result":
                marked += [c for c in b.get("content", ()) if "cache_control" in c]

    if not marked:
        if not place or req.auto_cache is not None:
            return
        # nothing marked (e.g. an OpenAI client): cache the growing prefix ourselves
        targets = []
        if tools:
            targets.append(tools[-1])
        if system:
            targets.append(system[-1])
        users = [m for m in messages if m["role"] == "user"]
        if len(messages) >= 4 and len(users) >= 2 and users[-2] is not messages[-1]:
            targets.append(_cacheable(users[-2]["content"]))
        targets.append(_cacheable(messages[-1]["content"]))
        for b in targets[:_MAX_BREAKPOINTS]:
            if b is not None:
                b["cache_control"] = {"type": "ephemeral"}
        return

    limit = _MAX_BREAKPOINTS - (1 if req.auto_cache is not None else 0)
    if len(marked) > limit:
        for b in marked[: len(marked) - limit]:
            del b["cache_control"]
        marked = marked[len(marked) - limit :]
    seen_5m = False
    for b in marked:
        if b["cache_control"].get("ttl") == "1h":
            if seen_5m:  # a 1h entry may not follow a 5m one
                b["cache_control"] = {"type": "ephemeral"}
        else:
            seen_5m = True


def _history_blocks_thinking(messages: list[dict]) -> bool:
    """True if enabling thinking would be rejected: the last assistant turn used tools
    without a leading thinking block (history made by another provider)."""
    for m in reversed(messages):
        if m["role"] == "assistant":
            c = m["content"]
            has_tool = any(b["type"] == "tool_use" for b in c)
            return has_tool and c[0]["type"] not in ("thinking", "redacted_thinking")
    return False


def build_request(
    req: ChatRequest, model: str, *, stream: bool, place_breakpoints: bool = True
) -> dict:
    """IR -> an Anthropic Messages upstream body for ``model``."""
    native = req.source_format == "anthropic"
    body: dict[str, Any] = {}
    if native:
        body.update({k: v for k, v in req.extra.items() if k != "output_config"})
    body["model"] = model
    max_tokens = req.max_tokens or 8192
    if req.system:
        system = [b for b in map(_text_block, req.system) if b is not None]
        if system:
            body["system"] = system
    messages = _build_messages(req)
    body["messages"] = messages

    tools = [t for t in map(_build_tool, req.tools) if t is not None]
    tool_choice = None
    if tools and req.tool_choice is not None:
        tc = req.tool_choice
        tool_choice = {"type": tc.mode}
        if tc.mode == "tool":
            tool_choice["name"] = tc.name
        if tc.parallel is not None and tc.mode != "none":
            tool_choice["disable_parallel_tool_use"] = not tc.parallel
    if not tools:
        # history with tool blocks but no tool definitions (e.g. a compaction request):
        # Anthropic wants them defined; declare stubs and forbid calling them.
        names = dict.fromkeys(
            b["name"]
            for m in messages
            if m["role"] == "assistant"
            for b in m["content"]
            if b["type"] == "tool_use"
        )
        if names:
            tools = [{"name": n, "input_schema": {"type": "object"}} for n in names]
            tool_choice = {"type": "none"}
    if tools:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice

    temperature, top_p = req.temperature, req.top_p
    thinking = req.thinking
    if thinking is None and req.reasoning_effort in _BUDGETS and not native:
        forced = tool_choice is not None and tool_choice["type"] in ("any", "tool")
        if not forced and not _history_blocks_thinking(messages):
            thinking = {"type": "enabled", "budget_tokens": _BUDGETS[req.reasoning_effort]}
            temperature = top_p = None  # thinking forbids sampling changes
    if thinking is not None:
        budget = thinking.get("budget_tokens")
        if thinking.get("type") == "enabled" and _is_int(budget) and max_tokens <= budget:
            max_tokens = budget + max_tokens
        body["thinking"] = thinking
    body["max_tokens"] = max_tokens

    if not native and temperature is not None:
        temperature = min(temperature, 1.0)  # OpenAI allows up to 2
        top_p = None  # newer Claude models reject both at once
    if temperature is not None:
        body["temperature"] = temperature
    if top_p is not None:
        body["top_p"] = top_p
    stop = req.stop if native else [s for s in req.stop if s.strip()]
    if stop:
        body["stop_sequences"] = stop

    oc: dict[str, Any] = dict(req.extra.get("output_config") or {}) if native else {}
    if native and req.reasoning_effort:
        oc["effort"] = _EFFORT_OUT.get(req.reasoning_effort, req.reasoning_effort)
    if req.json_schema and isinstance(req.json_schema.get("schema"), dict):
        oc["format"] = {"type": "json_schema", "schema": req.json_schema["schema"]}
    if oc:
        body["output_config"] = oc

    if isinstance(req.user, str) and req.user and len(req.user) <= 256:
        body["metadata"] = {"user_id": req.user}
    if req.auto_cache is not None:
        body["cache_control"] = _cc(req.auto_cache)
    body["stream"] = stream
    _apply_breakpoints(body, req, place_breakpoints)
    return body


# ---- responses --------------------------------------------------------------------


def _usage(u: Any) -> Usage:
    if not isinstance(u, dict):
        return Usage()
    usage = Usage(
        input_tokens=u.get("input_tokens") or 0,
        output_tokens=u.get("output_tokens") or 0,
        cache_read_tokens=u.get("cache_read_input_tokens") or 0,
    )
    _apply_cache_creation(usage, u)
    det = u.get("output_tokens_details")
    if isinstance(det, dict):
        usage.reasoning_tokens = det.get("thinking_tokens") or 0
    return usage


def _apply_cache_creation(usage: Usage, u: dict) -> None:
    cc = u.get("cache_creation")
    if isinstance(cc, dict) and (
        "ephemeral_5m_input_tokens" in cc or "ephemeral_1h_input_tokens" in cc
    ):
        usage.cache_write_tokens = cc.get("ephemeral_5m_input_tokens") or 0
        usage.cache_write_1h_tokens = cc.get("ephemeral_1h_input_tokens") or 0
    elif u.get("cache_creation_input_tokens") is not None:
        usage.cache_write_tokens = u["cache_creation_input_tokens"] or 0
        usage.cache_write_1h_tokens = 0


def _merge_delta_usage(us: Usage, u: Any) -> None:
    """message_delta usage is cumulative: present counts overwrite message_start's."""
    if not isinstance(u, dict):
        return
    if u.get("output_tokens") is not None:
        us.output_tokens = u["output_tokens"]
    if u.get("input_tokens") is not None:
        us.input_tokens = u["input_tokens"]
    if u.get("cache_read_input_tokens") is not None:
        us.cache_read_tokens = u["cache_read_input_tokens"]
    _apply_cache_creation(us, u)
    det = u.get("output_tokens_details")
    if isinstance(det, dict):
        us.reasoning_tokens = det.get("thinking_tokens") or 0


def _usage_out(u: Usage) -> dict:
    out = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens + u.cache_write_1h_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_tokens,
            "ephemeral_1h_input_tokens": u.cache_write_1h_tokens,
        },
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def _stop_reason(v: Any) -> StopReason:
    if v in _STOP_REASONS:
        return v
    return "max_tokens" if v == "model_context_window_exceeded" else "end_turn"


def usage_from_response(body: dict) -> Usage:
    """Usage of a non-stream Anthropic response (passthrough accounting)."""
    return _usage(body.get("usage") if isinstance(body, dict) else None)


def parse_response(body: dict) -> ChatResponse:
    """An upstream Anthropic non-stream response -> IR."""
    content = body.get("content") or []
    try:
        parts = _parse_blocks(content, "content")
    except ApiError as e:  # upstream garbage is the upstream's fault, not the client's
        raise ApiError(
            ErrorKind.api_error, f"malformed upstream response: {e.message}", status=502
        ) from None
    return ChatResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        parts=parts,
        stop_reason=_stop_reason(body.get("stop_reason")),
        stop_sequence=body.get("stop_sequence"),
        usage=_usage(body.get("usage")),
    )


def _msg_id(i: str) -> str:
    if not i:
        return "msg_" + uuid.uuid4().hex[:24]
    return i if i.startswith("msg_") else "msg_" + i


def build_response(resp: ChatResponse, model: str) -> dict:
    """IR -> an Anthropic Messages response body, as the API returns it."""
    content: list[dict] = []
    for p in resp.parts:
        if isinstance(p, TextPart):
            if p.text:
                content.append({"type": "text", "text": p.text})
        elif isinstance(p, ToolUsePart):
            inp = p.input
            if p.kind == "custom" or isinstance(inp, str):
                inp = {"input": inp}
            # OpenAI call ids are kept: the client echoes them back in tool_result
            content.append({"type": "tool_use", "id": p.id, "name": p.name, "input": inp})
        elif isinstance(p, ThinkingPart) and p.origin == "anthropic":
            if p.redacted_data:
                content.append({"type": "redacted_thinking", "data": p.redacted_data})
            else:
                content.append(
                    {"type": "thinking", "thinking": p.text, "signature": p.signature or ""}
                )
    return {
        "id": _msg_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn" if resp.stop_reason == "error" else resp.stop_reason,
        "stop_sequence": resp.stop_sequence,
        "usage": _usage_out(resp.usage),
    }


# ---- streaming: upstream Anthropic SSE -> IR ----------------------------------------

_ERROR_STATUS = {
    "overloaded_error": (529, ErrorKind.overloaded),
    "rate_limit_error": (429, ErrorKind.rate_limit),
    "api_error": (500, ErrorKind.api_error),
}


class StreamDecoder:
    """Upstream Anthropic SSE events -> IR stream events."""

    __slots__ = ("_blocks", "_ended", "_next", "_started", "_stop", "_stop_seq", "_usage")

    def __init__(self) -> None:
        self._started = False
        self._ended = False
        self._usage = Usage()
        self._stop: str | None = None
        self._stop_seq: str | None = None
        self._blocks: dict[int, int] = {}  # upstream index -> IR index (server blocks skipped)
        self._next = 0

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        if self._ended or not data:
            return []
        if event == "ping":
            return []
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(d, dict):
            return []
        t = event or d.get("type")
        if t == "content_block_delta":
            idx = self._blocks.get(d.get("index", -1))
            delta = d.get("delta") or {}
            if idx is None:
                return []
            dt = delta.get("type")
            if dt == "text_delta":
                return [BlockDelta(idx, text=delta.get("text", ""))]
            if dt == "input_json_delta":
                return [BlockDelta(idx, json=delta.get("partial_json", ""))]
            if dt == "thinking_delta":
                return [BlockDelta(idx, thinking=delta.get("thinking", ""))]
            if dt == "signature_delta":
                return [BlockDelta(idx, signature=delta.get("signature", ""))]
            return []  # citations_delta etc.
        if t == "content_block_start":
            return self._block_start(d)
        if t == "content_block_stop":
            idx = self._blocks.get(d.get("index", -1))
            return [] if idx is None else [BlockStop(idx)]
        if t == "message_start":
            msg = d.get("message") or {}
            self._started = True
            self._usage = _usage(msg.get("usage"))
            return [
                MessageStart(
                    str(msg.get("id") or ""), str(msg.get("model") or ""), _usage(msg.get("usage"))
                )
            ]
        if t == "message_delta":
            delta = d.get("delta") or {}
            self._stop = delta.get("stop_reason")
            self._stop_seq = delta.get("stop_sequence")
            _merge_delta_usage(self._usage, d.get("usage"))
            return []
        if t == "message_stop":
            return self._end()
        if t == "error":
            self._ended = True
            err = d.get("error") or {}
            status, kind = _ERROR_STATUS.get(err.get("type"), (500, ErrorKind.api_error))
            return [StreamError(status, kind.value, str(err.get("message") or "upstream error"))]
        return []

    def _block_start(self, d: dict) -> list[StreamEvent]:
        cb = d.get("content_block") or {}
        ct = cb.get("type")
        if ct not in ("text", "tool_use", "thinking", "redacted_thinking"):
            return []  # server_tool_use / web_search_tool_result: no IR meaning
        idx = self._next
        self._next += 1
        self._blocks[d.get("index", idx)] = idx
        if ct == "text":
            out: list[StreamEvent] = [BlockStart(idx, "text")]
            if cb.get("text"):
                out.append(BlockDelta(idx, text=cb["text"]))
            return out
        if ct == "tool_use":
            out = [BlockStart(idx, "tool_use", tool_id=cb.get("id"), tool_name=cb.get("name"))]
            if cb.get("input"):
                out.append(BlockDelta(idx, json=orjson.dumps(cb["input"]).decode()))
            return out
        out = [BlockStart(idx, "thinking")]
        if ct == "thinking" and cb.get("thinking"):
            out.append(BlockDelta(idx, thinking=cb["thinking"]))
        return out

    def _end(self) -> list[StreamEvent]:
        self._ended = True
        return [MessageEnd(_stop_reason(self._stop), self._usage, self._stop_seq)]

    def finish(self) -> list[StreamEvent]:
        """Upstream closed. A stream that lost only message_stop is still complete."""
        if self._ended:
            return []
        if self._stop is not None:
            return self._end()
        self._ended = True
        return [
            StreamError(502, ErrorKind.upstream_unavailable.value, "upstream stream ended early")
        ]


# ---- streaming: IR -> Anthropic SSE for an Anthropic client -------------------------

_PING = encode_event({"type": "ping"}, "ping")


class _Thinking:
    __slots__ = ("signature", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.signature = ""


class StreamEncoder:
    """IR stream events -> the Anthropic SSE byte sequence the SDKs expect."""

    __slots__ = ("_custom", "_ended", "_map", "_model", "_next", "_open", "_started", "_thinking")

    def __init__(self, model: str) -> None:
        self._model = model
        self._started = False
        self._ended = False
        self._map: dict[int, int] = {}  # IR index -> client index
        self._next = 0
        self._open: set[int] = set()  # client indexes started, not stopped
        self._custom: dict[int, list[str]] = {}  # IR index -> buffered freeform input
        self._thinking: dict[int, _Thinking] = {}  # IR index -> buffered thinking

    def _start(self, msg_id: str, usage: Usage) -> bytes:
        self._started = True
        u = _usage_out(usage)
        u["output_tokens"] = 1 if usage.output_tokens else 0
        u.pop("output_tokens_details", None)
        msg = {
            "id": _msg_id(msg_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": u,
        }
        return encode_event({"type": "message_start", "message": msg}, "message_start") + _PING

    def _open_block(self, ir_idx: int, block: dict) -> bytes:
        ci = self._next
        self._next += 1
        self._map[ir_idx] = ci
        self._open.add(ci)
        return encode_event(
            {"type": "content_block_start", "index": ci, "content_block": block},
            "content_block_start",
        )

    def _delta(self, ci: int, delta: dict) -> bytes:
        return encode_event(
            {"type": "content_block_delta", "index": ci, "delta": delta}, "content_block_delta"
        )

    def _close(self, ci: int) -> bytes:
        self._open.discard(ci)
        return encode_event({"type": "content_block_stop", "index": ci}, "content_block_stop")

    def encode(self, ev: StreamEvent) -> bytes:
        if self._ended:
            return b""
        pre = b""
        if not self._started:
            if isinstance(ev, MessageStart):
                return self._start(ev.id, ev.usage)
            if not isinstance(ev, StreamError):
                pre = self._start("", Usage())
        elif isinstance(ev, MessageStart):
            return b""
        return pre + self._encode(ev)

    def _encode(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, BlockDelta):
            i = ev.index
            ci = self._map.get(i)
            if ci is not None:
                if ev.text:
                    return self._delta(ci, {"type": "text_delta", "text": ev.text})
                if ev.json is not None:
                    buf = self._custom.get(i)
                    if buf is not None:
                        buf.append(ev.json)
                        return b""
                    if ev.json:
                        return self._delta(
                            ci, {"type": "input_json_delta", "partial_json": ev.json}
                        )
                return b""
            th = self._thinking.get(i)
            if th is not None:
                if ev.thinking:
                    th.text.append(ev.thinking)
                if ev.signature:
                    th.signature += ev.signature
            return b""
        if isinstance(ev, BlockStart):
            if ev.kind == "text":
                return self._open_block(ev.index, {"type": "text", "text": ""})
            if ev.kind == "tool_use":
                if ev.tool_kind == "custom":
                    self._custom[ev.index] = []
                return self._open_block(
                    ev.index,
                    {
                        "type": "tool_use",
                        "id": ev.tool_id or "toolu_" + uuid.uuid4().hex[:24],
                        "name": ev.tool_name or "",
                        "input": {},
                    },
                )
            # thinking: only a signed (Anthropic) block is valid for the client to send
            # back; buffer until stop to know, and drop unsigned ones (renumbering).
            self._thinking[ev.index] = _Thinking()
            return b""
        if isinstance(ev, BlockStop):
            return self._stop_block(ev.index)
        if isinstance(ev, MessageEnd):
            out = b"".join(self._close(ci) for ci in sorted(self._open))
            self._ended = True
            u = _usage_out(ev.usage)
            u.pop("cache_creation")
            stop = "end_turn" if ev.stop_reason == "error" else ev.stop_reason
            return (
                out
                + encode_event(
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": ev.stop_sequence},
                        "usage": u,
                    },
                    "message_delta",
                )
                + encode_event({"type": "message_stop"}, "message_stop")
            )
        if isinstance(ev, StreamError):
            self._ended = True
            try:
                kind = ErrorKind(ev.kind)
            except ValueError:
                kind = ErrorKind.api_error
            return encode_event(error_body("anthropic", ApiError(kind, ev.message)), "error")
        return b""

    def _stop_block(self, i: int) -> bytes:
        th = self._thinking.pop(i, None)
        if th is not None:
            if not th.signature:
                return b""
            out = self._open_block(i, {"type": "thinking", "thinking": "", "signature": ""})
            ci = self._map[i]
            text = "".join(th.text)
            if text:
                out += self._delta(ci, {"type": "thinking_delta", "thinking": text})
            out += self._delta(ci, {"type": "signature_delta", "signature": th.signature})
            return out + self._close(ci)
        ci = self._map.get(i)
        if ci is None or ci not in self._open:
            return b""
        out = b""
        buf = self._custom.pop(i, None)
        if buf is not None:
            out = self._delta(
                ci,
                {
                    "type": "input_json_delta",
                    "partial_json": orjson.dumps({"input": "".join(buf)}).decode(),
                },
            )
        return out + self._close(ci)

    def finish(self) -> bytes:
        """Stream over. An error event unless the message ended properly."""
        if self._ended:
            return b""
        self._ended = True
        err = ApiError(ErrorKind.upstream_unavailable, "upstream stream ended early")
        return encode_event(error_body("anthropic", err), "error")


# ---- passthrough accounting -------------------------------------------------------


class UsageTap:
    """Usage of a same-format Anthropic stream, without decoding content deltas."""

    __slots__ = ("done", "error", "stop_reason", "usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, event: str | None, data: bytes) -> None:
        if event == "content_block_delta" or event == "ping":
            return  # the bulk of the stream
        if event is None:
            # unnamed events: only look closer when they can matter
            if b'"message_stop"' in data:
                self.done = True
                return
            if b'"usage"' not in data and b'"error"' not in data:
                return
        elif event == "message_stop":
            self.done = True
            return
        elif event not in ("message_start", "message_delta", "error"):
            return
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(d, dict):
            return
        t = d.get("type")
        if t == "message_start":
            self.usage = _usage((d.get("message") or {}).get("usage"))
        elif t == "message_delta":
            self.stop_reason = (d.get("delta") or {}).get("stop_reason") or self.stop_reason
            _merge_delta_usage(self.usage, d.get("usage"))
        elif t == "error":
            err = d.get("error") or {}
            self.error = str(err.get("type") or "error") + ": " + str(err.get("message") or "")
