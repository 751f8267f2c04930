"""Plumbing shared by the simulated APIs: JSON I/O, pacing, faults, streaming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from switchman_shared.catalog import CatalogModel

from .replies import Directives
from .state import SimRecord, SimState

TOKENS_PER_CHUNK = 3
DROP_AFTER_DELTAS = 3
DELTA, META, END = "delta", "meta", "end"


class BadRequest(Exception):
    """Validation failure rendered in the provider's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(obj), status=status, headers=headers, content_type="application/json"
    )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"There was an error parsing the body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def find_model(state: SimState, name: Any, style: str) -> CatalogModel | None:
    model = state.models.get(name) if isinstance(name, str) else None
    if model is None or model.sim is None or model.sim.style != style:
        return None
    return model


@dataclass(frozen=True, slots=True)
class Outcome:
    """Fault/directive verdict for one request, decided before generation."""

    status: int | None = None
    drop: bool = False
    extra_delay_s: float = 0.0  # unscaled: explicit test delays always apply


def decide_outcome(state: SimState, model_id: str, directives: Directives) -> Outcome:
    fault = state.take_fault(model_id)
    status = fault.status if fault and fault.status else directives.error
    for raw, n, fail_status in directives.fail_first:
        state.directive_hits[raw] += 1
        if status is None and state.directive_hits[raw] <= n:
            status = fail_status
    delay_ms = directives.slow_ms + (fault.delay_ms if fault else 0.0)
    return Outcome(status, bool(fault and fault.drop) or directives.drop, delay_ms / 1000)


@dataclass(frozen=True, slots=True)
class Pacing:
    ttft_s: float  # unscaled model time to first token
    chunk_s: float  # unscaled time per ~3-token delta
    extra_s: float  # unscaled directive/fault delay

    @classmethod
    def of(cls, model: CatalogModel, uncached_tokens: int, outcome: Outcome) -> Pacing:
        sim = model.sim
        assert sim is not None
        ttft = sim.ttft_ms / 1000 + uncached_tokens / max(sim.prefill_tok_per_s, 1e-9)
        return cls(ttft, TOKENS_PER_CHUNK / max(sim.tok_per_s, 1e-9), outcome.extra_delay_s)


def _abort(request: web.Request) -> None:
    # Closing the socket without the terminating chunk is what a provider-side
    # crash looks like to clients ("incomplete chunked read").
    if request.transport is not None:
        request.transport.abort()


async def send_json_paced(
    request: web.Request,
    state: SimState,
    body: Any,
    pacing: Pacing,
    output_tokens: int,
    *,
    drop: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    await state.sleep(pacing.extra_s, scaled=False)
    await state.sleep(pacing.ttft_s + output_tokens * pacing.chunk_s / TOKENS_PER_CHUNK)
    if drop:
        _abort(request)
        return web.Response(status=500)  # never reaches the client
    return json_response(body, headers=headers)


async def send_stream(
    request: web.Request,
    state: SimState,
    events: list[tuple[bytes, str]],
    pacing: Pacing,
    *,
    drop: bool,
    headers: dict[str, str],
) -> web.StreamResponse:
    """Write pre-rendered SSE `events` (bytes, kind) with provider pacing.

    kind is DELTA (paced output), META or END (terminal events, which a
    dropped stream never sends).
    """
    await state.sleep(pacing.extra_s, scaled=False)
    await state.sleep(pacing.ttft_s)
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache", **headers})
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(request)
    deltas = 0
    try:
        for data, kind in events:
            if drop and (kind == END or (kind == DELTA and deltas >= DROP_AFTER_DELTAS)):
                break
            if kind == DELTA:
                if deltas:
                    await state.sleep(pacing.chunk_s)
                deltas += 1
            await resp.write(data)
        if drop:
            _abort(request)
            return resp
        await resp.write_eof()
    except ConnectionError:
        pass  # client went away; nothing to clean up
    return resp


def record(
    state: SimState,
    model: str,
    api: str,
    status: int,
    stream: bool,
    **usage: int,
) -> None:
    state.history.append(SimRecord(model, api, status, stream, **usage))
