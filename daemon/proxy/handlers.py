"""HTTP ingress: the routes agents call, each ending in the relay or a local answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from switchman_daemon import __version__
from switchman_daemon.errors import ApiError, ErrorKind, WireFormat
from switchman_daemon.logs import log_access, new_request_id, request_id
from switchman_daemon.models import UnknownModel
from switchman_daemon.proxy import cascade
from switchman_daemon.proxy.bodies import read_json
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.proxy.relay import error_response
from switchman_daemon.routing.router import NoCandidate
from switchman_daemon.routing.signals import read_signals
from switchman_daemon.tokens import estimate_request_tokens

if TYPE_CHECKING:
    from switchman_daemon.app import DaemonContext

log = logging.getLogger("switchman.ingress")

CTX: web.AppKey[DaemonContext] = web.AppKey("switchman_ctx")


def _check_shape(fmt: WireFormat, body: dict[str, Any]) -> None:
    """The few fields every request needs, checked before routing. Deeper
    validation is the upstream's (same format) or the codec's (translated)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(ErrorKind.invalid_request, "model: field required (a non-empty string)",
                       param="model")
    if fmt == "responses":
        inp = body.get("input")
        if not isinstance(inp, str | list):
            raise ApiError(ErrorKind.invalid_request,
                           "input: field required (a string or a list of items)", param="input")
    else:
        msgs = body.get("messages")
        if not isinstance(msgs, list):
            raise ApiError(ErrorKind.invalid_request, "messages: field required (a list)",
                           param="messages")
        if fmt == "anthropic":
            mt = body.get("max_tokens")
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
                raise ApiError(ErrorKind.invalid_request,
                               "max_tokens: field required (a positive integer)",
                               param="max_tokens")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(ErrorKind.invalid_request, "stream: must be a boolean", param="stream")


def refuse(ctx: DaemonContext, fmt: str, err: ApiError, rid: str, t0: float,
           requested: str | None = None, kind: str | None = None) -> web.Response:
    """A request refused before it became a flow: counted, access-logged and
    answered with a request id, like every other request."""
    kind = kind or err.kind.value
    ctx.metrics.rejected(fmt, err.status, kind)
    log_access(rid, fmt, requested, None, err.status, (time.perf_counter() - t0) * 1000.0,
               outcome=kind)
    return error_response(fmt, err, rid)


def proxy_handler(fmt: WireFormat) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        t0 = time.perf_counter()
        # each request runs in its own task: the contextvar is this request's alone
        rid = new_request_id()
        request_id.set(rid)
        body: dict[str, Any] = {}
        try:
            body, raw = await read_json(request, ctx.body_limit)
            _check_shape(fmt, body)
            team_key_id = ctx.gate.admit(request.headers, body["model"])
            signals = read_signals(fmt, body, request.headers, len(raw), raw)
            ctx.gate.precheck(team_key_id, signals)
            decision = ctx.router.choose(signals, body)
        except ApiError as e:
            return refuse(ctx, fmt, e, rid, t0, _requested(body))
        except UnknownModel as e:
            return refuse(ctx, fmt, ApiError(
                ErrorKind.not_found,
                f"model {e.args[0]!r} is not in any pool and matches no alias; "
                "GET /v1/models lists what this daemon serves",
                param="model"), rid, t0, _requested(body))
        except NoCandidate as e:
            return refuse(ctx, fmt, ApiError(ErrorKind.invalid_request, str(e), param="model"),
                          rid, t0, _requested(body))
        except RecursionError:  # JSON nested past what the signal readers walk
            return refuse(ctx, fmt, ApiError(ErrorKind.invalid_request,
                                             "request body is nested too deeply"),
                          rid, t0, _requested(body))
        flow = Flow(client_format=fmt, signals=signals, decision=decision, id=rid)
        flow.notes["body"] = body  # for the routing observer's prefix chain
        flow.notes["team_key_id"] = team_key_id
        if fmt == "chat":
            so = body.get("stream_options")
            flow.notes["client_include_usage"] = isinstance(so, dict) and bool(
                so.get("include_usage"))
        ctx.open_flow(flow)
        try:
            if ctx.gate.budgets.configured:  # no coroutine per request without budgets
                await ctx.gate.reserve(flow, team_key_id, body)
            if cascade.wanted(ctx.config.routing.cascade, request.headers, flow):
                return await cascade.forward(ctx, request, flow, body, raw)
            return await ctx.relay.forward(request, flow, body, raw)
        except ApiError as e:
            flow.status, flow.http_status, flow.error = "error", e.status, e.message
            return error_response(fmt, e, flow.id)
        except asyncio.CancelledError:
            flow.status, flow.error = "cancelled", "client disconnected"
            raise
        except Exception:
            # The daemon never crashes on a request; the client gets a clean error.
            log.exception("unexpected error handling %s request %s", fmt, flow.id)
            flow.status, flow.http_status = "error", 500
            flow.error = "internal error in the router"
            return error_response(fmt, ApiError(
                ErrorKind.api_error, "internal error in the router; see the daemon log "
                f"(request {flow.id})"), flow.id)
        finally:
            if flow.status == "open":
                flow.status = "error"
            flow.latency_ms = (time.perf_counter() - flow.t0) * 1000.0
            # Close hooks (ledger, stats, savings, tracker) run once aiohttp has
            # written a returned response, not before: ~50 µs off every
            # non-streamed reply. Queued now, it runs before the loop reads
            # whatever the client sends next.
            asyncio.get_running_loop().call_soon(ctx.close_flow, flow)

    return handle


def _requested(body: dict[str, Any]) -> str | None:
    m = body.get("model") if isinstance(body, dict) else None
    return m if isinstance(m, str) else None


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Anthropic's count_tokens: forwarded when the routed model is served by an
    Anthropic upstream, else counted locally (never a fake 0)."""
    ctx = request.app[CTX]
    try:
        body, raw = await read_json(request, ctx.body_limit)
        ctx.gate.admit(request.headers, str(body.get("model", "")))
        if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list):
            raise ApiError(ErrorKind.invalid_request,
                           "model and messages are required", param="messages")
        signals = read_signals("anthropic", body, request.headers, len(raw))
        # counting is not a turn: look up the model without touching session state
        model = ctx.router.peek_model(signals)
    except ApiError as e:
        return error_response("anthropic", e)
    except UnknownModel:
        return error_response("anthropic", ApiError(
            ErrorKind.not_found, f"model {body.get('model')!r} is not served here",
            param="model"))
    up = ctx.upstreams[model.provider]
    if "anthropic" in up.formats():
        out = dict(body)
        out["model"] = model.upstream_id
        try:
            uresp = await up.post("count_tokens", orjson.dumps(out),
                                  up.headers("count_tokens", request.headers))
            async with uresp:
                data = await uresp.read()
                if uresp.status == 200:
                    return web.Response(body=data, content_type="application/json")
                log.info("count_tokens upstream HTTP %s; counting locally", uresp.status)
        except Exception as e:  # fall back to the local estimate
            log.info("count_tokens upstream failed (%s); counting locally", type(e).__name__)
    return web.json_response({"input_tokens": estimate_request_tokens(body)},
                             dumps=lambda o: orjson.dumps(o).decode())


def _wants_anthropic(request: web.Request) -> bool:
    h = request.headers
    return "anthropic-version" in h or ("x-api-key" in h and "authorization" not in h)


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    names = [m.name for m in ctx.registry.visible()] + list(ctx.registry.pools)
    created = int(ctx.started_at)
    if _wants_anthropic(request):
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ctx.started_at))
        data = [{"type": "model", "id": n, "display_name": n, "created_at": iso} for n in names]
        return web.json_response({"data": data, "has_more": False,
                                  "first_id": names[0] if names else None,
                                  "last_id": names[-1] if names else None})
    return web.json_response({"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": "switchman"}
        for n in names]})


async def get_model(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = request.match_info["model"]
    if name not in ctx.registry.models and name not in ctx.registry.pools:
        fmt: WireFormat = "anthropic" if _wants_anthropic(request) else "chat"
        return error_response(fmt, ApiError(ErrorKind.not_found, f"model {name!r} not found"))
    if _wants_anthropic(request):
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ctx.started_at))
        return web.json_response({"type": "model", "id": name, "display_name": name,
                                  "created_at": iso})
    return web.json_response({"id": name, "object": "model", "created": int(ctx.started_at),
                              "owned_by": "switchman"})


async def root(request: web.Request) -> web.Response:
    # Claude Code probes HEAD / first; answer fast.
    if request.method == "HEAD":
        return web.Response(status=200)
    return web.json_response({"service": "switchman", "version": __version__})


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response({
        "status": "ok", "version": __version__,
        "uptime_s": round(time.time() - ctx.started_at, 1),
        "providers": sorted(ctx.upstreams), "models": len(ctx.registry.models),
    })


async def responses_get(request: web.Request) -> web.Response:
    """Codex tries Responses over WebSocket first; 426 makes it fall back to
    HTTP at once (a 404 costs it ~7 s of retries)."""
    if request.headers.get("upgrade", "").lower() == "websocket":
        return web.Response(status=426, headers={"upgrade": "HTTP/1.1"}, text=(
            '{"error":{"message":"WebSocket transport is not supported; use HTTP POST",'
            '"type":"invalid_request_error","param":null,"code":"upgrade_required"}}'),
            content_type="application/json")
    return error_response("responses", ApiError(
        ErrorKind.not_found, "GET /v1/responses/{id} is not supported: the router keeps no "
        "server-side response state (send store:false with the full input)"))


def _guess_format(request: web.Request) -> WireFormat:
    if "messages" in request.path or _wants_anthropic(request):
        return "anthropic"
    return "responses" if "responses" in request.path else "chat"


guess_format = _guess_format  # public: the browser guard answers in the same format


def _method_not_allowed(allowed: tuple[str, ...]) -> Any:
    async def refuse_method(request: web.Request) -> web.StreamResponse:
        resp = error_response(_guess_format(request), ApiError(
            ErrorKind.invalid_request,
            f"method {request.method} is not allowed on {request.path}", status=405))
        resp.headers["allow"] = ", ".join(allowed)
        return resp

    return refuse_method


async def not_found(request: web.Request) -> web.StreamResponse:
    return error_response(_guess_format(request), ApiError(
        ErrorKind.not_found, f"no such endpoint: {request.method} {request.path}"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, wrap: Callable[[Handler], Handler],
               extra: dict[str, Handler] | None = None) -> None:
    """Every path the daemon answers, each handler passed through ``wrap`` (the
    browser guard). Unknown paths and methods answer in the caller's API format
    from routes of their own, so no middleware runs on the hot path."""
    messages = proxy_handler("anthropic")
    chat = proxy_handler("chat")
    responses = proxy_handler("responses")
    table: dict[str, dict[str, Handler]] = {}
    for prefix in ("/v1", ""):
        table[f"{prefix}/messages"] = {"POST": messages}
        table[f"{prefix}/messages/count_tokens"] = {"POST": count_tokens}
        table[f"{prefix}/chat/completions"] = {"POST": chat}
        table[f"{prefix}/responses"] = {"POST": responses, "GET": responses_get}
        table[f"{prefix}/models"] = {"GET": list_models}
        table[f"{prefix}/models/{{model}}"] = {"GET": get_model}
    table["/"] = {"GET": root, "HEAD": root}
    table["/healthz"] = {"GET": healthz}
    for path, handler in (extra or {}).items():
        table[path] = {"GET": handler}
    for path, methods in table.items():
        if "GET" in methods and "HEAD" not in methods:
            methods["HEAD"] = methods["GET"]
        for method, handler in methods.items():
            app.router.add_route(method, path, wrap(handler))
        app.router.add_route("*", path, wrap(_method_not_allowed(tuple(methods))))
    app.router.add_route("*", "/{tail:.*}", wrap(not_found))
