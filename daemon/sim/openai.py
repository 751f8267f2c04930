"""Simulated OpenAI APIs: `/v1/chat/completions` and `/v1/responses`."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from switchman_shared.catalog import CatalogModel

from . import replies
from .cache import OPENAI_TTL, Segment, chain, openai_apply, segment
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
from .state import SIM_STATE, SimState
from .tokens import json_tokens, part_tokens, strip_keys, text_tokens

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", None, "You are not allowed to access this resource."),
    404: ("invalid_request_error", "not_found", "Not found."),
    429: (
        "tokens",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min. Please try again in 1s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_REASONING_TOKENS = {"none": 0, "minimal": 8, "low": 16, "medium": 32, "high": 64, "xhigh": 128}
_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NO_ID = frozenset({"id"})


def error_response(
    status: int, message: str | None = None, *, param: str | None = None, code: str | None = None
) -> web.Response:
    if status == 529:
        status = 503  # OpenAI has no 529; overload is a 503
    etype, default_code, default_message = _ERRORS.get(status, _ERRORS[500])
    headers = {"x-request-id": "req_sim" + uuid.uuid4().hex[:24]}
    if status == 429:
        headers["retry-after"] = "1"
    body = {
        "error": {
            "message": message or default_message,
            "type": etype,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return json_response(body, status=status, headers=headers)


def _missing_key() -> web.Response:
    return error_response(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        code="",
    )


def _unknown_model(name: Any) -> web.Response:
    return error_response(
        404,
        f"The model `{name}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def _int_param(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"Invalid type for '{name}': expected an integer.", name)
    if value < minimum:
        raise BadRequest(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            name,
        )
    return value


def _common_checks(body: dict[str, Any]) -> None:
    if not isinstance(body.get("model"), str):
        raise BadRequest("you must provide a model parameter", "model")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise BadRequest("Invalid type for 'stream': expected a boolean.", "stream")
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise BadRequest("Invalid type for 'tools': expected an array of objects.", "tools")
    key = body.get("prompt_cache_key")
    if key is not None and not isinstance(key, str):
        raise BadRequest("Invalid type for 'prompt_cache_key': expected a string.")


def _reasoning_tokens(model: CatalogModel, effort: Any) -> int:
    return _REASONING_TOKENS.get(effort, 0) if model.thinking and isinstance(effort, str) else 0


def _cache_ttl(body: dict[str, Any]) -> float:
    return 86400.0 if body.get("prompt_cache_retention") == "24h" else OPENAI_TTL


def _parts_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(
        p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


@dataclass
class Plan:
    """What the simulated model answers: text and/or one tool call."""

    directives: replies.Directives
    text: str | None
    tool_kind: str = "function"  # or "custom"


def _plan(model: CatalogModel, last: Any, user_text: str, tool_kinds: dict[str, str]) -> Plan:
    """`last` is the final message/item; `user_text` the last user message text."""
    directives, rest = replies.parse_directives(user_text)
    if isinstance(last, dict):
        kind = str(last.get("type") or "")
        if last.get("role") in ("tool", "function") or kind.endswith("_call_output"):
            ref = last.get("tool_call_id") or last.get("call_id") or last.get("name") or ""
            output = last.get("content", last.get("output"))
            text = (
                output if isinstance(output, str) else _parts_text(output) or dumps(output).decode()
            )
            ack = replies.ack_reply(model.id, f"call {ref}", text)
            return Plan(replies.Directives(), ack)
    kind = tool_kinds.get(directives.tool[0], "function") if directives.tool else "function"
    if directives.reply is not None:
        return Plan(directives, directives.reply, kind)
    if directives.tool:
        return Plan(directives, None, kind)
    return Plan(directives, replies.default_reply(model.id, rest), kind)


def _function_args(raw: str) -> str:
    """Arguments as a JSON object string, like a real model emits."""
    if not raw:
        return "{}"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = {"input": raw}
    return dumps(value if isinstance(value, dict) else {"input": value}).decode()


def _prefix(tools: list[Any], head: list[Any], items: list[Any]) -> list[Segment]:
    """Tools and instructions first, then the message/item sequence."""
    segs = [segment(("tool", t), json_tokens(t)) for t in tools]
    segs += [segment(("instructions", h), text_tokens(h)) for h in head]
    for item in items:
        clean = strip_keys(item, _NO_ID)  # client-made item ids are not prompt tokens
        segs.append(segment(("item", clean), part_tokens(clean)))
    return segs


def _auth(request: web.Request) -> bool:
    return bool(request.headers.get("authorization"))


@dataclass
class Generated:
    text: str | None
    capped: bool
    tool: tuple[str, str] | None  # (name, arguments-or-input)
    reasoning: int
    output_tokens: int


def _generate(plan: Plan, max_out: int | None, reasoning: int) -> Generated:
    text, capped = None, False
    budget = None if max_out is None else max(0, max_out - reasoning)
    out = reasoning
    if plan.text is not None:
        text, capped = replies.cap_text(plan.text, budget)
        out += text_tokens(text)
    tool = None
    if plan.directives.tool and not capped:
        name, raw = plan.directives.tool
        tool = (name, raw if plan.tool_kind == "custom" else _function_args(raw))
        out += text_tokens(name) + text_tokens(tool[1])
    return Generated(text, capped, tool, reasoning, out)


# -- chat completions -----------------------------------------------------------


def _validate_chat(body: dict[str, Any]) -> None:
    _common_checks(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("Invalid 'messages': expected a non-empty array.", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"Invalid type for 'messages[{i}]': expected an object.")
        if not isinstance(msg.get("role"), str) or msg["role"] not in _CHAT_ROLES:
            raise BadRequest(
                f"Invalid value: '{msg.get('role')}'. Supported values are: 'system', "
                "'assistant', 'user', 'function', 'tool', and 'developer'.",
                f"messages[{i}].role",
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"Invalid type for 'messages[{i}].content': expected one of a string or "
                "array of objects.",
                f"messages[{i}].content",
            )
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("Invalid type for 'stream_options': expected an object.", "stream_options")
    if options is not None and not body.get("stream"):
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )


def _chat_tool_kinds(tools: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tools:
        kind = t.get("type") if isinstance(t.get("type"), str) else "function"
        spec = t.get(kind) if isinstance(t.get(kind), dict) else {}
        if isinstance(spec.get("name"), str):
            out[spec["name"]] = "custom" if kind == "custom" else "function"
    return out


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    if not _auth(request):
        return _missing_key()
    try:
        body = await read_json_object(request)
        _validate_chat(body)
        max_out = _int_param(body, "max_completion_tokens", 1) or _int_param(body, "max_tokens", 1)
    except BadRequest as exc:
        return error_response(exc.status, exc.message, param=exc.param)
    model = find_model(state, body["model"], "openai")
    if model is None:
        return _unknown_model(body["model"])

    messages: list[Any] = body["messages"]
    tools: list[Any] = body.get("tools") or []
    stream = bool(body.get("stream"))
    state.requests[model.id] += 1
    user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    plan = _plan(model, messages[-1], _parts_text(user.get("content")), _chat_tool_kinds(tools))
    outcome = decide_outcome(state, model.id, plan.directives)
    if outcome.status is not None:
        resp = error_response(outcome.status)
        record(state, model.id, "chat", resp.status, stream)
        return resp

    prefixes = chain(_prefix(tools, [], messages))
    cached = openai_apply(
        state.openai_cache, model.id, prefixes, body.get("prompt_cache_key") or "", _cache_ttl(body)
    )
    gen = _generate(plan, max_out, _reasoning_tokens(model, body.get("reasoning_effort")))
    finish = "length" if gen.capped else "tool_calls" if gen.tool else "stop"
    tool_calls = None
    if gen.tool:
        call: dict[str, Any] = {"id": f"call_sim{state.next_id()}", "type": plan.tool_kind}
        if plan.tool_kind == "custom":
            call["custom"] = {"name": gen.tool[0], "input": gen.tool[1]}
        else:
            call["function"] = {"name": gen.tool[0], "arguments": gen.tool[1]}
        tool_calls = [call]
    usage = {
        "prompt_tokens": prefixes.total,
        "completion_tokens": gen.output_tokens,
        "total_tokens": prefixes.total + gen.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": gen.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    _record_openai(state, model.id, "chat", stream, prefixes.total, cached, gen.output_tokens)
    base = {
        "id": f"chatcmpl-sim{state.next_id()}",
        "created": int(time.time()),
        "model": model.id,
        "service_tier": "default",
        "system_fingerprint": "fp_sim",
    }
    pacing = Pacing.of(model, prefixes.total - cached, outcome)
    headers = {"x-request-id": "req_sim" + uuid.uuid4().hex[:24]}
    if not stream:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": gen.text,
            "refusal": None,
            "annotations": [],
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        completion = {
            **base,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage,
        }
        return await send_json_paced(
            request,
            state,
            completion,
            pacing,
            gen.output_tokens,
            drop=outcome.drop,
            headers=headers,
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    events = _chat_events(base, gen, tool_calls, finish, usage if include_usage else None)
    return await send_stream(request, state, events, pacing, drop=outcome.drop, headers=headers)


def _chat_events(
    base: dict[str, Any],
    gen: Generated,
    tool_calls: list[dict[str, Any]] | None,
    finish: str,
    usage: dict[str, Any] | None,
) -> list[tuple[bytes, str]]:
    chunk_base = {**base, "object": "chat.completion.chunk"}
    if usage is not None:
        chunk_base["usage"] = None  # with include_usage every chunk carries usage: null

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return b"data: " + dumps({**chunk_base, "choices": [choice]}) + b"\n\n"

    out = [(chunk({"role": "assistant", "content": "", "refusal": None}), META)]
    if gen.text:
        out += [(chunk({"content": c}), DELTA) for c in replies.chunks(gen.text)]
    for i, call in enumerate(tool_calls or []):
        kind = call["type"]
        field = "input" if kind == "custom" else "arguments"
        head = {"index": i, "id": call["id"], "type": kind, kind: {**call[kind], field: ""}}
        out.append((chunk({"tool_calls": [head]}), DELTA))
        for c in replies.chunks(call[kind][field]):
            out.append((chunk({"tool_calls": [{"index": i, kind: {field: c}}]}), DELTA))
    out.append((chunk({}, finish), END))
    if usage is not None:
        final = {**chunk_base, "choices": [], "usage": usage}
        out.append((b"data: " + dumps(final) + b"\n\n", END))
    out.append((b"data: [DONE]\n\n", END))
    return out


def _record_openai(
    state: SimState, model: str, api: str, stream: bool, total: int, cached: int, output: int
) -> None:
    record(
        state,
        model,
        api,
        200,
        stream,
        input_tokens=total - cached,
        cache_read=cached,
        output_tokens=output,
    )


# -- responses ------------------------------------------------------------------


def _validate_responses(body: dict[str, Any]) -> list[Any]:
    """Validate and return the input as a list of items."""
    _common_checks(body)
    if body.get("previous_response_id"):
        # The simulator stores nothing, exactly like store:false upstream.
        raise BadRequest(
            f"Previous response with id '{body['previous_response_id']}' not found.",
            "previous_response_id",
        )
    raw = body.get("input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("Invalid type for 'instructions': expected a string.", "instructions")
    if raw is None:
        if not instructions:
            raise BadRequest("Missing required parameter: 'input'.", "input")
        return []
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise BadRequest(
            "Invalid type for 'input': expected one of a string or array of input items.", "input"
        )
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]")
        if item.get("type", "message") == "message" and "role" not in item:
            raise BadRequest(f"Missing required parameter: 'input[{i}].role'.", f"input[{i}].role")
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("type") in ("function", "custom") and not isinstance(tool.get("name"), str):
            raise BadRequest(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name")
    return raw


async def responses(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    if not _auth(request):
        return _missing_key()
    try:
        body = await read_json_object(request)
        items = _validate_responses(body)
        max_out = _int_param(body, "max_output_tokens", 16)
    except BadRequest as exc:
        return error_response(exc.status, exc.message, param=exc.param)
    model = find_model(state, body["model"], "openai")
    if model is None:
        return _unknown_model(body["model"])

    tools: list[Any] = body.get("tools") or []
    stream = bool(body.get("stream"))
    state.requests[model.id] += 1
    user = next(
        (
            it
            for it in reversed(items)
            if it.get("role") == "user" and it.get("type", "message") == "message"
        ),
        {},
    )
    kinds = {t["name"]: t.get("type", "function") for t in tools if isinstance(t.get("name"), str)}
    last = items[-1] if items else None
    plan = _plan(model, last, _parts_text(user.get("content")), kinds)
    outcome = decide_outcome(state, model.id, plan.directives)
    if outcome.status is not None:
        resp = error_response(outcome.status)
        record(state, model.id, "responses", resp.status, stream)
        return resp

    instructions = body.get("instructions")
    prefixes = chain(_prefix(tools, [instructions] if instructions else [], items))
    cached = openai_apply(
        state.openai_cache, model.id, prefixes, body.get("prompt_cache_key") or "", _cache_ttl(body)
    )
    reasoning_cfg = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    gen = _generate(plan, max_out, _reasoning_tokens(model, reasoning_cfg.get("effort")))
    _record_openai(state, model.id, "responses", stream, prefixes.total, cached, gen.output_tokens)

    output: list[dict[str, Any]] = []
    if gen.reasoning:
        include = body.get("include") if isinstance(body.get("include"), list) else []
        encrypted = base64.b64encode(replies.THINKING_TEXT.encode()).decode()
        output.append(
            {
                "id": f"rs_sim{state.next_id()}",
                "type": "reasoning",
                "summary": [],
                "encrypted_content": encrypted
                if "reasoning.encrypted_content" in include
                else None,
            }
        )
    if gen.text is not None:
        part = {"type": "output_text", "text": gen.text, "annotations": [], "logprobs": []}
        output.append(
            {
                "id": f"msg_sim{state.next_id()}",
                "type": "message",
                "status": "incomplete" if gen.capped else "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    if gen.tool:
        custom = plan.tool_kind == "custom"
        output.append(
            {
                "id": f"{'ctc' if custom else 'fc'}_sim{state.next_id()}",
                "type": "custom_tool_call" if custom else "function_call",
                "status": "completed",
                "call_id": f"call_sim{state.next_id()}",
                "name": gen.tool[0],
                "input" if custom else "arguments": gen.tool[1],
            }
        )
    usage = {
        "input_tokens": prefixes.total,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": gen.output_tokens,
        "output_tokens_details": {"reasoning_tokens": gen.reasoning},
        "total_tokens": prefixes.total + gen.output_tokens,
    }
    now = int(time.time())
    response = {
        "id": f"resp_sim{state.next_id()}",
        "object": "response",
        "created_at": now,
        "status": "incomplete" if gen.capped else "completed",
        "completed_at": None if gen.capped else now,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if gen.capped else None,
        "instructions": instructions,
        "max_output_tokens": max_out,
        "model": model.id,
        "output": output,
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning_cfg.get("effort"), "summary": None},
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": tools,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }
    pacing = Pacing.of(model, prefixes.total - cached, outcome)
    headers = {"x-request-id": "req_sim" + uuid.uuid4().hex[:24]}
    if not stream:
        return await send_json_paced(
            request, state, response, pacing, gen.output_tokens, drop=outcome.drop, headers=headers
        )
    events = _responses_events(response)
    return await send_stream(request, state, events, pacing, drop=outcome.drop, headers=headers)


def _responses_events(response: dict[str, Any]) -> list[tuple[bytes, str]]:
    out: list[tuple[bytes, str]] = []

    def emit(kind: str, data: dict[str, Any], mark: str = META) -> None:
        event = {"type": kind, "sequence_number": len(out), **data}
        out.append((b"event: " + kind.encode() + b"\ndata: " + dumps(event) + b"\n\n", mark))

    pending = {
        **response,
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }
    emit("response.created", {"response": pending})
    emit("response.in_progress", {"response": pending})
    for index, item in enumerate(response["output"]):
        item_id = item["id"]
        where = {"item_id": item_id, "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            added = {**item, "status": "in_progress", "content": []}
            emit("response.output_item.added", {"output_index": index, "item": added})
            empty_part = {**part, "text": ""}
            emit("response.content_part.added", {**where, "content_index": 0, "part": empty_part})
            for c in replies.chunks(part["text"]):
                delta = {**where, "content_index": 0, "delta": c, "logprobs": []}
                emit("response.output_text.delta", delta, DELTA)
            done = {**where, "content_index": 0, "text": part["text"], "logprobs": []}
            emit("response.output_text.done", done)
            emit("response.content_part.done", {**where, "content_index": 0, "part": part})
        elif item["type"] in ("function_call", "custom_tool_call"):
            field = "arguments" if item["type"] == "function_call" else "input"
            prefix = (
                "response.function_call_arguments"
                if field == "arguments"
                else "response.custom_tool_call_input"
            )
            added = {**item, "status": "in_progress", field: ""}
            emit("response.output_item.added", {"output_index": index, "item": added})
            for c in replies.chunks(item[field]):
                emit(f"{prefix}.delta", {**where, "delta": c}, DELTA)
            done_extra = {"name": item["name"]} if field == "arguments" else {}
            emit(f"{prefix}.done", {**where, field: item[field], **done_extra})
        else:
            emit("response.output_item.added", {"output_index": index, "item": item})
        emit("response.output_item.done", {"output_index": index, "item": item})
    terminal = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    emit(terminal, {"response": response}, END)
    return out
