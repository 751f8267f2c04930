"""Keeping a request valid when its session moves to another model.

Thinking blocks carry signatures and Codex's reasoning items carry encrypted
content that only the model family that made them accepts. When a session
switches models (a new task routed elsewhere, or a fallback), those are
stripped from the history; the same-format pass-through then re-encodes the
body. Translated requests drop them in the codecs already.
"""

from __future__ import annotations

from typing import Any

_THINKING = ("thinking", "redacted_thinking")


def strip_reasoning(fmt: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """A copy of ``body`` without provider-bound reasoning, or None if it has none."""
    if fmt == "anthropic":
        msgs = body.get("messages")
        if not isinstance(msgs, list):
            return None
        changed = False
        out_msgs = []
        last_assistant_uses_tools = False
        for m in msgs:
            if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(
                    m.get("content"), list):
                kept = [b for b in m["content"]
                        if not (isinstance(b, dict) and b.get("type") in _THINKING)]
                if len(kept) != len(m["content"]):
                    changed = True
                    m = {**m, "content": kept or [{"type": "text", "text": "(thinking)"}]}
                last_assistant_uses_tools = any(
                    isinstance(b, dict) and b.get("type") == "tool_use" for b in kept)
            out_msgs.append(m)
        if not changed:
            return None
        out = {**body, "messages": out_msgs}
        th = body.get("thinking")
        if last_assistant_uses_tools and isinstance(th, dict) and th.get("type") != "disabled":
            # mid tool loop, thinking must precede tool_use with a valid signature;
            # without one, this step runs without thinking rather than failing
            out["thinking"] = {"type": "disabled"}
            oc = out.get("output_config")
            if isinstance(oc, dict) and "effort" in oc:
                out["output_config"] = {k: v for k, v in oc.items() if k != "effort"}
        return out
    if fmt == "responses":
        inp = body.get("input")
        if not isinstance(inp, list):
            return None
        kept = [i for i in inp if not (isinstance(i, dict) and i.get("type") == "reasoning")]
        if len(kept) == len(inp):
            return None
        return {**body, "input": kept}
    return None
