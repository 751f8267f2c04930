"""Wire-format codecs. ``codec(fmt)`` returns the module for a format; each
provides parse_request / build_request / parse_response / build_response,
StreamDecoder, StreamEncoder, UsageTap and usage_from_response."""

from __future__ import annotations

from types import ModuleType

_CODECS: dict[str, ModuleType] = {}


def codec(fmt: str) -> ModuleType:
    try:
        return _CODECS[fmt]
    except KeyError:
        pass
    # imported on first use (the codecs import this package); a function-level
    # import on every call costs more than the lookup it guards
    from switchman_daemon.protocol import anthropic, chat, responses

    _CODECS.update(anthropic=anthropic, chat=chat, responses=responses)
    return _CODECS[fmt]
