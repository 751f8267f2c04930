"""Deterministic reply planning and the `[[sim:...]]` test directives."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field

from .tokens import text_tokens

_OPEN = "[[sim:"
_CLOSE = "]]"
_NAME = re.compile(r"([A-Za-z][\w-]*)")
_TOOL_NAME = re.compile(r"\s*[^\s\[\]{}]+\s*")
CHUNK_CHARS = 12  # ~3 tokens per streamed delta


@dataclass
class Directives:
    """Directives found in the last user text (see module docs in __init__)."""

    tool: tuple[str, str] | None = None  # (name, raw text after the name)
    error: int | None = None
    fail_first: list[tuple[str, int, int]] = field(default_factory=list)  # (text, n, status)
    reply: str | None = None
    slow_ms: float = 0.0
    drop: bool = False


def parse_directives(text: str) -> tuple[Directives, str]:
    """Return the directives in `text` and the text with them removed."""
    out = Directives()
    rest: list[str] = []
    pos = 0
    while (start := text.find(_OPEN, pos)) >= 0:
        rest.append(text[pos:start])
        body_start = start + len(_OPEN)
        m = _NAME.match(text, body_start)
        end = text.find(_CLOSE, body_start)
        if m is None or end < 0:
            rest.append(text[start:body_start])
            pos = body_start
            continue
        name = m.group(1)
        arg_start = m.end()
        if name == "tool":
            end = _tool_end(text, arg_start, end)
        arg = text[arg_start:end].strip()
        _apply(out, name, arg, text[start : end + len(_CLOSE)])
        pos = end + len(_CLOSE)
    rest.append(text[pos:])
    return out, "".join(rest)


def _tool_end(text: str, arg_start: int, default_end: int) -> int:
    """JSON args may themselves contain "]]"; end right after the decoded value."""
    m = _TOOL_NAME.match(text, arg_start)
    if m is None:
        return default_end
    try:
        _, stop = json.JSONDecoder().raw_decode(text, m.end())
    except ValueError:
        return default_end
    close = text.find(_CLOSE, stop)
    return close if close >= 0 and not text[stop:close].strip() else default_end


def _apply(out: Directives, name: str, arg: str, raw: str) -> None:
    parts = arg.split()
    try:
        if name == "tool" and parts:
            out.tool = (parts[0], arg[len(parts[0]) :].lstrip())
        elif name == "error" and parts:
            out.error = int(parts[0])
        elif name == "fail-first" and len(parts) >= 2:
            out.fail_first.append((raw, int(parts[0]), int(parts[1])))
        elif name == "reply":
            out.reply = arg
        elif name == "slow" and parts:
            out.slow_ms = float(parts[0])
        elif name == "drop":
            out.drop = True
    except ValueError:
        pass  # a malformed directive is just text to the model


def default_reply(model: str, user_text: str) -> str:
    snippet = " ".join(user_text.split())[:60] or "(empty prompt)"
    return (
        f'Simulated reply from {model}: this is a deterministic answer to "{snippet}". '
        "The simulator stands in for the provider so routing, spend and cache hits "
        "can be observed without API keys."
    )


def ack_reply(model: str, tool_ref: str, result_text: str) -> str:
    snippet = " ".join(result_text.split())[:60] or "(empty result)"
    return f"Simulated reply from {model}: received the result of {tool_ref}: {snippet}"


THINKING_TEXT = "Let me think about what is being asked before answering."


def signature(text: str) -> str:
    """Opaque, deterministic stand-in for Anthropic's thinking signature."""
    return base64.b64encode(hashlib.sha512(text.encode()).digest()).decode()


def cap_text(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Trim `text` to at most `max_tokens` estimator tokens; report if trimmed."""
    if max_tokens is None or text_tokens(text) <= max_tokens:
        return text, False
    cut = text[: max(0, max_tokens) * 4]
    while cut and text_tokens(cut) > max_tokens:
        cut = cut[:-1]
    return cut, True


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
