"""Incremental Server-Sent Events parsing and encoding.

Upstream bodies arrive in arbitrary chunks; ``SSEParser.feed`` returns each
complete event as ``(event_name | None, data_bytes)`` and keeps the remainder.
"""

from __future__ import annotations

import orjson


class SSEParser:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """Add ``chunk``; return the events it completed, in order."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events: list[tuple[str | None, bytes]] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            name: str | None = None
            data_lines: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    v = line[5:]
                    data_lines.append(v[1:] if v.startswith(b" ") else v)
                elif line.startswith(b"event:"):
                    name = line[6:].strip().decode()
            if data_lines or name:
                events.append((name, b"\n".join(data_lines)))
        self._buf = buf[start:]
        return events

    def feed_marked(
        self, chunk: bytes, markers: tuple[bytes, ...]
    ) -> list[tuple[str | None, bytes]]:
        """Like ``feed``, but events are only split out when the pending bytes
        contain one of ``markers``; otherwise just the incomplete tail is kept.
        A pass-through only needs the few events that carry usage or the end,
        and most chunks are content deltas."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf or any(m in buf for m in markers):
            return self.feed(chunk)
        cut = buf.rfind(b"\n\n")
        self._buf = buf[cut + 2:] if cut >= 0 else buf
        return []

    def flush(self) -> list[tuple[str | None, bytes]]:
        """Events left in the buffer when the stream ended without a blank line."""
        if not self._buf.strip():
            self._buf = b""
            return []
        rest = self._buf
        self._buf = b""
        return self.feed(rest + b"\n\n")


def encode_event(data: dict, event: str | None = None) -> bytes:
    """One SSE event: ``event: X`` (if named) + ``data: {json}`` + blank line."""
    payload = orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
