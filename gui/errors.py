"""The one place that turns failures into what the user reads.

Every page reports failures through ``Connection.report`` which calls
``describe``; the main window shows the result in its status bar and in a
dismissable banner. Nothing else formats error text.
"""

from __future__ import annotations

import grpc

from switchman_shared import admin_errors as k
from switchman_shared.admin_errors import AdminError


def as_admin_error(e: BaseException) -> AdminError:
    """Any exception from a call as an AdminError (unknown ones are internal)."""
    if isinstance(e, AdminError):
        return e
    if isinstance(e, grpc.RpcError):
        from switchman_shared.admin_client import to_admin_error
        return to_admin_error(e)
    if isinstance(e, ValueError) and "closed channel" in str(e):
        return AdminError(k.UNAVAILABLE, "the connection to the daemon was closed")
    return AdminError(k.INTERNAL, f"{type(e).__name__}: {e}")


def describe(err: BaseException, action: str = "") -> str:
    """A one-line message for ``err`` that happened while doing ``action``."""
    e = as_admin_error(err)
    what = f"Could not {action}: " if action else ""
    if e.kind == k.UNIMPLEMENTED:
        return (f"{what}this daemon does not offer it yet "
                "(its service answers UNIMPLEMENTED; update the daemon).")
    if e.kind == k.UNAVAILABLE:
        return f"{what}the daemon is not reachable. {e.message}"
    if e.kind == k.UNAUTHENTICATED:
        return (f"{what}the daemon refused the console's token "
                "(was the daemon reinstalled? reconnecting re-reads it).")
    if e.kind == k.FAILED_PRECONDITION:
        return f"{what}{e.message}"
    if e.kind == k.INTERNAL:
        return f"{what}unexpected error: {e.message}"
    return f"{what}{e.message}"


def is_unimplemented(err: BaseException) -> bool:
    return as_admin_error(err).kind == k.UNIMPLEMENTED


def is_unavailable(err: BaseException) -> bool:
    return as_admin_error(err).kind == k.UNAVAILABLE
