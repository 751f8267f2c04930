"""The router's own token estimate (for count_tokens on non-Anthropic upstreams
and routing constraints). Deliberately independent of the simulator's counter:
the simulator plays the provider's truth, this is the router's belief."""

from __future__ import annotations

from typing import Any

import orjson

_IMAGE_TOKENS = 1600  # a ~1 MP image, per Anthropic's sizing guidance
_PER_MESSAGE = 4


def chars_to_tokens(n_chars: int) -> int:
    """~3.6 characters per token for English prose and code."""
    return (n_chars * 10 + 35) // 36


def _text_tokens(text: str) -> int:
    return chars_to_tokens(len(text))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return 0
    n = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        t = block.get("type")
        if t in ("image", "input_image", "image_url"):
            n += _IMAGE_TOKENS
        elif t in ("text", "input_text", "output_text"):
            n += _text_tokens(str(block.get("text", "")))
        elif t == "tool_use":
            n += _text_tokens(block.get("name", "")) + _text_tokens(
                orjson.dumps(block.get("input", {})).decode())
        elif t == "tool_result":
            n += _content_tokens(block.get("content", ""))
        elif t == "thinking":
            n += _text_tokens(str(block.get("thinking", "")))
        else:
            n += _text_tokens(orjson.dumps(block).decode())
    return n


def estimate_request_tokens(body: dict[str, Any]) -> int:
    """Input tokens of an Anthropic- or OpenAI-shaped request body."""
    n = _content_tokens(body.get("system", ""))
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            n += _PER_MESSAGE + _content_tokens(m.get("content", ""))
    tools = body.get("tools")
    if tools:
        n += _text_tokens(orjson.dumps(tools).decode())
    return max(n, 1)
