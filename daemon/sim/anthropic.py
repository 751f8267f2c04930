"""Simulated Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from switchman_shared.catalog import CatalogModel

from . import replies
from .cache import ANTHROPIC_MAX_BREAKPOINTS, Prefixes, Segment, anthropic_apply, chain, segment
from .common import (
    DELTA,
    END,
    META,
    BadRequest,
    Pacing,
    decide_outcome,
    dumps,
    find_model,
    json_response,
    read_json_object,
    record,
    send_json_paced,
    send_stream,
)
from .state import SIM_STATE
from .tokens import json_tokens, part_tokens, strip_keys, text_tokens

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit.",
    500: "Internal server error",
    529: "Overloaded",
}
_NO_CC = frozenset({"cache_control"})
_ROLES = frozenset({"user", "assistant", "system"})  # "system": mid-conversation beta


def _request_id() -> str:
    return "req_sim" + uuid.uuid4().hex[:20]


def error_response(status: int, message: str | None = None) -> web.Response:
    if status == 503:
        status = 529  # Anthropic signals overload with 529
    etype = _ERROR_TYPES.get(status, "api_error")
    rid = _request_id()
    headers = {"request-id": rid}
    if status == 429:
        headers["retry-after"] = "1"
    body = {
        "type": "error",
        "error": {"type": etype, "message": message or _ERROR_MESSAGES.get(status, etype)},
        "request_id": rid,
    }
    return json_response(body, status=status, headers=headers)


def _authorized(request: web.Request) -> bool:
    return bool(request.headers.get("x-api-key") or request.headers.get("authorization"))


# -- validation ---------------------------------------------------------------


def _validate(body: dict[str, Any], *, need_max_tokens: bool) -> None:
    if "model" not in body:
        raise BadRequest("model: Field required")
    if not isinstance(body["model"], str):
        raise BadRequest("model: Input should be a valid string")
    if need_max_tokens:
        mt = body.get("max_tokens")
        if mt is None:
            raise BadRequest("max_tokens: Field required")
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise BadRequest("max_tokens: Input should be a valid integer greater than 0")
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("messages: Field required")
    if not isinstance(messages, list):
        raise BadRequest("messages: Input should be a valid list")
    if not messages:
        raise BadRequest("messages: at least one message is required")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"messages.{i}: Input should be a valid dictionary")
        if not isinstance(msg.get("role"), str) or msg["role"] not in _ROLES:
            raise BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        _check_content(msg.get("content"), f"messages.{i}.content", allow_str=True)
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _check_content(system, "system", allow_str=False)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise BadRequest(f"tools.{i}.name: Field required")
            if tool.get("type") in (None, "custom") and not isinstance(
                tool.get("input_schema"), dict
            ):
                raise BadRequest(f"tools.{i}.custom.input_schema: Field required")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("stream: Input should be a valid boolean")
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise BadRequest("thinking: Input tag does not match any of the expected tags")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
                raise BadRequest("thinking.enabled.budget_tokens: Input should be >= 1024")
            if need_max_tokens and budget >= body["max_tokens"]:
                raise BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`.")


def _check_content(content: Any, where: str, *, allow_str: bool) -> None:
    if allow_str and isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest(f"{where}: Input should be a valid list")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise BadRequest(f"{where}.{j}: Input should be a valid dictionary with a type")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise BadRequest(f"{where}.{j}.text: Field required")
        if block["type"] == "tool_result" and block.get("content") is not None:
            _check_content(block["content"], f"{where}.{j}.content", allow_str=True)


# -- cacheable prefix -----------------------------------------------------------


def _ttl(block: Any, where: str) -> str | None:
    if not isinstance(block, dict) or block.get("cache_control") is None:
        return None
    cc = block["cache_control"]
    if not isinstance(cc, dict) or cc.get("type") != "ephemeral":
        raise BadRequest(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = cc.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        raise BadRequest(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def prefix_segments(body: dict[str, Any]) -> list[Segment]:
    """tools -> system -> messages, one segment per block, breakpoints marked."""
    segs: list[Segment] = []
    for i, tool in enumerate(body.get("tools") or []):
        clean = strip_keys(tool, _NO_CC)
        segs.append(segment(("tool", clean), json_tokens(clean), _ttl(tool, f"tools.{i}")))
    system = body.get("system")
    if isinstance(system, str):
        if system:
            segs.append(segment(("system", system), text_tokens(system)))
    elif isinstance(system, list):
        for i, block in enumerate(system):
            clean = strip_keys(block, _NO_CC)
            segs.append(segment(("system", clean), part_tokens(clean), _ttl(block, f"system.{i}")))
    for i, msg in enumerate(body["messages"]):
        role, content = msg.get("role"), msg.get("content")
        if isinstance(content, str):
            segs.append(segment((i, role, content), text_tokens(content)))
            continue
        for j, block in enumerate(content):
            clean = strip_keys(block, _NO_CC)
            ttl = _ttl(block, f"messages.{i}.content.{j}")
            segs.append(segment((i, role, clean), part_tokens(clean), ttl))
    auto = body.get("cache_control")
    if auto is not None and segs:
        # Automatic mode: the breakpoint lands on the last cacheable block.
        ttl = _ttl({"cache_control": auto}, "cache_control")
        last = segs[-1]
        segs[-1] = Segment(last.tokens, last.digest, last.ttl or ttl)
    marks = [s.ttl for s in segs if s.ttl is not None]
    if len(marks) > ANTHROPIC_MAX_BREAKPOINTS:
        raise BadRequest(
            f"A maximum of {ANTHROPIC_MAX_BREAKPOINTS} blocks with cache_control may be "
            f"provided. Found {len(marks)}."
        )
    seen_5m = False
    for ttl in marks:
        seen_5m = seen_5m or ttl == "5m"
        if ttl == "1h" and seen_5m:
            raise BadRequest(
                "A cache_control block with ttl='1h' must not come after one with ttl='5m'."
            )
    return segs


# -- reply planning -------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(
        b["text"]
        for b in content
        if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _plan(model: CatalogModel, body: dict[str, Any]) -> tuple[replies.Directives, str | None]:
    """Directives of the last user turn and the text reply to give (if any)."""
    messages = body["messages"]
    idx = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if idx < 0:
        return replies.Directives(), replies.default_reply(model.id, "")
    content = messages[idx].get("content")
    directives, rest = replies.parse_directives(_text_of(content))
    if directives.reply is not None:
        return directives, directives.reply
    if directives.tool:
        return directives, None
    results = (
        [b for b in content if b.get("type") == "tool_result"] if isinstance(content, list) else []
    )
    if results:  # a tool result answers the previous turn, not a new directive
        names = _tool_names(messages[:idx])
        ref = results[-1].get("tool_use_id", "")
        label = f"tool {names.get(ref, ref)}"
        return directives, replies.ack_reply(
            model.id, label, _text_of(results[-1].get("content") or "")
        )
    return directives, replies.default_reply(model.id, rest)


def _tool_names(messages: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            for b in content:
                if b.get("type") == "tool_use":
                    out[str(b.get("id"))] = str(b.get("name"))
    return out


def _tool_input(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"input": raw}
    return value if isinstance(value, dict) else {"input": value}


# -- handlers -------------------------------------------------------------------


async def count_tokens(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    if not _authorized(request):
        return error_response(401, "x-api-key header is required")
    try:
        body = await read_json_object(request)
        _validate(body, need_max_tokens=False)
        model = find_model(state, body["model"], "anthropic")
        if model is None:
            return error_response(404, f"model: {body['model']}")
        total = chain(prefix_segments(body)).total
    except BadRequest as exc:
        return error_response(exc.status, exc.message)
    state.count_tokens_calls[model.id] += 1
    return json_response({"input_tokens": total})


async def messages(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    if not _authorized(request):
        return error_response(401, "x-api-key header is required")
    try:
        body = await read_json_object(request)
        _validate(body, need_max_tokens=True)
        model = find_model(state, body["model"], "anthropic")
        if model is None:
            return error_response(404, f"model: {body['model']}")
        prefixes: Prefixes = chain(prefix_segments(body))
    except BadRequest as exc:
        return error_response(exc.status, exc.message)

    stream = bool(body.get("stream"))
    state.requests[model.id] += 1
    directives, text = _plan(model, body)
    outcome = decide_outcome(state, model.id, directives)
    if outcome.status is not None:
        resp = error_response(outcome.status)
        record(state, model.id, "messages", resp.status, stream)
        return resp

    usage = anthropic_apply(state.anthropic_cache, model.id, prefixes, model.min_cache_prefix)
    uncached = prefixes.total - usage.read - usage.write
    thinking_type = (body.get("thinking") or {}).get("type")
    thinking = replies.THINKING_TEXT if thinking_type in ("enabled", "adaptive") else None
    max_tokens: int = body["max_tokens"]

    blocks: list[dict[str, Any]] = []
    output_tokens = 0
    if thinking:
        blocks.append(
            {"type": "thinking", "thinking": thinking, "signature": replies.signature(thinking)}
        )
        output_tokens += text_tokens(thinking)
    capped = False
    if text is not None:
        text, capped = replies.cap_text(text, max(0, max_tokens - output_tokens))
        blocks.append({"type": "text", "text": text})
        output_tokens += text_tokens(text)
    if directives.tool and not capped:
        name, raw = directives.tool
        args = _tool_input(raw)
        blocks.append(
            {"type": "tool_use", "id": f"toolu_sim{state.next_id()}", "name": name, "input": args}
        )
        output_tokens += text_tokens(name) + json_tokens(args)
    stop_reason = "max_tokens" if capped else "tool_use" if directives.tool else "end_turn"

    usage_body: dict[str, Any] = {
        "input_tokens": uncached,
        "cache_creation_input_tokens": usage.write,
        "cache_read_input_tokens": usage.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.write_5m,
            "ephemeral_1h_input_tokens": usage.write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    message = {
        "id": f"msg_sim{state.next_id()}",
        "type": "message",
        "role": "assistant",
        "model": model.id,
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_body,
    }
    record(
        state,
        model.id,
        "messages",
        200,
        stream,
        input_tokens=uncached,
        cache_read=usage.read,
        cache_write_5m=usage.write_5m,
        cache_write_1h=usage.write_1h,
        output_tokens=output_tokens,
    )
    pacing = Pacing.of(model, uncached + usage.write, outcome)
    headers = {"request-id": _request_id()}
    if not stream:
        return await send_json_paced(
            request, state, message, pacing, output_tokens, drop=outcome.drop, headers=headers
        )
    return await send_stream(
        request, state, _events(message), pacing, drop=outcome.drop, headers=headers
    )


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps(data) + b"\n\n"


def _events(message: dict[str, Any]) -> list[tuple[bytes, str]]:
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    out = [
        (_sse("message_start", {"type": "message_start", "message": start}), META),
        (_sse("ping", {"type": "ping"}), META),
    ]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "thinking":
            empty: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": c} for c in replies.chunks(block["thinking"])
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "text":
            empty = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in replies.chunks(block["text"])]
        else:
            empty = {**block, "input": {}}
            raw = dumps(block["input"]).decode() if block["input"] else ""
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": c} for c in replies.chunks(raw)]
        start_ev = {"type": "content_block_start", "index": index, "content_block": empty}
        out.append((_sse("content_block_start", start_ev), META))
        for delta in deltas:
            ev = {"type": "content_block_delta", "index": index, "delta": delta}
            out.append((_sse("content_block_delta", ev), DELTA))
        stop_ev = {"type": "content_block_stop", "index": index}
        out.append((_sse("content_block_stop", stop_ev), META))
    # Like the live API, message_delta repeats the cumulative usage counters.
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    final_usage = {k: usage[k] for k in (*keys, "output_tokens")}
    delta_ev = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": final_usage,
    }
    out.append((_sse("message_delta", delta_ev), END))
    out.append((_sse("message_stop", {"type": "message_stop"}), END))
    return out
