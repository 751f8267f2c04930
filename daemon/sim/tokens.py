"""Deterministic token estimator used as the simulated providers' "tokenizer".

It only has to be stable and roughly proportional to real tokenizers: about
4 UTF-8 bytes per token for text, a flat cost per image, JSON size for
structured values (tool definitions, tool arguments).
"""

from __future__ import annotations

from typing import Any

import orjson

IMAGE_TOKENS = 1600

_TEXT_KEYS = ("text", "thinking", "input_text", "output_text", "refusal")
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})


def text_tokens(text: str) -> int:
    """ceil(utf-8 bytes / 4)."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4


def json_tokens(value: Any) -> int:
    return text_tokens(canonical_json(value).decode())


def canonical_json(value: Any) -> bytes:
    """Stable bytes for hashing/counting; never raises on odd values."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)


def strip_keys(block: Any, keys: frozenset[str]) -> Any:
    """Shallow copy of a dict without `keys` (e.g. cache_control, client ids)."""
    if isinstance(block, dict) and keys.intersection(block):
        return {k: v for k, v in block.items() if k not in keys}
    return block


def content_tokens(content: Any) -> int:
    """Tokens of a message `content` (string or list of typed parts) in either API."""
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        return sum(part_tokens(p) for p in content)
    return json_tokens(content)


def part_tokens(part: Any) -> int:
    """Tokens of one content block / part / item of any provider's shape."""
    if isinstance(part, str):
        return text_tokens(part)
    if not isinstance(part, dict):
        return json_tokens(part)
    kind = part.get("type")
    if isinstance(kind, str) and kind in _IMAGE_TYPES:
        return IMAGE_TOKENS
    if kind == "document":
        source = part.get("source")
        if isinstance(source, dict) and source.get("type") == "text":
            return text_tokens(str(source.get("data", "")))
        return IMAGE_TOKENS
    for key in _TEXT_KEYS:
        if isinstance(part.get(key), str):
            return text_tokens(part[key])
    if kind in ("tool_use", "server_tool_use"):
        return text_tokens(str(part.get("name", ""))) + json_tokens(part.get("input", {}))
    if kind == "tool_result":
        return content_tokens(part.get("content"))
    if kind == "redacted_thinking":
        return text_tokens(str(part.get("data", "")))
    # Chat/Responses messages carry `content`; calls carry arguments/input/output.
    if "content" in part and "role" in part:
        return content_tokens(part.get("content")) + _chat_extra_tokens(part)
    if kind == "function_call":
        return text_tokens(str(part.get("name", ""))) + text_tokens(str(part.get("arguments", "")))
    if kind == "custom_tool_call":
        return text_tokens(str(part.get("name", ""))) + text_tokens(str(part.get("input", "")))
    if isinstance(kind, str) and kind.endswith("_call_output"):
        out = part.get("output")
        return content_tokens(out) if isinstance(out, str | list) else json_tokens(out)
    return json_tokens(strip_keys(part, frozenset({"id", "cache_control"})))


def _chat_extra_tokens(msg: dict[str, Any]) -> int:
    calls = msg.get("tool_calls")
    return json_tokens(calls) if calls else 0
