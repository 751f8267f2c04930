"""The routing engine: signals -> candidates -> score -> choice, with reasons.

A requested pool model is served as asked (a pin). A pool name (directly or
through an alias) lets the engine choose, per role:

- utility requests (titles, commit messages, probes) go to the cheapest capable model;
- compaction stays on the model that holds the session's cache (the replay is
  a warm read there and a cold prefill anywhere else);
- a step inside a task (a tool-result turn, the same Codex turn id) stays on the
  task's model, which keeps thinking signatures valid and the cache warm;
- a new task, a new session or a sub-agent is scored: expected dollars over the
  session's likely remaining turns (cache reads on the warm model vs. a full
  re-write elsewhere), predicted quality and latency, weighted by the objective.

Deterministic routing (fallbacks on 429/5xx, pins) wraps the choice; budgets
enter as a constraint (soft limit -> cost-heavy objective).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from switchman_daemon.models import ModelInfo, ModelRegistry, UnknownModel
from switchman_daemon.routing.cost import expected_cost
from switchman_daemon.routing.latency import LatencyModel
from switchman_daemon.routing.prefix import Chain, build_chain
from switchman_daemon.routing.quality_prior import QualityPredictor
from switchman_daemon.routing.semantic import SemanticRouter
from switchman_daemon.routing.signals import Signals
from switchman_daemon.routing.tracker import TTL_1H, TTL_5M, CacheTracker
from switchman_shared.config_schema import Config, RoutingRule


@dataclass(slots=True)
class Candidate:
    model: str
    cost_now: float
    cost_horizon: float
    warm_tokens: int
    quality: float
    latency_ms: float
    score: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "cost_now": round(self.cost_now, 6),
                "cost_horizon": round(self.cost_horizon, 6), "warm_tokens": self.warm_tokens,
                "quality": round(self.quality, 4), "latency_ms": round(self.latency_ms, 1),
                "score": round(self.score, 4)}


@dataclass(slots=True)
class Decision:
    model: ModelInfo
    fallbacks: list[ModelInfo]
    how: str  # requested | alias | rule | pool | utility | compaction | sticky
    reasons: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    session: str | None = None
    role: str = "main"
    predicted_cost: float | None = None
    chain: Chain | None = None
    previous_model: str | None = None  # the session's model before this decision

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model.name,
            "how": self.how,
            "role": self.role,
            "fallbacks": [m.name for m in self.fallbacks],
            "reasons": self.reasons,
        }
        if self.candidates:
            out["candidates"] = [c.to_json() for c in self.candidates]
        if self.predicted_cost is not None:
            out["predicted_cost"] = round(self.predicted_cost, 6)
        return out


class NoCandidate(Exception):
    pass


def remaining_turns(turns: int, role: str) -> float:
    """Expected turns left in a session: roughly as many as it has had (a Lindy
    prior), at least a few, capped; sub-agents are short-lived."""
    if role == "subagent":
        return float(min(max(turns, 3), 15))
    return float(min(max(turns, 4), 40))


class Router:
    def __init__(self, config: Config, registry: ModelRegistry,
                 tracker: CacheTracker | None = None,
                 latency: LatencyModel | None = None,
                 quality: QualityPredictor | None = None) -> None:
        self.config = config
        self.registry = registry
        # "is not None": an empty tracker is falsy (it has a __len__)
        self.tracker = tracker if tracker is not None else CacheTracker()
        self.latency = latency if latency is not None else LatencyModel()
        self.quality = quality if quality is not None else QualityPredictor()
        self._fallback_cache: dict[tuple[str, bool, bool, int], list[ModelInfo]] = {}
        self.semantic = SemanticRouter(config.routing.semantic)

    # -- constraints ------------------------------------------------------------

    def _capable(self, m: ModelInfo, s: Signals) -> bool:
        if s.has_tools and not m.tools:
            return False
        if s.has_images and not m.vision:
            return False
        return s.approx_input_tokens <= m.context_window

    def _provider_kind(self, m: ModelInfo) -> str:
        return self.config.providers[m.provider].kind

    def _cacheable(self, m: ModelInfo, s: Signals, prompt: int) -> bool:
        if prompt < self.tracker.min_prefix_for(m.name, m.min_cache_prefix):
            return False
        if self._provider_kind(m) == "anthropic" and s.client_format == "anthropic":
            # same format passes through: only the client's own breakpoints cache
            return s.cache_marked
        return True  # OpenAI caches automatically; translated Anthropic gets breakpoints

    # -- the choice -------------------------------------------------------------

    def choose(self, s: Signals, body: dict[str, Any] | None = None) -> Decision:
        """Pick a model for ``s``; raises UnknownModel / NoCandidate."""
        rule = self._rule_for(s)
        target = rule.route_to if rule is not None else s.requested_model
        kind, names = self.registry.resolve(target)
        sem = None
        if rule is None and kind == "pool" and s.new_task and s.role in ("main", "subagent"):
            sem = self.semantic.match(s.task_text)
            if sem is not None:
                target = sem.route.route_to
                kind, names = self.registry.resolve(target)
        models = [self.registry.models[n] for n in names]
        sid = s.cache_session
        if kind == "model":
            chosen = models[0]
            if rule is not None:
                how = "rule"
                reason = f"rule {rule.name or rule.route_to!r}: pinned to {chosen.name}"
            elif sem is not None:
                how = "semantic"
                reason = (f"semantic route {sem.route.name or sem.route.route_to!r}: task "
                          f"resembles {sem.example!r} ({sem.score:.2f})")
            else:
                how = "requested" if chosen.name == s.requested_model else "alias"
                reason = (f"{s.requested_model} served as {chosen.name}" if how == "alias"
                          else f"{chosen.name} requested (pinned)")
            st0 = self.tracker.peek_session(sid)
            return Decision(chosen, self._fallbacks(chosen, s), how, [reason],
                            session=sid, role=s.role,
                            previous_model=st0.last_model if st0 else None)
        capable = [m for m in models if self._capable(m, s)]
        if not capable:
            raise NoCandidate(
                f"no model in pool {s.requested_model!r} can serve this request "
                f"(tools={s.has_tools}, images={s.has_images}, ~{s.approx_input_tokens} tokens)")
        st = self.tracker.peek_session(sid)
        last = st.last_model if st else None
        last_model = next((m for m in capable if m.name == last), None)
        same_task = not s.new_task or (s.task_id is not None and st is not None
                                       and st.last_task == s.task_id)
        if s.role == "compaction" and last_model is not None:
            return self._fixed(last_model, s, "compaction",
                               f"compaction stays on {last_model.name}, which holds the "
                               "session's cache (a warm read there, a cold prefill elsewhere)")
        if s.role == "main" and same_task and last_model is not None:
            return self._fixed(last_model, s, "sticky",
                               f"step inside a task: stays on {last_model.name} "
                               "(keeps thinking signatures valid and the cache warm)")
        chain = (build_chain(s.client_format, body, prev=st.last_chain if st else None)
                 if body is not None else Chain([], []))
        cands = self._score(capable, s, sid, chain, st)
        if s.role == "utility":
            best = min(cands, key=lambda c: c.cost_now)
            how, reason = "utility", (f"background utility request: cheapest capable model "
                                      f"{best.model} (${best.cost_now:.5f})")
        else:
            best = max(cands, key=lambda c: c.score)
            how, reason = "pool", self._explain(best, cands, last, s)
            if rule is not None:
                reason = f"rule {rule.name or rule.route_to!r}: pool {target}; {reason}"
            elif sem is not None:
                reason = (f"semantic route {sem.route.name or target!r} ({sem.score:.2f}): "
                          f"pool {target}; {reason}")
            if s.extra.get("budget_soft"):
                reason += "; budget soft limit reached: cost-weighted objective"
        chosen = self.registry.models[best.model]
        if s.role in ("main", "subagent"):
            sess = self.tracker.session(sid)
            sess.last_model = chosen.name
            sess.last_task = s.task_id
        return Decision(chosen, self._fallbacks(chosen, s), how, [reason], cands, sid, s.role,
                        predicted_cost=best.cost_now, chain=chain, previous_model=last)

    def peek_model(self, s: Signals) -> ModelInfo:
        """The model a request would most likely go to, with no side effects on
        session state (for count_tokens): a pin as resolved, else the model
        the session is on, else the pool's first. Raises UnknownModel."""
        rule = self._rule_for(s)
        kind, names = self.registry.resolve(rule.route_to if rule else s.requested_model)
        if not names:
            raise UnknownModel(s.requested_model)
        st = self.tracker.peek_session(s.cache_session)
        if kind == "pool" and st is not None and st.last_model in names:
            return self.registry.models[st.last_model]
        return self.registry.models[names[0]]

    def _rule_for(self, s: Signals) -> RoutingRule | None:
        """The first configured rule matching this request, if any."""
        for r in self.config.routing.rules:
            if r.match_role and r.match_role != s.role:
                continue
            if r.match_model and not fnmatch.fnmatchcase(s.requested_model, r.match_model):
                continue
            if r.match_client and not fnmatch.fnmatchcase(s.user_agent, r.match_client):
                continue
            return r
        return None

    def _fixed(self, m: ModelInfo, s: Signals, how: str, reason: str) -> Decision:
        return Decision(m, self._fallbacks(m, s), how, [reason], session=s.cache_session,
                        role=s.role, previous_model=m.name)

    def _score(self, models: list[ModelInfo], s: Signals, sid: str, chain: Chain,
               st: Any) -> list[Candidate]:
        obj = self.config.routing.objective
        w_cost, w_q, w_lat = obj.cost, obj.quality, obj.latency
        if s.extra.get("budget_soft"):
            w_cost, w_q = max(w_cost, 0.9), min(w_q, 0.3)  # soft limit: downgrade
        prompt = max(chain.total_tokens, s.approx_input_tokens // 2, 1)
        output = st.avg_output if st else 500.0
        growth = st.avg_growth if st else 2000.0
        turns_left = remaining_turns(st.turns if st else 0, s.role)
        cands: list[Candidate] = []
        for m in models:
            warm = self.tracker.warm_tokens(sid, m.name, chain) if chain.links else 0
            cacheable = self._cacheable(m, s, prompt)
            est = expected_cost(m, prompt, warm, output, cacheable=cacheable,
                                remaining_turns=turns_left, growth=growth, ttl_1h=s.ttl_1h)
            q = self.quality.predict(s.task_text, m)
            lat = self.latency.predict_ms(m, prompt - warm if cacheable else prompt, output)
            cands.append(Candidate(m.name, est.now, est.horizon, warm, q, lat))
        max_cost = max(c.cost_horizon for c in cands) or 1.0
        max_lat = max(c.latency_ms for c in cands) or 1.0
        for c in cands:
            c.score = (w_q * c.quality - w_cost * c.cost_horizon / max_cost
                       - w_lat * c.latency_ms / max_lat)
        return cands

    def _explain(self, best: Candidate, cands: list[Candidate], last: str | None,
                 s: Signals) -> str:
        where = "new sub-agent" if s.role == "subagent" else (
            "new session" if last is None else "new task")
        parts = [f"{where}: {best.model} scores best (q={best.quality:.2f}, "
                 f"${best.cost_horizon:.4f} over the session horizon, "
                 f"~{best.latency_ms:.0f} ms)"]
        if best.warm_tokens:
            parts.append(f"{best.warm_tokens} prompt tokens warm in its cache")
        if last is not None and last != best.model:
            prev = next((c for c in cands if c.model == last), None)
            if prev is not None and prev.warm_tokens:
                parts.append(f"switching from {last} forgoes {prev.warm_tokens} warm tokens "
                             f"(${prev.cost_now:.4f} there vs ${best.cost_now:.4f} here now)")
        elif last is not None and best.warm_tokens:
            cheaper = min(cands, key=lambda c: c.cost_now)
            if cheaper.model != best.model:
                parts.append(f"staying beats moving to {cheaper.model}")
        return "; ".join(parts)

    # -- deterministic layer --------------------------------------------------------

    def _fallbacks(self, chosen: ModelInfo, s: Signals) -> list[ModelInfo]:
        """Configured fallbacks, else pool peers closest in quality (same
        provider family first), used when the choice is rate-limited or down."""
        # size bucket: context-window constraints only bite on large prompts
        key = (chosen.name, s.has_tools, s.has_images, s.approx_input_tokens >> 12)
        hit = self._fallback_cache.get(key)
        if hit is None:
            hit = self._fallback_cache[key] = self._compute_fallbacks(chosen, s)
        return list(hit)

    def _compute_fallbacks(self, chosen: ModelInfo, s: Signals) -> list[ModelInfo]:
        reg = self.registry
        configured = self.config.routing.fallbacks.get(chosen.name)
        if configured is not None:
            return [reg.models[n] for n in configured if n in reg.models and n != chosen.name]
        pool = reg.pools.get(reg.default_pool or "", [])
        peers = [
            reg.models[n]
            for n in pool
            if n != chosen.name and reg.models[n].enabled and self._capable(reg.models[n], s)
        ]
        chosen_kind = self._provider_kind(chosen)
        peers.sort(key=lambda m: (self._provider_kind(m) != chosen_kind,
                                  abs(m.quality - chosen.quality)))
        return peers[:2]

    # -- learning from outcomes -------------------------------------------------------

    def chain_for(self, s: Signals, body: dict[str, Any]) -> Chain:
        """The request's prefix chain, built incrementally from its session's last."""
        st = self.tracker.peek_session(s.cache_session)
        return build_chain(s.client_format, body, prev=st.last_chain if st else None)

    def observe(self, s: Signals, body_chain: Chain | None, model: ModelInfo,
                usage: Any, ttfb_ms: float | None, latency_ms: float | None) -> None:
        """Feed a finished request back: cache state, session trend, latency."""
        sid = s.cache_session
        chain = body_chain if body_chain is not None else Chain([], [])
        st = self.tracker.session(sid)
        if s.role == "compaction" or (s.window_id and st.window_id
                                      and st.window_id != s.window_id):
            self.tracker.break_session(sid)  # the history was rewritten
        if s.window_id:
            st.window_id = s.window_id
        self.tracker.observe(
            sid, model.name, model.min_cache_prefix, chain, usage,
            caching_expected=self._cacheable(model, s, usage.prompt_tokens),
            ttl=TTL_1H if s.ttl_1h else TTL_5M)
        if s.role in ("main", "subagent"):
            st.last_model = model.name  # what actually served (a fallback included)
        self.latency.observe(model.name, usage.input_tokens + usage.cache_write_tokens
                             + usage.cache_write_1h_tokens, ttfb_ms, latency_ms,
                             usage.output_tokens, s.stream)


__all__ = ["Candidate", "Decision", "NoCandidate", "Router", "UnknownModel"]
