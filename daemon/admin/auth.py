"""The admin plane's one interceptor: token check, access table, error mapping.

Every method must appear in ``ACCESS`` (read or write); an unlisted method is
refused, so a new RPC cannot ship without a deliberate decision. Write methods
need the same token today; the table is where a stricter rule would go.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from switchman_daemon.admin.errors import to_status, trailing
from switchman_shared import admin_errors as k

log = logging.getLogger("switchman.admin")

READ, WRITE = "read", "write"

_P = "/switchman.v1."
ACCESS: dict[str, str] = {
    _P + "ProviderService/ListProviders": READ,
    _P + "ProviderService/SetKey": WRITE,
    _P + "ProviderService/TestKey": WRITE,  # spends a (tiny) upstream call
    _P + "ProviderService/RemoveKey": WRITE,
    _P + "ModelService/ListModels": READ,
    _P + "ModelService/ListPools": READ,
    _P + "ModelService/UpsertModel": WRITE,
    _P + "ModelService/SetModelEnabled": WRITE,
    _P + "ModelService/UpsertPool": WRITE,
    _P + "ModelService/SetAlias": WRITE,
    _P + "PolicyService/GetPolicy": READ,
    _P + "PolicyService/SetPolicy": WRITE,
    _P + "PolicyService/Preview": READ,
    _P + "PolicyService/ReplayPreview": READ,  # replays in the daemon; changes nothing
    _P + "BudgetService/SetBudget": WRITE,
    _P + "BudgetService/ListBudgets": READ,
    _P + "BudgetService/RemoveBudget": WRITE,
    _P + "BudgetService/GetStatus": READ,
    _P + "TeamKeyService/Issue": WRITE,
    _P + "TeamKeyService/List": READ,
    _P + "TeamKeyService/Revoke": WRITE,
    _P + "LedgerService/ListRequests": READ,
    _P + "LedgerService/ListSessions": READ,
    _P + "LedgerService/GetSession": READ,
    _P + "StatsService/Watch": READ,
    _P + "StatsService/GetRollups": READ,
    _P + "DaemonService/Status": READ,
    _P + "DaemonService/ExportConfig": READ,
    _P + "DaemonService/ImportConfig": WRITE,
    _P + "DaemonService/Shutdown": WRITE,
}


def _refuse(code: grpc.StatusCode, kind: str, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message, trailing(kind))

    return grpc.unary_unary_rpc_method_handler(abort)


def _wrap_unary(method: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except aio.AbortError:
            raise
        except Exception as e:
            code, kind, msg = to_status(e, method)
            await context.abort(code, msg, trailing(kind))

    return call


def _wrap_stream(method: str, fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., Any]:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as e:
            code, kind, msg = to_status(e, method)
            await context.abort(code, msg, trailing(kind))

    return call


class AdminInterceptor(aio.ServerInterceptor):
    """Bearer-token auth (constant-time) on every call, then error mapping."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _authorised(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if not self._authorised(handler_call_details):
            log.warning("admin call %s refused: missing or wrong token", method)
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, k.UNAUTHENTICATED,
                           "missing or wrong admin token")
        if method not in ACCESS:
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, k.UNIMPLEMENTED,
                           f"unknown admin method {method}")
        handler = await continuation(handler_call_details)
        if handler is None:  # service not registered in this build
            service = method.split("/")[1].rsplit(".", 1)[-1]
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, k.UNIMPLEMENTED,
                           f"{service} is not available in this daemon version")
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler
