"""Feeds finished requests back into the routing engine (cache tracker,
session trends, latency fits). An addon on the flow's close hook."""

from __future__ import annotations

from collections.abc import Callable

from switchman_daemon.proxy.flow import Flow
from switchman_daemon.routing.prefix import Chain
from switchman_daemon.routing.router import Router


class RoutingObserver:
    def __init__(self, router: Callable[[], Router]) -> None:
        self._router = router  # a getter: a config change swaps the router

    @property
    def router(self) -> Router:
        return self._router()

    def flow_opened(self, flow: Flow) -> None:
        pass

    def flow_closed(self, flow: Flow) -> None:
        body = flow.notes.pop("body", None)
        if flow.status != "ok" or flow.served_model is None:
            return
        model = self.router.registry.models.get(flow.served_model)
        if model is None:
            return
        chain = flow_chain(self.router, flow, body)
        self.router.observe(flow.signals, chain, model, flow.usage, flow.ttfb_ms,
                            flow.latency_ms)


def flow_chain(router: Router, flow: Flow, body: dict | None = None) -> Chain | None:
    """The flow's prefix chain, built at most once (the decision's, if routing
    built one) and shared by the close hooks."""
    chain = flow.notes.get("chain")
    if chain is not None:
        return chain
    d = flow.decision
    if d is not None and d.chain is not None and d.chain.links:
        chain = d.chain
    else:
        body = body if body is not None else flow.notes.get("body")
        if body is None:
            return None
        chain = router.chain_for(flow.signals, body)
    flow.notes["chain"] = chain
    return chain
