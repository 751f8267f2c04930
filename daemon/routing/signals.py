"""What routing needs to know about a request, read cheaply from the parsed body
and headers (never a full validation of the conversation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

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
    extra: dict[str, Any] = field(default_factory=dict)


def _json_field(raw: Any, key: str) -> Any:
    """``metadata.user_id`` and Codex turn metadata are JSON inside a string."""
    if isinstance(raw, str) and raw.startswith("{"):
        try:
            val = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return val.get(key) if isinstance(val, dict) else None
    return None


def read_signals(
    fmt: WireFormat, body: dict[str, Any], headers: Any, body_size: int
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
    sid = headers.get("x-claude-code-session-id") or headers.get("session-id")
    if not sid:
        sid = headers.get("x-session-id")
    if not sid:
        sid = body.get("prompt_cache_key") or None
    md = body.get("metadata")
    if not sid and isinstance(md, dict):
        sid = _json_field(md.get("user_id"), "session_id") or md.get("session_id")
    s.session_id = sid if isinstance(sid, str) and sid else None
    s.agent_id = headers.get("x-claude-code-agent-id")
    if s.agent_id:
        s.role = "subagent"
    turn_md = headers.get("x-codex-turn-metadata")
    if turn_md and _json_field(turn_md, "request_kind") == "compaction":
        s.role = "compaction"
    if fmt == "anthropic":
        th = body.get("thinking")
        s.wants_thinking = isinstance(th, dict) and th.get("type") in ("enabled", "adaptive")
        if not tools and isinstance(body.get("output_config"), dict) and body[
            "output_config"
        ].get("format"):
            s.role = "utility"  # e.g. Claude Code's title request
    elif fmt == "responses":
        r = body.get("reasoning")
        s.wants_thinking = isinstance(r, dict) and r.get("effort") not in (None, "minimal")
    else:
        s.wants_thinking = bool(body.get("reasoning_effort"))
    return s
