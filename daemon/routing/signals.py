"""What routing needs to know about a request, read cheaply from the parsed body
and headers (never a full validation of the conversation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from switchman_daemon.routing.prefix import fallback_session_key

WireFormat = Literal["anthropic", "chat", "responses"]


@dataclass(slots=True)
class Signals:
    client_format: WireFormat
    requested_model: str
    stream: bool
    session_id: str | None = None
    agent_id: str | None = None
    role: str = "main"  # main | subagent | utility | compaction
    has_tools: bool = False
    has_images: bool = False
    wants_thinking: bool = False
    approx_input_tokens: int = 0
    user_agent: str = ""
    # Decision points: a new user task (vs. a tool-loop step inside one).
    new_task: bool = True
    task_id: str | None = None  # Codex turn_id when sent
    window_id: str | None = None  # Codex window (changes after compaction)
    task_text: str = ""  # the task's prompt text, for quality prediction
    cache_marked: bool = False  # Anthropic body carries cache_control
    ttl_1h: bool = False
    session_source: str = "none"  # header | metadata | prompt_cache_key | fingerprint | none
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_session(self) -> str:
        """The key caches are tracked under: a sub-agent has its own prefix, so
        it is its own cache session (and can switch at no cost to its parent)."""
        sid = self.session_id or "anonymous"
        if self.agent_id:
            return f"{sid}/{self.agent_id}"
        # utility calls (titles, commit messages) have their own short prefix;
        # tracked apart, they cannot disturb the main loop's cache or trend
        return f"{sid}/utility" if self.role == "utility" else sid


def _json_field(raw: Any, key: str) -> Any:
    """``metadata.user_id`` and Codex turn metadata are JSON inside a string."""
    if isinstance(raw, str) and raw.startswith("{"):
        try:
            val = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return val.get(key) if isinstance(val, dict) else None
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content
                         if isinstance(b, dict) and b.get("type") in
                         ("text", "input_text"))
    return ""


_TOOL_RESULT_TYPES = ("tool_result", "function_call_output", "custom_tool_call_output")
_COMPACTION_MARKERS = ("CONTEXT CHECKPOINT COMPACTION", "detailed summary of the conversation",
                       "summarize the conversation")
_UTILITY_MARKERS = ("Generate a concise, sentence-case title", "one-line Git commit message",
                    "concise, one-line Git commit", "Write a short title")


def _last_turn(fmt: str, body: dict[str, Any]) -> tuple[bool, str]:
    """(is a new task, the task's text) from the conversation's tail: a user turn
    that carries tool results is a step inside a task, plain user text starts one."""
    if fmt == "responses":
        inp = body.get("input")
        if isinstance(inp, str):
            return True, inp
        if not isinstance(inp, list) or not inp:
            return True, ""
        last = inp[-1]
        if isinstance(last, dict) and last.get("type") in _TOOL_RESULT_TYPES:
            return False, ""
        for item in reversed(inp):
            if isinstance(item, dict) and item.get("role") == "user":
                return True, _text_of(item.get("content"))
        return True, ""
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return True, ""
    for m in reversed(msgs):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role == "system":
            continue  # Aider and Claude Code put system messages late
        if role == "tool":
            return False, ""
        if role != "user":
            return True, ""
        c = m.get("content")
        if isinstance(c, list) and any(isinstance(b, dict) and b.get("type") in _TOOL_RESULT_TYPES
                                       for b in c):
            return False, ""
        return True, _text_of(c)
    return True, ""


def _cache_marks(body: dict[str, Any]) -> tuple[bool, bool]:
    """(any cache_control breakpoint, any with ttl 1h), looking where clients put
    them (top level, tools, system, the last few messages) rather than scanning
    a body that can be megabytes (a byte search costs ~0.6 ms per MB)."""
    marks: list[Any] = []
    top = body.get("cache_control")
    if isinstance(top, dict):
        marks.append(top)
    tools = body.get("tools")
    if isinstance(tools, list):
        marks.extend(t.get("cache_control") for t in tools[-2:] if isinstance(t, dict))
    system = body.get("system")
    if isinstance(system, list):
        marks.extend(b.get("cache_control") for b in system if isinstance(b, dict))
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in msgs[-4:]:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, list):
                marks.extend(b.get("cache_control") for b in c if isinstance(b, dict))
    found = [m for m in marks if isinstance(m, dict)]
    return bool(found), any(m.get("ttl") == "1h" for m in found)


def read_signals(
    fmt: WireFormat, body: dict[str, Any], headers: Any, body_size: int,
    raw: bytes | None = None,
) -> Signals:
    """Signals from a request. ``headers`` is a case-insensitive mapping."""
    ua = headers.get("user-agent", "")
    s = Signals(
        client_format=fmt,
        requested_model=body.get("model") or "",
        stream=bool(body.get("stream")),
        user_agent=ua,
        # ~4 bytes of JSON per token is close enough for routing constraints
        approx_input_tokens=body_size // 4,
    )
    tools = body.get("tools")
    s.has_tools = bool(tools)
    # Session identity, most specific first (see AGENT-CLIENTS.md).
    source = "header"
    sid = headers.get("x-claude-code-session-id") or headers.get("session-id")
    if not sid:
        sid = headers.get("x-session-id")
    if not sid:
        source = "prompt_cache_key"
        sid = body.get("prompt_cache_key") or None
    md = body.get("metadata")
    if not sid and isinstance(md, dict):
        source = "metadata"
        sid = _json_field(md.get("user_id"), "session_id") or md.get("session_id")
    if not sid:
        source = "fingerprint"
        sid = fallback_session_key(fmt, body)
    s.session_id = sid if isinstance(sid, str) and sid else None
    s.session_source = source if s.session_id else "none"
    s.new_task, s.task_text = _last_turn(fmt, body)
    s.agent_id = headers.get("x-claude-code-agent-id")
    if s.agent_id:
        s.role = "subagent"
    turn_md = headers.get("x-codex-turn-metadata")
    if turn_md:
        if _json_field(turn_md, "request_kind") == "compaction":
            s.role = "compaction"
        tid = _json_field(turn_md, "turn_id")
        s.task_id = tid if isinstance(tid, str) else None
    s.window_id = headers.get("x-codex-window-id")
    head = s.task_text[:400]
    if s.role == "main" and any(mk in head for mk in _COMPACTION_MARKERS):
        s.role = "compaction"
    if fmt == "anthropic":
        s.cache_marked, s.ttl_1h = _cache_marks(body)
    if fmt == "anthropic":
        th = body.get("thinking")
        s.wants_thinking = isinstance(th, dict) and th.get("type") in ("enabled", "adaptive")
        if not tools and isinstance(body.get("output_config"), dict) and body[
            "output_config"
        ].get("format"):
            s.role = "utility"  # e.g. Claude Code's title request
        sysp = body.get("system")
        sys_text = _text_of(sysp)[:2000]
        if s.role == "main" and any(mk in sys_text for mk in _UTILITY_MARKERS):
            s.role = "utility"
    elif fmt == "responses":
        r = body.get("reasoning")
        s.wants_thinking = isinstance(r, dict) and r.get("effort") not in (None, "minimal")
    else:
        s.wants_thinking = bool(body.get("reasoning_effort"))
        msgs = body.get("messages")
        if s.role == "main" and isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) \
                and msgs[0].get("role") == "system":
            head = _text_of(msgs[0].get("content"))[:2000]
            if any(mk in head for mk in _UTILITY_MARKERS):
                s.role = "utility"  # e.g. Aider's commit-message request
    return s
