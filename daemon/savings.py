"""Honest savings: what each request would have cost on the baseline model
(configurable; default the pool's strongest) with the baseline's *own* cache
state, as if the whole session had run there. A shadow entry per session in
the routing tracker plays that counterfactual cache."""

from __future__ import annotations

from collections.abc import Callable

from switchman_daemon.models import ModelInfo
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.cost import request_cost
from switchman_daemon.routing.observer import flow_chain
from switchman_daemon.routing.router import Router
from switchman_daemon.routing.tracker import TTL_1H, TTL_5M

SHADOW = "baseline:"


def baseline_model(router: Router) -> ModelInfo | None:
    """The baseline for ``router``'s config (cached on the router: a config
    change builds a new one)."""
    try:
        return router.__dict__["_baseline"]
    except KeyError:
        found = router.__dict__["_baseline"] = _find_baseline(router)
        return found


def _find_baseline(router: Router) -> ModelInfo | None:
    reg = router.registry
    name = router.config.routing.baseline
    if name:
        return reg.models.get(name)
    pool = reg.pools.get(reg.default_pool or "", [])
    models = [reg.models[n] for n in pool if reg.models[n].enabled]
    return max(models, key=lambda m: (m.quality, m.prices.output), default=None)


class SavingsAddon:
    def __init__(self, router: Callable[[], Router]) -> None:
        self._router = router

    def flow_opened(self, flow: Flow) -> None:
        pass

    def flow_closed(self, flow: Flow) -> None:
        if flow.status != "ok":
            return
        router = self._router()
        base = baseline_model(router)
        if base is None:
            return
        u = flow.usage
        prompt = u.prompt_tokens
        if flow.served_model == base.name:
            # same model, same bill (less a rejected cascade attempt the baseline never makes)
            flow.notes["baseline_cost_usd"] = flow.cost_usd - flow.notes.get(
                "cascade_rejected_usd", 0.0)
        else:
            chain = flow_chain(router, flow)
            sid = flow.signals.cache_session
            tr = router.tracker
            warm = tr.warm_tokens(sid, SHADOW + base.name, chain) if chain else 0
            cacheable = prompt >= tr.min_prefix_for(base.name, base.min_cache_prefix) and (
                u.cache_read_tokens + u.cache_write_tokens + u.cache_write_1h_tokens > 0
                or flow.signals.cache_marked or flow.client_format != "anthropic")
            cost, read, write, _ = request_cost(base, prompt, warm, u.output_tokens,
                                                cacheable=cacheable,
                                                ttl_1h=flow.signals.ttl_1h)
            flow.notes["baseline_cost_usd"] = cost
            if chain is not None:
                tr.observe(sid, SHADOW + base.name, base.min_cache_prefix, chain,
                           Usage(cache_read_tokens=read, cache_write_tokens=write,
                                 output_tokens=u.output_tokens),
                           caching_expected=False,
                           ttl=TTL_1H if flow.signals.ttl_1h else TTL_5M,
                           update_session=False)
