"""Prefix fingerprint chains: what a request's cacheable prefix looks like, cheaply.

A provider caches a request's prefix in order tools -> system -> messages. The
router needs to know how much of this request's prefix it sent to a model
before, without hashing a megabyte of JSON per request (the decision budget is
0.2 ms for a 200K-token session). So each block gets a *proxy* fingerprint from
its role, type, sizes, tool ids and the first and last 48 characters of its
text, chained cumulatively, with a running token estimate. Appending a turn
extends the chain; editing, compacting or inserting media changes a link and
everything after it. A collision needs an edit that keeps every length and
both text ends identical, which agents do not make.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from switchman_daemon.tokens import chars_to_tokens

_EDGE = 48
_IMAGE_TOKENS = 1600


def _text_sig(text: str) -> tuple[int, str, str]:
    return len(text), text[:_EDGE], text[-_EDGE:]


_RESULT_NESTED = ("tool_result", "function_call_output", "custom_tool_call_output")


def _block_sig(block: Any) -> tuple[tuple[Any, ...], int, bool]:
    """(signature, token estimate, is_media) for one content block or string."""
    if isinstance(block, str):
        n, a, b = _text_sig(block)
        return ("s", n, a, b), chars_to_tokens(n), False
    if not isinstance(block, dict):
        return ("?",), 1, False
    t = block.get("type")
    if t in ("text", "input_text", "output_text"):
        n, a, b = _text_sig(str(block.get("text", "")))
        return ("t", n, a, b), chars_to_tokens(n), False
    if t in ("image", "input_image", "image_url", "document", "input_file"):
        src = block.get("source") or block.get("image_url") or block.get("file_id") or ""
        if isinstance(src, dict):
            src = src.get("data") or src.get("url") or ""
        s = str(src)
        return ("i", len(s), s[:_EDGE], s[-_EDGE:]), _IMAGE_TOKENS, True
    if t in ("tool_use", "function_call", "custom_tool_call"):
        args = block.get("input", block.get("arguments", ""))
        size = len(args) if isinstance(args, str) else len(str(args))
        return (("u", block.get("id") or block.get("call_id"), block.get("name"), size),
                chars_to_tokens(size) + 8, False)
    if t in ("tool_result", "function_call_output", "custom_tool_call_output"):
        c = block.get("content", block.get("output", ""))
        if isinstance(c, list):
            total = 0
            tok = 0
            media = False
            for sub in c:
                # one level only: result blocks are text or images, and a
                # pathological body must not drive the recursion depth
                if isinstance(sub, dict) and sub.get("type") in _RESULT_NESTED:
                    sig, k, m = ("nested", len(sub)), 4, False
                else:
                    sig, k, m = _block_sig(sub)
                total += hash(sig)
                tok += k
                media = media or m
            return ("r", block.get("tool_use_id") or block.get("call_id"), total), tok, media
        s = str(c)
        n, a, b = _text_sig(s)
        return ("r", block.get("tool_use_id") or block.get("call_id"), n, a, b), \
            chars_to_tokens(n), False
    if t in ("thinking", "redacted_thinking", "reasoning"):
        sig = block.get("signature") or block.get("encrypted_content") or block.get("data") or ""
        text = block.get("thinking") or ""
        return ("k", len(str(sig)), str(sig)[-_EDGE:], len(text)), chars_to_tokens(len(text)), False
    # unknown block: its key set and size proxy
    return ("o", t, len(block)), 4, False


@dataclass(slots=True)
class Chain:
    """Cumulative fingerprints and token counts, one per prefix block."""

    links: list[int]
    tokens: list[int]  # cumulative token estimate at each link
    media: int = 0  # number of media blocks (a new one usually breaks caches)
    # for incremental rebuilds: the header's signature, and per message its
    # signature and the number of links once it is included
    header_sig: int = 0
    msg_sigs: list[int] = field(default_factory=list)
    msg_ends: list[int] = field(default_factory=list)
    msg_media: list[int] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.tokens[-1] if self.tokens else 0

    def common_tokens(self, other: Chain | None) -> int:
        """Tokens of the longest prefix this chain shares with ``other``."""
        if other is None:
            return 0
        a, b = self.links, other.links
        n = min(len(a), len(b))
        if n == 0:
            return 0
        if a[n - 1] == b[n - 1]:  # the common case: pure append
            return self.tokens[n - 1]
        lo, hi = 0, n  # links are cumulative: the first mismatch is found by bisection
        while lo < hi:
            mid = (lo + hi) // 2
            if a[mid] == b[mid]:
                lo = mid + 1
            else:
                hi = mid
        return self.tokens[lo - 1] if lo else 0


def _messages_of(fmt: str, body: dict[str, Any]) -> list[Any]:
    if fmt == "responses":
        inp = body.get("input")
        if isinstance(inp, str):
            return [{"role": "user", "content": inp}]
        return inp if isinstance(inp, list) else []
    msgs = body.get("messages")
    return msgs if isinstance(msgs, list) else []


def _message_sigs(m: Any) -> tuple[list[tuple[Any, ...]], list[int], int]:
    """(block signatures, token estimates, media count) of one message or item."""
    if not isinstance(m, dict):
        return [], [], 0
    role = m.get("role") or m.get("type")
    content = m.get("content")
    sigs: list[tuple[Any, ...]] = []
    toks: list[int] = []
    media = 0
    if content is None and m.get("type"):
        sig, k, is_media = _block_sig(m)  # a Responses item
        return [(role, sig)], [k + 4], int(is_media)
    if isinstance(content, list):
        for blk in content:
            sig, k, is_media = _block_sig(blk)
            sigs.append((role, sig))
            toks.append(k)
            media += is_media
    else:
        sig, k, _ = _block_sig(content if isinstance(content, str) else "")
        sigs.append((role, sig, m.get("tool_call_id")))
        toks.append(k + 4)
    for tc in m.get("tool_calls") or ():
        if isinstance(tc, dict):
            fn = tc.get("function") or {}
            n = len(str(fn.get("arguments")))
            sigs.append(("tc", tc.get("id"), fn.get("name"), n))
            toks.append(chars_to_tokens(n) + 8)
    return sigs, toks, media


# messages re-checked when a session's previous chain is reused (first, last,
# and a few in between): compaction rewrites them all, appends touch none
_SAMPLES = 6


def build_chain(fmt: str, body: dict[str, Any], *, skip_attribution: bool = True,
                prev: Chain | None = None) -> Chain:
    """The prefix chain of a request body in its client format.

    With ``prev`` (the same session's last chain), messages it already covers
    are verified by sampling and reused, so an append-only turn costs only its
    new messages: a 200K-token session stays well inside the decision budget.
    """
    links: list[int] = []
    tokens: list[int] = []
    h = 0
    tok = 0

    def push(sig: tuple[Any, ...], k: int) -> None:
        nonlocal h, tok
        h = hash((h, sig))
        tok += k
        links.append(h)
        tokens.append(tok)

    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        # tools are static across a session: one link for the set, sized by names
        names = tuple(t.get("name") or t.get("type") or "" if isinstance(t, dict) else ""
                      for t in tools)
        desc = sum(len(str(t.get("description") or "")) for t in tools if isinstance(t, dict))
        push(("tools", names, desc), chars_to_tokens(desc) + 120 * len(tools))
    system = body.get("system") if fmt == "anthropic" else body.get("instructions")
    if isinstance(system, str) and system:
        sig, k, _ = _block_sig(system)
        push(sig, k)
    elif isinstance(system, list):
        for blk in system:
            if skip_attribution and isinstance(blk, dict) and str(blk.get("text", "")).startswith(
                    "x-anthropic-billing-header:"):
                continue  # per-session noise; not part of what a cache can share
            sig, k, _ = _block_sig(blk)
            push(sig, k)
    header_sig = h
    msgs = _messages_of(fmt, body)
    msg_sigs: list[int] = []
    msg_ends: list[int] = []
    msg_media: list[int] = []
    start = 0
    if prev is not None and prev.header_sig == header_sig and prev.msg_sigs \
            and len(msgs) >= len(prev.msg_sigs):
        n = len(prev.msg_sigs)
        step = max(1, n // _SAMPLES)
        idxs = {0, n - 1, *range(step, n, step)}
        if all(hash(tuple(_message_sigs(msgs[i])[0])) == prev.msg_sigs[i] for i in idxs):
            end = prev.msg_ends[-1]
            links = prev.links[:end]
            tokens = prev.tokens[:end]
            h = links[-1] if links else header_sig
            tok = tokens[-1] if tokens else tok
            msg_sigs = prev.msg_sigs[:n]
            msg_ends = prev.msg_ends[:n]
            msg_media = prev.msg_media[:n]
            start = n
    for m in msgs[start:]:
        sigs, toks, media = _message_sigs(m)
        for sig, k in zip(sigs, toks, strict=True):
            push(sig, k)
        msg_sigs.append(hash(tuple(sigs)))
        msg_ends.append(len(links))
        msg_media.append(media)
    return Chain(links, tokens, sum(msg_media), header_sig, msg_sigs, msg_ends, msg_media)


def fallback_session_key(fmt: str, body: dict[str, Any]) -> str | None:
    """A session key for clients that send none (Aider, plain SDK apps): the
    system prompt and the first user message, which stay fixed for a
    conversation."""
    system: Any = body.get("system") if fmt == "anthropic" else body.get("instructions")
    first_user: Any = None
    for m in _messages_of(fmt, body):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role in ("system", "developer") and system is None:
            system = m.get("content")
        elif role == "user":
            first_user = m.get("content")
            break
    if system is None and first_user is None:
        return None
    # crc32 of the two texts: stable across restarts (str hashes are salted per
    # process) and far cheaper than a cryptographic digest on the hot path
    a = zlib.crc32(_plain(system).encode("utf-8", "replace"))
    b = zlib.crc32(_plain(first_user).encode("utf-8", "replace"))
    return f"fp-{a:08x}{b:08x}"


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content[:4000]
    if isinstance(content, list):
        # text blocks only: repr() of an arbitrary (maybe absurdly nested) value
        # would recurse
        return "\n".join(str(b.get("text", "")) for b in content
                         if isinstance(b, dict))[:4000]
    return ""
