"""Forwarding one routed request upstream and its answer back to the client.

Same format in and out: the body is passed through with only ``model`` changed
(and, for streamed chat completions, ``stream_options.include_usage`` turned on
so the ledger gets usage; the extra usage chunk is kept from clients that did
not ask for it). Different formats: client format -> IR -> upstream format, and
back, streaming events included.

Retries and fallbacks happen only before the first byte reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from switchman_daemon.errors import ApiError, ErrorKind, kind_for_status, render
from switchman_daemon.models import ModelInfo
from switchman_daemon.pricing import cost_usd
from switchman_daemon.protocol import codec
from switchman_daemon.protocol.ir import (
    ChatRequest,
    MessageEnd,
    MessageStart,
    StreamError,
    Usage,
)
from switchman_daemon.protocol.sse import SSEParser, encode_event
from switchman_daemon.providers.upstream import Upstream
from switchman_daemon.proxy.failover import Failover
from switchman_daemon.proxy.first_byte import FirstByteGuard
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.switching import strip_reasoning

if TYPE_CHECKING:
    from switchman_daemon.app import DaemonContext

log = logging.getLogger("switchman.relay")

# Substrings of the events a usage tap reads (usage, stop reasons, the end,
# errors) in any of the three formats; chunks without them are not parsed.
_TAP_MARKERS = (b"message_", b'"usage":{', b'"usage": {', b'finish_reason":"',
                b'finish_reason": "', b"[DONE]", b"error", b"response.completed",
                b"response.incomplete", b"response.failed")

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

_ENDPOINT = {"anthropic": "anthropic", "chat": "chat", "responses": "responses"}


class _Failure(Exception):
    """An upstream attempt failed in a way worth retrying or falling back from."""

    def __init__(self, err: ApiError, body: bytes | None = None, fmt: str | None = None):
        super().__init__(err.message)
        self.err = err
        self.body = body
        self.fmt = fmt


def error_response(fmt: str, err: ApiError, request_id: str | None = None) -> web.Response:
    status, body = render(fmt, err, request_id)  # type: ignore[arg-type]
    headers = {"x-request-id": request_id} if request_id else {}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, round(err.retry_after)))
    return web.Response(
        status=status, body=body, content_type="application/json", headers=headers
    )


def _upstream_error(status: int, data: bytes, up_fmt: str) -> ApiError:
    """An ApiError carrying the provider's own message (never our secrets)."""
    message = ""
    with contextlib.suppress(Exception):
        j = orjson.loads(data)
        e = j.get("error") if isinstance(j, dict) else None
        if isinstance(e, dict):
            message = str(e.get("message") or "")
        elif isinstance(e, str):
            message = e
    if not message:
        message = f"upstream returned HTTP {status}"
    return ApiError(kind_for_status(status), f"upstream: {message}", status=status)


def _is_json_error(data: bytes) -> bool:
    """Is an upstream error body a JSON error object (safe to pass through as
    is)? A proxy's HTML 502 page is not; the client gets our own error then."""
    try:
        j = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(j, dict) and "error" in j


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    raw = resp.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


class Relay:
    """Sends a flow to its chosen model, falling back as the decision allows."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.daemon
        # deployments, cooldowns, concurrency limits, first-byte bounds
        self.failover = Failover()

    # -- body preparation ---------------------------------------------------

    def _body_for(
        self,
        flow: Flow,
        body: dict[str, Any],
        raw: bytes,
        model: ModelInfo,
        up_fmt: str,
        ir_cache: list[ChatRequest],
    ) -> bytes:
        fmt = flow.client_format
        if up_fmt == fmt and self._switching(flow, model):
            stripped = strip_reasoning(fmt, body)
            if stripped is not None:
                flow.notes["stripped_reasoning"] = True
                body = stripped
                raw = b""  # forces re-encoding below
        if up_fmt == fmt:
            needs_usage = fmt == "chat" and body.get("stream") and not (
                isinstance(body.get("stream_options"), dict)
                and body["stream_options"].get("include_usage"))
            if not needs_usage and raw and body["model"] == model.upstream_id:
                return raw  # the client's bytes, untouched
            # orjson re-encodes 120 KB in ~40 us, faster than patching bytes in place
            out = dict(body)
            out["model"] = model.upstream_id
            if fmt == "chat" and out.get("stream"):
                so = out.get("stream_options")
                if not (isinstance(so, dict) and so.get("include_usage")):
                    # ask for usage upstream; the usage-only chunk is dropped for
                    # the client, which did not ask for it
                    out["stream_options"] = {**(so if isinstance(so, dict) else {}),
                                             "include_usage": True}
                    flow.notes["drop_usage_chunk"] = True
            return orjson.dumps(out)
        if not ir_cache:
            ir_cache.append(codec(fmt).parse_request(body))
        req = ir_cache[0]
        if up_fmt == "chat":
            # OpenAI's own reasoning models reject max_tokens; compatible servers
            # (Ollama, vLLM, DeepSeek) only know max_tokens.
            field = "max_completion_tokens" if flow.notes.get("upstream_kind") == "openai" \
                else "max_tokens"
            upstream_body = codec("chat").build_request(
                req, model.upstream_id, stream=req.stream, max_tokens_field=field)
        else:
            upstream_body = codec(up_fmt).build_request(req, model.upstream_id, stream=req.stream)
        flow.notes["custom_tools"] = frozenset(t.name for t in req.tools if t.kind == "custom")
        return orjson.dumps(upstream_body)

    def _switching(self, flow: Flow, model: ModelInfo) -> bool:
        """Is this request moving its session to another model than the one
        that made its history (so provider-bound reasoning must go)?"""
        if flow.attempts > 0 and flow.decision is not None and model is not flow.decision.model:
            return True  # a fallback
        pref = flow.notes.get("session_deployment")
        if pref is not None and model.name == pref.name and model is not pref:
            return True  # another provider's deployment: its reasoning signatures differ
        prev = flow.decision.previous_model if flow.decision is not None else None
        return prev is not None and prev != model.name

    # -- main entry -----------------------------------------------------------

    async def forward(
        self, request: web.Request, flow: Flow, body: dict[str, Any], raw: bytes
    ) -> web.StreamResponse:
        assert flow.decision is not None
        fo = self.failover
        if fo.config is not self.ctx.config:
            fo.refresh(self.ctx)
        candidates = fo.candidates(flow)
        limits = fo.limits.by_provider
        ir_cache: list[ChatRequest] = []
        last: _Failure | None = None
        deadline = time.monotonic() + max(self.settings.retry_max_wait_s * 3, 1.0)
        waiting: list[ModelInfo] = []  # candidates whose provider was at its limit
        tried = False
        i = 0
        while True:
            held = None
            if i < len(candidates):
                model = candidates[i]
                i += 1
                if limits:
                    held = limits.get(model.provider)
                    if held is not None and not held.try_acquire():
                        waiting.append(model)
                        fo.full(flow, model)
                        continue
            elif waiting:
                got = await fo.wait_for_slot(flow, waiting)
                if got is None:
                    break
                model, held = got
            else:
                break
            try:  # the slot (if any) is held to the end of the attempt, streams included
                up = self.ctx.upstreams[model.provider]
                formats = up.formats()
                up_fmt = flow.client_format if flow.client_format in formats else formats[0]
                flow.notes["upstream_kind"] = up.kind
                try:
                    data = self._body_for(flow, body, raw, model, up_fmt, ir_cache)
                except orjson.JSONEncodeError as e:
                    # orjson reads 1024 nesting levels but writes only 255: a body it
                    # parsed may not re-encode. The client's fault, not a 500.
                    raise ApiError(ErrorKind.invalid_request,
                                   f"request body cannot be re-encoded: {e}") from None
                headers = up.headers(up_fmt, request.headers if up_fmt == flow.client_format
                                     or up_fmt == "anthropic" else None)
                if tried:
                    flow.decision.reasons.append(f"fell back to {fo.name(model)}: "
                                   f"{last.err.message if last else 'error'}")
                tried = True
                more = i < len(candidates) or bool(waiting)
                # a first-byte bound only where there is somewhere else to go
                bound = fo.bound(model) if more else None
                for attempt in range(self.settings.max_retries + 1):
                    flow.attempts += 1
                    try:
                        if bound is None:
                            resp = await self._attempt(request, flow, up, up_fmt, model, data,
                                                       headers)
                        else:
                            resp = await self._attempt_bounded(request, flow, up, up_fmt, model,
                                                               data, headers, bound)
                    except _Failure as f:
                        last = f
                        # counts toward a cooldown for new requests; this one still
                        # retries (a short wait beats another model's cold cache)
                        fo.failed(model, f.err)
                        if f.err.code == "first_byte_timeout":
                            break  # too slow: the next candidate now
                        if attempt >= self.settings.max_retries or time.monotonic() > deadline:
                            break
                        wait = f.err.retry_after
                        if wait is None:
                            wait = 0.25 * (2**attempt) * (0.5 + random.random())
                        wait = min(wait, self.settings.retry_max_wait_s)
                        if time.monotonic() + wait > deadline:
                            break
                        await asyncio.sleep(wait)
                    else:
                        fo.succeeded(model)
                        return resp
            finally:
                if held is not None:
                    held.release()
        if last is None:  # never got a slot on any candidate's provider
            return self._final_error(flow, _Failure(fo.overloaded(flow.client_format, waiting)))
        return self._final_error(flow, last)

    def _final_error(self, flow: Flow, f: _Failure) -> web.Response:
        fmt = flow.client_format
        err = f.err
        flow.status = "error"
        flow.error = err.message
        if fmt == "responses" and err.status == 429:
            # Codex exits on a 429 but retries 5xx: report exhaustion as a 503.
            err = ApiError(ErrorKind.overloaded, err.message + " (after retries and fallbacks)",
                           status=503, retry_after=err.retry_after)
        flow.http_status = err.status
        if f.body is not None and f.fmt == fmt:
            headers = {"x-request-id": flow.id}
            if err.retry_after is not None:
                headers["retry-after"] = str(max(1, round(err.retry_after)))
            return web.Response(status=err.status, body=f.body,
                                content_type="application/json", headers=headers)
        return error_response(fmt, err, flow.id)

    async def _attempt_bounded(
        self,
        request: web.Request,
        flow: Flow,
        up: Upstream,
        up_fmt: str,
        model: ModelInfo,
        data: bytes,
        headers: dict[str, str],
        bound: float,
    ) -> web.StreamResponse:
        """``_attempt`` abandoned (a ``_Failure``) if the upstream's first body
        byte is not in within ``bound`` seconds (latency fallback)."""
        guard = FirstByteGuard(bound)
        try:
            return await self._attempt(request, flow, up, up_fmt, model, data, headers, guard)
        except asyncio.CancelledError:
            if guard.expired():
                raise _Failure(ApiError(
                    ErrorKind.timeout, f"upstream {up.name} sent no first byte within "
                    f"{bound:g}s (first_byte_timeout_s)",
                    code="first_byte_timeout")) from None
            raise
        finally:
            guard.disarm()

    async def _attempt(
        self,
        request: web.Request,
        flow: Flow,
        up: Upstream,
        up_fmt: str,
        model: ModelInfo,
        data: bytes,
        headers: dict[str, str],
        guard: FirstByteGuard | None = None,
    ) -> web.StreamResponse:
        if self.ctx.config.routing.keepalive:  # what a cache keep-alive replays
            flow.notes["upstream_sent"] = (data, headers)
        try:
            uresp = await up.post(_ENDPOINT[up_fmt], data, headers)
        except TimeoutError:
            raise _Failure(ApiError(ErrorKind.timeout,
                                    f"upstream {up.name} timed out")) from None
        except aiohttp.ClientError as e:
            raise _Failure(ApiError(
                ErrorKind.upstream_unavailable,
                f"upstream {up.name} unreachable: {type(e).__name__}")) from None
        if guard is not None:
            guard.response = uresp
        try:
            if uresp.status != 200:
                try:
                    err_body = await uresp.read()
                except (aiohttp.ClientError, TimeoutError):
                    err_body = b""
                err = _upstream_error(uresp.status, err_body, up_fmt)
                err.retry_after = _retry_after(uresp)
                passable = _is_json_error(err_body)
                if uresp.status in RETRYABLE:
                    raise _Failure(err, err_body if passable else None, up_fmt)
                # A client error from the provider: no retry; report it as is.
                flow.status = "error"
                flow.http_status = uresp.status
                flow.error = err.message
                flow.served_model, flow.provider, flow.upstream_format = (
                    model.name, up.name, up_fmt)
                if up_fmt == flow.client_format and passable:
                    return web.Response(status=uresp.status, body=err_body,
                                        content_type="application/json",
                                        headers={"x-request-id": flow.id})
                return error_response(flow.client_format, err, flow.id)
            flow.served_model, flow.provider, flow.upstream_format = model.name, up.name, up_fmt
            if flow.signals.stream:
                return await self._stream(request, flow, uresp, up_fmt, model)
            return await self._whole(flow, uresp, up_fmt, model)
        finally:
            uresp.release()

    # -- non-streaming ----------------------------------------------------------

    async def _whole(
        self, flow: Flow, uresp: aiohttp.ClientResponse, up_fmt: str, model: ModelInfo
    ) -> web.Response:
        try:
            data = await uresp.read()
        except TimeoutError:
            raise _Failure(ApiError(ErrorKind.timeout, "upstream timed out mid-body")) from None
        except aiohttp.ClientError as e:
            raise _Failure(ApiError(ErrorKind.upstream_unavailable,
                                    f"upstream connection lost: {type(e).__name__}")) from None
        flow.mark_first_byte()
        try:
            j = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _Failure(ApiError(ErrorKind.upstream_unavailable,
                                    "upstream sent a body that is not JSON")) from None
        fmt = flow.client_format
        if up_fmt == fmt:
            self._account(flow, codec(fmt).usage_from_response(j), model)
            out = data
        else:
            if up_fmt == "chat":
                resp_ir = codec("chat").parse_response(
                    j, custom_tools=flow.notes.get("custom_tools", frozenset()))
            else:
                resp_ir = codec(up_fmt).parse_response(j)
            self._account(flow, resp_ir.usage, model)
            if fmt == "responses":
                built = codec(fmt).build_response(
                    resp_ir, model.upstream_id,
                    custom_tools=flow.notes.get("custom_tools", frozenset()))
            else:
                built = codec(fmt).build_response(resp_ir, model.upstream_id)
            out = orjson.dumps(built)
        flow.status, flow.http_status = "ok", 200
        return web.Response(body=out, content_type="application/json",
                            headers={"x-request-id": flow.id, "x-switchman-model": model.name})

    # -- streaming ----------------------------------------------------------------

    async def _stream(
        self,
        request: web.Request,
        flow: Flow,
        uresp: aiohttp.ClientResponse,
        up_fmt: str,
        model: ModelInfo,
    ) -> web.StreamResponse:
        fmt = flow.client_format
        # Nothing is committed to the client until the upstream's first body
        # bytes arrive: a 200 that is not SSE, or that stalls or breaks before
        # its first event, is still retried and fallen back from.
        ctype = uresp.headers.get("content-type", "")
        if ctype and not ctype.lower().startswith("text/event-stream"):
            raise _Failure(ApiError(
                ErrorKind.upstream_unavailable,
                f"upstream {flow.provider} answered a stream with {ctype.split(';')[0]!r}"))
        rest = uresp.content.iter_any().__aiter__()
        try:
            first = await rest.__anext__()
        except StopAsyncIteration:
            raise _Failure(ApiError(ErrorKind.upstream_unavailable,
                                    "upstream sent an empty stream")) from None
        except TimeoutError:
            raise _Failure(ApiError(ErrorKind.timeout,
                                    "upstream timed out before its first event")) from None
        except aiohttp.ClientError as e:
            raise _Failure(ApiError(ErrorKind.upstream_unavailable,
                                    f"upstream connection lost: {type(e).__name__}")) from None
        chunks = _chain(first, rest)
        resp = web.StreamResponse(
            status=200,
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "x-request-id": flow.id,
                "x-switchman-model": model.name,
            },
        )
        await resp.prepare(request)
        flow.status, flow.http_status = "ok", 200
        parser = SSEParser()
        try:
            if up_fmt == fmt:
                await self._pipe_same(flow, chunks, resp, parser, model)
            else:
                await self._pipe_translated(flow, chunks, resp, parser, up_fmt, model)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            flow.status = "cancelled"
            flow.error = "client disconnected"
            return resp
        except (aiohttp.ClientError, TimeoutError) as e:
            # Upstream broke mid-stream: the client already has a 200, so the
            # error travels as a stream event in its own format.
            flow.status = "error"
            flow.error = f"upstream stream interrupted: {type(e).__name__}"
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                await resp.write(self._stream_error_bytes(fmt, model, flow.error))
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await resp.write_eof()
        return resp

    def _stream_error_bytes(self, fmt: str, model: ModelInfo, message: str) -> bytes:
        enc = self._encoder(fmt, model, include_usage=False)
        out = enc.encode(StreamError(502, ErrorKind.upstream_unavailable.value, message))
        return out + enc.finish()

    async def _pipe_same(
        self,
        flow: Flow,
        chunks: AsyncIterator[bytes],
        resp: web.StreamResponse,
        parser: SSEParser,
        model: ModelInfo,
    ) -> None:
        c = codec(flow.client_format)
        tap = c.UsageTap()
        try:
            await self._pipe_same_events(flow, chunks, resp, parser, tap)
        finally:
            # usage that arrived counts even when the stream broke (partial spend)
            if tap.usage is not None:
                self._account(flow, tap.usage, model)
        if tap.error:
            flow.status = "error"
            flow.error = str(getattr(tap.error, "message", tap.error))
        elif not tap.done:
            flow.status, flow.error = "error", "upstream stream ended before completion"
            # the client must not mistake a cut stream for a finished one
            await resp.write(self._stream_error_bytes(flow.client_format, model, flow.error))

    async def _pipe_same_events(
        self,
        flow: Flow,
        chunks: AsyncIterator[bytes],
        resp: web.StreamResponse,
        parser: SSEParser,
        tap: Any,
    ) -> None:
        drop_usage = bool(flow.notes.get("drop_usage_chunk"))
        async for chunk in chunks:
            # the usage tap only needs the events that bill or end the stream
            events = parser.feed(chunk) if drop_usage else parser.feed_marked(chunk, _TAP_MARKERS)
            if drop_usage:
                out = bytearray()
                for ev, d in events:
                    tap.feed(ev, d)
                    if tap.is_usage_only_chunk(d):
                        continue
                    if ev:
                        out += b"event: " + ev.encode() + b"\n"
                    out += b"data: " + d + b"\n\n"
                if out:
                    flow.mark_first_byte()
                    await resp.write(bytes(out))
            else:
                flow.mark_first_byte()
                await resp.write(chunk)
                for ev, d in events:
                    tap.feed(ev, d)
        for ev, d in parser.flush():
            tap.feed(ev, d)

    def _encoder(
        self, fmt: str, model: ModelInfo, include_usage: bool,
        custom_tools: frozenset[str] = frozenset(),
    ) -> Any:
        if fmt == "chat":
            return codec("chat").StreamEncoder(model.upstream_id, include_usage=include_usage)
        if fmt == "responses":
            return codec("responses").StreamEncoder(model.upstream_id, custom_tools=custom_tools)
        return codec(fmt).StreamEncoder(model.upstream_id)

    async def _pipe_translated(
        self,
        flow: Flow,
        chunks: AsyncIterator[bytes],
        resp: web.StreamResponse,
        parser: SSEParser,
        up_fmt: str,
        model: ModelInfo,
    ) -> None:
        if up_fmt == "chat":
            dec = codec("chat").StreamDecoder(
                custom_tools=flow.notes.get("custom_tools", frozenset()))
        else:
            dec = codec(up_fmt).StreamDecoder()
        include_usage = flow.notes.get("client_include_usage", False)
        enc = self._encoder(flow.client_format, model, include_usage,
                            flow.notes.get("custom_tools", frozenset()))
        usage: Usage | None = None
        partial: Usage | None = None  # input side from the start event
        ended = False

        def handle(events: list[Any]) -> bytes:
            nonlocal usage, partial, ended
            out = bytearray()
            for ev in events:
                if isinstance(ev, MessageStart):
                    partial = ev.usage
                elif isinstance(ev, MessageEnd):
                    usage = ev.usage
                    ended = True
                elif isinstance(ev, StreamError):
                    flow.status, flow.error = "error", ev.message
                    ended = True
                out += enc.encode(ev)
            return bytes(out)

        try:
            async for chunk in chunks:
                out = bytearray()
                for ev, d in parser.feed(chunk):
                    out += handle(dec.feed(ev, d))
                if out:
                    flow.mark_first_byte()
                    await resp.write(bytes(out))
            out = bytearray()
            for ev, d in parser.flush():
                out += handle(dec.feed(ev, d))
            out += handle(dec.finish())
            out += enc.finish()
            if out:
                flow.mark_first_byte()
                await resp.write(bytes(out))
        finally:
            # a broken stream still bills what the provider reported so far
            got = usage if usage is not None else partial
            if got is not None:
                self._account(flow, got, model)
        if not ended and flow.status == "ok":
            flow.status, flow.error = "error", "upstream stream ended before completion"

    def _account(self, flow: Flow, usage: Usage, model: ModelInfo) -> None:
        flow.usage = usage
        flow.cost_usd = cost_usd(usage, model.prices)


__all__ = ["Relay", "encode_event", "error_response"]
