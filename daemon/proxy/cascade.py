"""Opt-in cascade for non-streaming requests (FrugalGPT-style).

The cheapest eligible model among the router's ranked candidates answers
first; if its answer fails the acceptance check (``cascade_check``) or its
upstream fails, the answer is withheld and the router's chosen model answers
instead, with its usual fallbacks. Each step is the relay's ordinary
single-model path, so retries, fallbacks and translation apply to both.

- **When**: ``[routing.cascade] enabled`` or the request header
  ``x-switchman-cascade: on`` (``off`` opts a request out). Never for
  streaming requests: a streamed answer reaches the client as it is
  generated, so a rejected first answer could not be withdrawn.
- **Which cheap model**: the cheapest ranked candidate (predicted cost for
  this request, cache state included) whose predicted quality reaches
  ``quality_floor`` and whose cost is at most ``max_cost_ratio`` of the
  chosen model's. Candidates already meet the request's hard constraints
  (tools, vision, context window); a request asking for thinking keeps a
  thinking-capable model. A pinned, sticky or compaction decision has no
  ranked candidates and is not cascaded.
- **Accounting**: the client gets one answer in its own format, with the
  answering model's usage. The ledger row's tokens are the answering model's
  too (they also feed the cache tracker and the savings baseline, where
  another model's tokens would be wrong), while its ``cost_usd`` is both
  attempts' cost, and budgets settle that total. The rejected attempt's
  tokens and cost are in the decision's reasons.
- The response carries ``x-switchman-cascade: accepted | escalated | skipped``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from switchman_daemon.errors import ApiError
from switchman_daemon.models import ModelInfo
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.proxy.cascade_check import check_answer, compile_patterns
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.router import Candidate, Decision
from switchman_shared.config_schema import CascadeConfig

if TYPE_CHECKING:
    from switchman_daemon.app import DaemonContext

HEADER = "x-switchman-cascade"
_ON = frozenset({"on", "1", "true", "yes"})
_OFF = frozenset({"off", "0", "false", "no"})


def wanted(settings: CascadeConfig, headers: Mapping[str, str], flow: Flow) -> bool:
    """Should this request go through the cascade? (cheap: one header lookup)"""
    h = headers.get(HEADER)
    asked = h is not None and h.strip().lower() in _ON
    if not (asked or (settings.enabled and (h is None or h.strip().lower() not in _OFF))):
        return False
    if flow.signals.stream:
        if asked and flow.decision is not None:
            _reason(flow, "cascade: not for streaming requests (a streamed answer cannot be "
                          "withdrawn once the client has it)")
        return False
    return True


def pick_cheap(settings: CascadeConfig, d: Decision, registry_models: Mapping[str, ModelInfo],
               wants_thinking: bool) -> tuple[ModelInfo, Candidate, Candidate] | str:
    """(cheap model, its candidate, the chosen model's candidate), or why none."""
    chosen = next((c for c in d.candidates if c.model == d.model.name), None)
    if chosen is None:
        return f"{d.model.name} was not chosen among ranked candidates ({d.how})"
    cheaper: list[tuple[Candidate, ModelInfo]] = []
    for c in d.candidates:
        m = registry_models.get(c.model)
        if m is None or not m.enabled or c.model == chosen.model:
            continue
        if wants_thinking and d.model.thinking and not m.thinking:
            continue
        if c.cost_now <= chosen.cost_now * settings.max_cost_ratio:
            cheaper.append((c, m))
    if not cheaper:
        return (f"no candidate costs at most {settings.max_cost_ratio:.0%} of "
                f"{chosen.model}'s ${chosen.cost_now:.5f}")
    good = [cm for cm in cheaper if cm[0].quality >= settings.quality_floor]
    if not good:
        low = min(cheaper, key=lambda cm: cm[0].cost_now)[0]
        return (f"{low.model}'s predicted quality {low.quality:.2f} is below the floor "
                f"{settings.quality_floor:.2f}")
    c, m = min(good, key=lambda cm: cm[0].cost_now)
    return m, c, chosen


async def forward(ctx: DaemonContext, request: web.Request, flow: Flow, body: dict[str, Any],
                  raw: bytes) -> web.StreamResponse:
    """The cascade in place of ``ctx.relay.forward`` for one non-streaming request."""
    d = flow.decision
    assert d is not None
    settings = ctx.config.routing.cascade
    pick = pick_cheap(settings, d, ctx.registry.models, flow.signals.wants_thinking)
    if isinstance(pick, str):
        _reason(flow, f"cascade: skipped: {pick}")
        return _tag(await ctx.relay.forward(request, flow, body, raw), "skipped")
    cheap, cc, chosen = pick
    # the cheap step: that model alone (escalation is its fallback); the
    # decision's reasons list is shared, so relay notes land in the real one
    flow.decision = dataclasses.replace(d, model=cheap, fallbacks=[])
    try:
        resp = await ctx.relay.forward(request, flow, body, raw)
        verdict = _verdict(flow, resp, body, settings)
    except ApiError as e:  # e.g. an upstream body the codec could not read
        verdict = f"upstream error: {e.message}"
    finally:
        flow.decision = d
    if verdict is None:
        _reason(flow, f"cascade: cheap model {cheap.name} answered first (predicted "
                      f"${cc.cost_now:.5f} vs ${chosen.cost_now:.5f} on {d.model.name}); "
                      "accepted")
        return _tag(resp, "accepted")
    cheap_cost, u = flow.cost_usd, flow.usage
    answered = "answered, rejected" if flow.status == "ok" else "failed"
    _reason(flow, f"cascade: cheap model {cheap.name} {answered}: {verdict}; escalated to "
                  f"{d.model.name} (the rejected attempt's {u.prompt_tokens} input and "
                  f"{u.output_tokens} output tokens, ${cheap_cost:.6f}, are in this "
                  "request's cost)")
    # the escalation starts from a clean outcome; cost and attempts accumulate
    flow.status, flow.http_status, flow.error = "open", None, None
    flow.served_model = flow.provider = flow.upstream_format = None
    flow.ttfb_ms = None  # the client's first byte is the accepted answer's
    blank = flow.usage = Usage()
    flow.notes["cascade_rejected_usd"] = cheap_cost
    try:
        resp = await ctx.relay.forward(request, flow, body, raw)
    finally:
        # the relay sets cost_usd from the answering model's usage alone
        flow.cost_usd = cheap_cost + (flow.cost_usd if flow.usage is not blank else 0.0)
    return _tag(resp, "escalated")


def _verdict(flow: Flow, resp: web.StreamResponse, body: dict[str, Any],
             settings: CascadeConfig) -> str | None:
    if flow.status != "ok" or resp.status != 200 or not isinstance(resp, web.Response):
        return f"upstream error: {flow.error or f'HTTP {resp.status}'}"
    try:
        answer = orjson.loads(resp.body)  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        return "upstream error: the answer is not JSON"
    if not isinstance(answer, dict):
        return "upstream error: the answer is not a JSON object"
    return check_answer(flow.client_format, answer, body,
                        compile_patterns(tuple(settings.refusal_patterns)))


def _reason(flow: Flow, text: str) -> None:
    assert flow.decision is not None
    flow.decision.reasons.append(text)
    flow.notes["decision_updated"] = True  # the ledger rewrites the row's decision


def _tag(resp: web.StreamResponse, outcome: str) -> web.StreamResponse:
    if not resp.prepared:  # non-streaming answers are not sent yet
        resp.headers[HEADER] = outcome
    return resp
