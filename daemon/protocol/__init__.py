"""Wire-format codecs. ``codec(fmt)`` returns the module for a format; each
provides parse_request / build_request / parse_response / build_response,
StreamDecoder, StreamEncoder, UsageTap and usage_from_response."""

from __future__ import annotations

from types import ModuleType


def codec(fmt: str) -> ModuleType:
    from switchman_daemon.protocol import anthropic, chat, responses

    return {"anthropic": anthropic, "chat": chat, "responses": responses}[fmt]
