"""The admin plane's error vocabulary, shared by the daemon and its clients.

A failed call carries a gRPC status code, a user-facing message (the status
details) and a ``kind`` in the trailing metadata key ``switchman-error-kind``,
so clients branch on ``kind`` rather than on message text.
"""

from __future__ import annotations

ERROR_KIND_KEY = "switchman-error-kind"

INVALID_ARGUMENT = "invalid_argument"
NOT_FOUND = "not_found"
ALREADY_EXISTS = "already_exists"
FAILED_PRECONDITION = "failed_precondition"  # e.g. no usable OS keyring
PERMISSION_DENIED = "permission_denied"
UNAUTHENTICATED = "unauthenticated"  # missing or wrong admin token
UNAVAILABLE = "unavailable"  # daemon not running / unreachable
UNIMPLEMENTED = "unimplemented"
INTERNAL = "internal"

KINDS = frozenset({
    INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, PERMISSION_DENIED,
    UNAUTHENTICATED, UNAVAILABLE, UNIMPLEMENTED, INTERNAL,
})


class AdminError(Exception):
    """An admin call failed; ``message`` is fit to show the user verbatim."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message
