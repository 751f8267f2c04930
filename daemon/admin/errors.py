"""One mapping from daemon exceptions to gRPC status + ``switchman-error-kind``.

Servicers raise; the interceptor calls ``to_status`` once for every method.
An exception may name its own ``kind`` (a class or instance attribute from
``switchman_shared.admin_errors``); otherwise its type decides. Unexpected
exceptions are logged with a traceback and reported as a generic internal
error, so no detail (or secret) leaks to the client.
"""

from __future__ import annotations

import logging

import grpc
from pydantic import ValidationError

from switchman_daemon.config import ConfigError
from switchman_daemon.models import UnknownModel
from switchman_daemon.routing.router import NoCandidate
from switchman_daemon.secrets import SecretError
from switchman_shared import admin_errors as k

log = logging.getLogger("switchman.admin")

CODES: dict[str, grpc.StatusCode] = {
    k.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    k.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    k.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    k.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    k.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    k.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    k.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    k.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    k.INTERNAL: grpc.StatusCode.INTERNAL,
}


class AdminFailure(Exception):
    """Raised by admin-side daemon code with an explicit kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _kind_of(exc: BaseException) -> str:
    own = getattr(exc, "kind", None)
    if isinstance(own, str) and own in CODES:
        return own
    if isinstance(exc, NotImplementedError):
        return k.UNIMPLEMENTED
    if isinstance(exc, SecretError):
        return k.FAILED_PRECONDITION
    if isinstance(exc, UnknownModel | KeyError | LookupError):
        return k.NOT_FOUND
    if isinstance(exc, ConfigError | ValidationError | ValueError | NoCandidate):
        return k.INVALID_ARGUMENT
    if isinstance(exc, PermissionError):
        return k.PERMISSION_DENIED
    return k.INTERNAL


def _message(exc: BaseException) -> str:
    if isinstance(exc, UnknownModel):
        return f"unknown model {exc.args[0]!r}" if exc.args else "unknown model"
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, NotImplementedError):
        return str(exc) or "not implemented yet"
    return str(exc) or type(exc).__name__


def to_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str, str]:
    """(code, kind, user-facing message) for an exception raised by ``method``."""
    kind = _kind_of(exc)
    if kind == k.INTERNAL:
        log.error("admin call %s failed", method, exc_info=exc)
        return CODES[kind], kind, f"internal error in {method.rsplit('/', 1)[-1]} " \
            "(see the daemon log)"
    return CODES[kind], kind, _message(exc)


def trailing(kind: str) -> tuple[tuple[str, str], ...]:
    return ((k.ERROR_KIND_KEY, kind),)
