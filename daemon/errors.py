"""Errors a client can see, rendered in the client's own API format.

Every failure on the request path becomes an ``ApiError`` with a kind; ``render``
turns it into the status code and JSON body that the client's SDK parses
(Anthropic ``{"type":"error","error":{...}}`` or OpenAI ``{"error":{...}}``).
No stack trace or provider secret ever goes into ``message``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

import orjson

WireFormat = Literal["anthropic", "chat", "responses"]


class ErrorKind(StrEnum):
    invalid_request = "invalid_request"
    authentication = "authentication"
    permission = "permission"
    not_found = "not_found"
    request_too_large = "request_too_large"
    rate_limit = "rate_limit"
    budget_exceeded = "budget_exceeded"
    api_error = "api_error"
    overloaded = "overloaded"
    timeout = "timeout"
    upstream_unavailable = "upstream_unavailable"


# kind -> (default status, anthropic type, openai type, openai code)
_KINDS: dict[ErrorKind, tuple[int, str, str, str | None]] = {
    ErrorKind.invalid_request: (400, "invalid_request_error", "invalid_request_error", None),
    ErrorKind.authentication: (401, "authentication_error", "invalid_request_error",
                               "invalid_api_key"),
    ErrorKind.permission: (403, "permission_error", "invalid_request_error", "permission_denied"),
    ErrorKind.not_found: (404, "not_found_error", "invalid_request_error", "model_not_found"),
    ErrorKind.request_too_large: (413, "request_too_large", "invalid_request_error",
                                  "request_too_large"),
    ErrorKind.rate_limit: (429, "rate_limit_error", "requests", "rate_limit_exceeded"),
    ErrorKind.budget_exceeded: (429, "rate_limit_error", "insufficient_quota",
                                "insufficient_quota"),
    ErrorKind.api_error: (500, "api_error", "server_error", "server_error"),
    ErrorKind.overloaded: (529, "overloaded_error", "server_error", "server_overloaded"),
    ErrorKind.timeout: (504, "timeout_error", "server_error", "timeout"),
    ErrorKind.upstream_unavailable: (502, "api_error", "server_error", "upstream_unavailable"),
}

_STATUS_TO_KIND: dict[int, ErrorKind] = {
    400: ErrorKind.invalid_request,
    401: ErrorKind.authentication,
    403: ErrorKind.permission,
    404: ErrorKind.not_found,
    413: ErrorKind.request_too_large,
    422: ErrorKind.invalid_request,
    429: ErrorKind.rate_limit,
    500: ErrorKind.api_error,
    502: ErrorKind.upstream_unavailable,
    503: ErrorKind.overloaded,
    504: ErrorKind.timeout,
    529: ErrorKind.overloaded,
}


class ApiError(Exception):
    """An error that is reported to the client in its own API format."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status if status is not None else _KINDS[kind][0]
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ApiError({self.kind.value}, {self.status}, {self.message!r})"


def kind_for_status(status: int) -> ErrorKind:
    """The error kind an upstream HTTP status maps to."""
    if status in _STATUS_TO_KIND:
        return _STATUS_TO_KIND[status]
    return ErrorKind.invalid_request if 400 <= status < 500 else ErrorKind.api_error


def error_body(fmt: WireFormat, err: ApiError, request_id: str | None = None) -> dict:
    """The JSON error object for ``fmt``."""
    _, a_type, o_type, o_code = _KINDS[err.kind]
    if fmt == "anthropic":
        body: dict = {"type": "error", "error": {"type": a_type, "message": err.message}}
        if request_id:
            body["request_id"] = request_id
        return body
    return {
        "error": {
            "message": err.message,
            "type": o_type,
            "param": err.param,
            "code": err.code if err.code is not None else o_code,
        }
    }


def render(fmt: WireFormat, err: ApiError, request_id: str | None = None) -> tuple[int, bytes]:
    """Status code and serialised body for ``err`` in the client's format."""
    return err.status, orjson.dumps(error_body(fmt, err, request_id))
