"""The cascade's acceptance check: may a cheap model's answer be served?

Judged from the answer itself, in the client's wire format, in microseconds (no
second model, no network): an answer is rejected when it is

- truncated: stop reason ``max_tokens`` / ``model_context_window_exceeded``,
  chat ``finish_reason: length``, a Responses ``status: incomplete``;
- a refusal: stop reason ``refusal``, chat ``content_filter`` or ``refusal``,
  a Responses ``refusal`` part; or, in an answer without tool calls, text that
  opens with a refusal or hedging phrase (``[routing.cascade] refusal_patterns``);
- empty: no text and no tool calls;
- a bad tool call: a tool the request does not offer, or, for a JSON-schema
  tool, arguments that are not a JSON object or lack a ``required`` property.

It is a cheap filter for answers that are clearly unusable, not a judge of
correctness: a fluent wrong answer passes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

_HEAD = 300  # refusals and hedges open the answer; long answers are not scanned
# The codecs keep a translated call's unparseable arguments under these keys.
_RAW_ARG_KEYS = ({"_raw"}, {"_raw_arguments"})
_TRUNCATED = frozenset({"max_tokens", "model_context_window_exceeded", "length"})


@dataclass(slots=True)
class _Call:
    name: str
    args: dict[str, Any] | None  # None: not a JSON object
    freeform: bool = False  # a custom (grammar / free text) tool: no JSON expected


@dataclass(slots=True)
class _Answer:
    text: list[str] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    truncated: str | None = None
    refused: str | None = None
    failed: bool = False


@dataclass(slots=True)
class _Spec:
    json: bool
    required: tuple[str, ...] = ()


@lru_cache(maxsize=16)
def compile_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def check_answer(fmt: str, answer: dict[str, Any], request: dict[str, Any],
                 refusals: Sequence[re.Pattern[str]]) -> str | None:
    """None if ``answer`` (a non-streamed body in format ``fmt``) is acceptable,
    else the reason it is not, in words for the decision's reasons."""
    a = {"anthropic": _read_anthropic, "chat": _read_chat,
         "responses": _read_responses}[fmt](answer)
    if a.failed:
        return "upstream error: the response has status failed"
    if a.truncated:
        return f"truncated (stop reason {a.truncated})"
    if a.refused:
        return f"refusal ({a.refused})"
    text = "".join(a.text).strip()
    if not text and not a.calls:
        return "empty answer (no text and no tool calls)"
    if a.calls:
        tools = _request_tools(fmt, request)
        for c in a.calls:
            bad = _bad_call(c, tools)
            if bad:
                return bad
        return None  # "I'm not sure; let me look" before a tool call is work, not a hedge
    head = text[:_HEAD].replace("\u2019", "'")
    for p in refusals:
        m = p.search(head)
        if m:
            return f"refusal or hedging: {m.group(0)!r}"
    return None


def _bad_call(c: _Call, tools: dict[str, _Spec]) -> str | None:
    spec = tools.get(c.name)
    if spec is None:
        return f"tool call to {c.name!r}, which the request does not offer"
    if not spec.json or c.freeform:
        return None
    if c.args is None or set(c.args) in _RAW_ARG_KEYS:
        return f"arguments of the {c.name!r} call are not valid JSON"
    missing = [k for k in spec.required if k not in c.args]
    if missing:
        return f"the {c.name!r} call lacks required argument(s) {', '.join(missing)}"
    return None


def _json_object(raw: Any) -> dict[str, Any] | None:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return None
    if not raw.strip():
        return {}  # OpenAI sends "" for a call without arguments
    try:
        v = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return v if isinstance(v, dict) else None


def _list(v: Any) -> list[Any]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


# -- answers ------------------------------------------------------------------------


def _read_anthropic(j: dict[str, Any]) -> _Answer:
    a = _Answer()
    for b in _list(j.get("content")):
        if b.get("type") == "text":
            a.text.append(str(b.get("text") or ""))
        elif b.get("type") == "tool_use":  # server_tool_use ran at the provider
            a.calls.append(_Call(str(b.get("name") or ""), _json_object(b.get("input"))))
    stop = j.get("stop_reason")
    if stop in _TRUNCATED:
        a.truncated = str(stop)
    elif stop == "refusal":
        a.refused = "stop reason refusal"
    return a


def _read_chat(j: dict[str, Any]) -> _Answer:
    a = _Answer()
    choices = _list(j.get("choices"))
    ch = choices[0] if choices else {}
    msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
    content = msg.get("content")
    if isinstance(content, str):
        a.text.append(content)
    else:
        a.text += [str(p.get("text") or "") for p in _list(content)]
    for tc in _list(msg.get("tool_calls")):
        if tc.get("type") == "custom":
            c = tc.get("custom") if isinstance(tc.get("custom"), dict) else {}
            a.calls.append(_Call(str(c.get("name") or ""), None, freeform=True))
        else:
            fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
            a.calls.append(_Call(str(fn.get("name") or ""), _json_object(fn.get("arguments"))))
    fc = msg.get("function_call")
    if isinstance(fc, dict):
        a.calls.append(_Call(str(fc.get("name") or ""), _json_object(fc.get("arguments"))))
    finish = ch.get("finish_reason")
    if finish in _TRUNCATED:
        a.truncated = str(finish)
    elif finish == "content_filter":
        a.refused = "finish reason content_filter"
    elif isinstance(msg.get("refusal"), str) and msg["refusal"]:
        a.refused = "refusal message"
    return a


def _read_responses(j: dict[str, Any]) -> _Answer:
    a = _Answer()
    for item in _list(j.get("output")):
        t = item.get("type")
        if t == "message":
            for c in _list(item.get("content")):
                if c.get("type") == "output_text":
                    a.text.append(str(c.get("text") or ""))
                elif c.get("type") == "refusal":
                    a.refused = "refusal content"
        elif t == "function_call":
            a.calls.append(_Call(str(item.get("name") or ""), _json_object(item.get("arguments"))))
        elif t == "custom_tool_call":
            a.calls.append(_Call(str(item.get("name") or ""), None, freeform=True))
    if j.get("status") == "incomplete":
        d = j.get("incomplete_details")
        reason = d.get("reason") if isinstance(d, dict) else None
        if reason == "content_filter":
            a.refused = "incomplete: content_filter"
        else:
            a.truncated = f"incomplete: {reason or 'unknown'}"
    elif j.get("status") == "failed":
        a.failed = True
    return a


# -- the request's tools ------------------------------------------------------------------


def _required(schema: Any) -> tuple[str, ...]:
    req = schema.get("required") if isinstance(schema, dict) else None
    return tuple(r for r in req if isinstance(r, str)) if isinstance(req, list) else ()


def _request_tools(fmt: str, body: dict[str, Any]) -> dict[str, _Spec]:
    """Tool name -> what its calls must look like. Provider-hosted tools
    (web search...) are absent: their calls are not client tool calls."""
    out: dict[str, _Spec] = {}
    for t in _list(body.get("tools")):
        typ = t.get("type")
        if fmt == "anthropic":
            # client tools; Anthropic-defined ones (bash, text_editor) carry no schema
            out[str(t.get("name") or "")] = _Spec(True, _required(t.get("input_schema")))
        elif fmt == "chat":
            if typ == "custom" and isinstance(t.get("custom"), dict):
                out[str(t["custom"].get("name") or "")] = _Spec(False)
            elif isinstance(t.get("function"), dict):
                fn = t["function"]
                out[str(fn.get("name") or "")] = _Spec(True, _required(fn.get("parameters")))
        elif typ == "function":
            out[str(t.get("name") or "")] = _Spec(True, _required(t.get("parameters")))
        elif typ == "custom":
            out[str(t.get("name") or "")] = _Spec(False)
    for fn in _list(body.get("functions")):  # chat's legacy function calling
        out[str(fn.get("name") or "")] = _Spec(True, _required(fn.get("parameters")))
    return out
