"""The deterministic layer around the router's choice, as the relay walks it.

For one request it turns the decision (a model and its fallback models) into
the ordered upstream candidates: each model expanded into its deployments in
the session's rendezvous order (daemon/routing/deployments.py), deployments
in cooldown (cooldown.py) moved to the end. It also holds the per-provider
concurrency limiters (limits.py) and the first-byte bounds (first_byte.py).
Everything skipped or moved is said in the decision's reasons.

Nothing configured (no deployments, nothing cooling, no limits, no bounds):
a request costs a config identity check, two dict truth tests and a list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from switchman_daemon.errors import ApiError, ErrorKind
from switchman_daemon.models import ModelInfo
from switchman_daemon.proxy.cooldown import Cooldowns
from switchman_daemon.proxy.limits import Limiter, ProviderLimits
from switchman_daemon.routing import deployments as dep
from switchman_shared.config_schema import Config

if TYPE_CHECKING:
    from switchman_daemon.app import DaemonContext
    from switchman_daemon.proxy.flow import Flow


def _key(m: ModelInfo) -> tuple[str, str, str]:
    return (m.name, m.provider, m.upstream_id)


def note(flow: Flow, reason: str) -> None:
    """Add a reason to the decision (the ledger rewrites the row's decision)."""
    assert flow.decision is not None
    flow.decision.reasons.append(reason)
    flow.notes["decision_updated"] = True


class Failover:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.deployments: dict[str, tuple[dep.Deployment, ...]] = {}
        self.cooldowns = Cooldowns()
        self.limits = ProviderLimits()
        self.first_byte: dict[str, float] = {}  # model name -> bound (s)
        self.first_byte_default: float | None = None
        self.queue_timeout_s = 10.0

    def refresh(self, ctx: DaemonContext) -> None:
        """(Re)build from the context's config, keeping what was learned
        (failures, cooldowns) and what is in flight (slots)."""
        cfg = ctx.config
        r = cfg.routing
        self.deployments = dep.build(cfg, ctx.registry, ctx.upstreams)
        self.cooldowns.configure(r.cooldown_failures, r.cooldown_window_s, r.cooldown_s)
        self.limits.configure(cfg.providers)
        self.first_byte = {n: mc.first_byte_timeout_s for n, mc in cfg.models.items()
                           if mc.first_byte_timeout_s is not None}
        self.first_byte_default = r.first_byte_timeout_s
        self.queue_timeout_s = r.queue_timeout_s
        self.config = cfg

    # -- the candidates ------------------------------------------------------------

    def candidates(self, flow: Flow) -> list[ModelInfo]:
        """What the relay tries, in order, for ``flow``'s decision."""
        d = flow.decision
        assert d is not None
        out = [d.model, *d.fallbacks]
        if self.deployments:
            out = self._expand(flow, out)
        if self.cooldowns.cooling:
            out = self._cooling_last(flow, out)
        return out

    def _expand(self, flow: Flow, models: list[ModelInfo]) -> list[ModelInfo]:
        out: list[ModelInfo] = []
        session: str | None = None
        for i, m in enumerate(models):
            deps = self.deployments.get(m.name)
            if deps is None:
                out.append(m)
                continue
            if session is None:
                session = flow.signals.cache_session
            ordered = dep.rendezvous_order(deps, session)
            if i == 0:
                # the deployment that holds this session's history (Relay._switching)
                flow.notes["session_deployment"] = ordered[0].model
                note(flow,
                    f"deployment {dep.label(ordered[0].model)}: this session's weighted pick "
                    f"of {len(deps)} ({', '.join(dep.label(x.model) for x in ordered[1:])} "
                    "next if it fails)")
            out.extend(x.model for x in ordered)
        return out

    def _cooling_last(self, flow: Flow, models: list[ModelInfo]) -> list[ModelInfo]:
        ready: list[ModelInfo] = []
        cooling: list[ModelInfo] = []
        notes: list[str] = []
        for m in models:
            left = self.cooldowns.remaining(_key(m))
            if left is None:
                ready.append(m)
            else:
                cooling.append(m)
                notes.append(f"{self.name(m)} ({left[0]:.1f}s left: {left[1]})")
        if not cooling:
            return models
        if ready:
            note(flow, "skipped while cooling down (tried last): " + "; ".join(notes))
        else:
            note(flow, "every candidate is cooling down, tried anyway: " + "; ".join(notes))
        return ready + cooling

    def name(self, m: ModelInfo) -> str:
        """A candidate in reasons: the model, with its provider when it has
        several deployments."""
        return dep.label(m) if m.name in self.deployments else m.name

    # -- outcomes ----------------------------------------------------------------

    def failed(self, m: ModelInfo, err: ApiError) -> bool:
        """A retryable failure of ``m``'s deployment; True if it now cools."""
        return self.cooldowns.failed(_key(m), err.status, err.retry_after, err.message)

    def succeeded(self, m: ModelInfo) -> None:
        c = self.cooldowns
        if c.cooling or c.counts:
            c.succeeded(_key(m))

    # -- limits and bounds ----------------------------------------------------------

    def bound(self, m: ModelInfo) -> float | None:
        """The first-byte bound for an attempt on ``m`` (None: no bound)."""
        return self.first_byte.get(m.name, self.first_byte_default)

    async def wait_for_slot(self, flow: Flow,
                            waiting: list[ModelInfo]) -> tuple[ModelInfo, Limiter | None] | None:
        """Wait (bounded) for room on any provider of ``waiting``; the first
        candidate to get a slot is removed from ``waiting`` and returned with
        its slot held (None: its provider lost its limit meanwhile)."""
        by = self.limits.by_provider
        for i, m in enumerate(waiting):
            if m.provider not in by:  # limit removed by a config change
                return waiting.pop(i), None
        lims = [by[m.provider] for m in waiting]
        i = await self.limits.acquire_any(lims, self.queue_timeout_s)
        if i is None:
            note(flow, f"no slot on {_providers(waiting)} within "
                           f"{self.queue_timeout_s:g}s (queue_timeout_s)")
            return None
        m = waiting.pop(i)
        note(flow, f"waited for a slot on {m.provider}")
        return m, lims[i]

    def full(self, flow: Flow, m: ModelInfo) -> None:
        lim = self.limits.by_provider.get(m.provider)
        note(flow, f"skipped {self.name(m)}: provider {m.provider} is at its "
                       f"max_concurrency ({lim.limit if lim else '?'})")

    def overloaded(self, fmt: str, waiting: Sequence[ModelInfo]) -> ApiError:
        """Every candidate's provider stayed at its limit: an overloaded error
        clients retry (Anthropic 529; OpenAI formats 503, since Codex gives up
        on a 429)."""
        return ApiError(
            ErrorKind.overloaded,
            f"all candidate providers ({_providers(waiting)}) are at their concurrency "
            f"limit; no slot freed within {self.queue_timeout_s:g}s",
            status=529 if fmt == "anthropic" else 503, retry_after=1.0)


def _providers(models: Sequence[ModelInfo]) -> str:
    return ", ".join(dict.fromkeys(m.provider for m in models))
