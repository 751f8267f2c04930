"""Bridges flows to the ledger: a row opens when routing is done and closes
with the request's outcome, usage and cost."""

from __future__ import annotations

import time

from switchman_daemon.ledger import Ledger, RequestClose, RequestOpen
from switchman_daemon.proxy.flow import Flow


class LedgerAddon:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def flow_opened(self, flow: Flow) -> None:
        s = flow.signals
        d = flow.decision
        self.ledger.open(RequestOpen(
            id=flow.id,
            started_at=flow.started_at,
            client_format=flow.client_format,  # type: ignore[arg-type]
            requested_model=s.requested_model,
            client=s.user_agent[:200],
            session_id=s.session_id,
            agent_id=s.agent_id,
            request_role=s.role,
            served_model=d.model.name if d else None,
            provider=d.model.provider if d else None,
            stream=s.stream,
            team_key_id=flow.notes.get("team_key_id"),
            decision=d.to_json() if d else None,
        ))

    def flow_closed(self, flow: Flow) -> None:
        u = flow.usage
        status = flow.status if flow.status in ("ok", "error", "cancelled") else "error"
        self.ledger.close(RequestClose(
            id=flow.id, ended_at=time.time(), status=status,  # type: ignore[arg-type]
            http_status=flow.http_status, served_model=flow.served_model,
            provider=flow.provider, upstream_format=flow.upstream_format,
            input_tokens=u.input_tokens, cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            cache_write_1h_tokens=u.cache_write_1h_tokens, output_tokens=u.output_tokens,
            cost_usd=flow.cost_usd, baseline_cost_usd=flow.notes.get("baseline_cost_usd"),
            ttfb_ms=flow.ttfb_ms, latency_ms=flow.latency_ms,
            attempts=max(flow.attempts, 1), error=flow.error,
            # fallbacks and the cascade append reasons after the open
            decision=flow.decision.to_json() if flow.decision and (
                flow.attempts > 1 or flow.notes.get("decision_updated")) else None,
        ))
