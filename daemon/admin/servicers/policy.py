"""PolicyService: objective weights, fallbacks, rules, a per-request what-if
preview, and a what-if over the recorded traffic (ReplayPreview)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from switchman_daemon.evaluation import whatif
from switchman_daemon.managed_config import ConfigEditor
from switchman_daemon.routing.router import Router
from switchman_daemon.routing.signals import Signals
from switchman_shared.config_schema import Config, Objective
from switchman_shared.proto_gen.switchman.v1 import policy_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import policy_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

_WEIGHTS = ("cost", "quality", "latency")
_CASCADE = ("enabled", "quality_floor", "max_cost_ratio")
_ALL_PATHS = ("objective", "rules", "fallbacks", "honour_requested_model", "cascade",
              "keepalive")


def policy_msg(cfg: Config) -> pb.Policy:
    r = cfg.routing
    o, c = r.objective, r.cascade
    return pb.Policy(
        objective=pb.Objective(cost=o.cost, quality=o.quality, latency=o.latency),
        fallbacks={m: pb.ModelList(models=fs) for m, fs in r.fallbacks.items()},
        rules=[pb.Rule(name=x.name, match_model=x.match_model, match_client=x.match_client,
                       match_role=x.match_role, route_to=x.route_to) for x in r.rules],
        honour_requested_model=r.honour_requested_model,
        cascade=pb.Cascade(enabled=c.enabled, quality_floor=c.quality_floor,
                           max_cost_ratio=c.max_cost_ratio),
        keepalive=r.keepalive)


def policy_delta(policy: pb.Policy, paths: list[str]) -> dict[str, Any]:
    """The routing-config change a SetPolicy request asks for."""
    routing: dict[str, Any] = {}
    for path in paths or _ALL_PATHS:
        head, _, leaf = path.partition(".")
        if head == "objective" and (not leaf or leaf in _WEIGHTS):
            obj = routing.setdefault("objective", {})
            for w in (leaf,) if leaf else _WEIGHTS:
                obj[w] = getattr(policy.objective, w)
        elif path == "fallbacks":
            # merged per model; an empty list clears that model's fallbacks
            routing["fallbacks"] = {m: list(fl.models) for m, fl in policy.fallbacks.items()}
        elif path == "honour_requested_model":
            routing["honour_requested_model"] = policy.honour_requested_model
        elif head == "cascade" and (not leaf or leaf in _CASCADE):
            # range checks are the config schema's ([routing.cascade]), as for the weights
            cascade = routing.setdefault("cascade", {})
            for f in (leaf,) if leaf else _CASCADE:
                cascade[f] = getattr(policy.cascade, f)
        elif path == "keepalive":
            routing["keepalive"] = policy.keepalive
        elif path == "rules":
            # replaced whole: rules are ordered, the first match wins
            routing["rules"] = [
                {"name": x.name, "match_model": x.match_model, "match_client": x.match_client,
                 "match_role": x.match_role, "route_to": x.route_to} for x in policy.rules]
        else:
            raise ValueError(f"unknown policy field {path!r} in update_mask")
    return {"routing": routing}


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, daemon: Daemon, editor: ConfigEditor) -> None:
        self.daemon = daemon
        self.editor = editor

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Any) -> pb.Policy:
        return policy_msg(self.editor.config)

    async def SetPolicy(self, request: pb.SetPolicyRequest, context: Any) -> pb.Policy:
        delta = policy_delta(request.policy, list(request.update_mask.paths))
        return policy_msg(await self.editor.change(delta))

    async def Preview(self, request: pb.PreviewRequest, context: Any) -> pb.PreviewReply:
        assert self.daemon.ctx is not None
        ctx = self.daemon.ctx
        cfg = ctx.config
        if request.HasField("objective"):
            o = request.objective
            obj = Objective(cost=o.cost, quality=o.quality, latency=o.latency)
            cfg = cfg.model_copy(update={"routing": cfg.routing.model_copy(
                update={"objective": obj})})
        s = Signals(client_format="chat", requested_model=request.requested_model, stream=False,
                    session_id=request.session_id or None, has_tools=request.has_tools,
                    has_images=request.has_images,
                    approx_input_tokens=int(request.input_tokens))
        d = Router(cfg, ctx.registry).choose(s)
        return pb.PreviewReply(model=d.model.name, how=d.how,
                               fallbacks=[m.name for m in d.fallbacks], reasons=d.reasons)

    async def ReplayPreview(self, request: pb.ReplayPreviewRequest,
                            context: Any) -> pb.ReplayPreviewReply:
        assert self.daemon.ctx is not None
        ctx = self.daemon.ctx
        days = request.days if request.days > 0 else whatif.DEFAULT_DAYS
        limit = request.max_requests if request.max_requests > 0 else \
            whatif.DEFAULT_MAX_REQUESTS
        objectives = [{w: getattr(o, w) for w in _WEIGHTS} for o in request.objectives]
        cfg = ctx.config  # one snapshot: a config swap mid-replay does not mix pools
        since = whatif.window_start(days)

        def work() -> whatif.WhatIf:
            rows, truncated = whatif.recent_rows(ctx.ledger.engine, since, limit)
            return whatif.what_if(rows, cfg, since=since, objectives=objectives,
                                  truncated=truncated, days=days)

        # reads and replay are blocking CPU work: keep them off the event loop
        return replay_msg(await asyncio.to_thread(work))


def _replay_point(p: whatif.Point | None) -> pb.ReplayPoint | None:
    if p is None:
        return None
    msg = pb.ReplayPoint(cost_usd=p.cost_usd, quality=p.quality, quality_source=p.quality_source,
                         cache_hit_rate=p.cache_hit_rate, requests=p.requests,
                         baseline_cost_usd=p.baseline_cost_usd, current=p.current, label=p.label)
    if p.objective is not None:
        msg.objective.CopyFrom(pb.Objective(**p.objective))
    return msg


def replay_msg(w: whatif.WhatIf) -> pb.ReplayPreviewReply:
    return pb.ReplayPreviewReply(
        recorded=_replay_point(w.recorded), strongest=_replay_point(w.strongest),
        points=[_replay_point(p) for p in w.points], note=w.note, since=w.since, pool=w.pool,
        truncated=w.truncated)
