"""LedgerService: request pages, sessions, and a session's timeline."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from switchman_daemon.ledger import queries
from switchman_shared.proto_gen.switchman.v1 import ledger_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import ledger_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

_DEFAULT_PAGE, _MAX_PAGE = 100, 1000


def page_size(n: int) -> int:
    return min(n, _MAX_PAGE) if n > 0 else _DEFAULT_PAGE


def decision_msg(raw: str | None) -> pb.Decision | None:
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    return pb.Decision(model=str(d.get("model") or ""), how=str(d.get("how") or ""),
                       fallbacks=[str(x) for x in d.get("fallbacks") or []],
                       reasons=[str(x) for x in d.get("reasons") or []])


_REQ_FIELDS = {f.name for f in pb.RequestRecord.DESCRIPTOR.fields} - {"decision"}


def request_msg(row: dict[str, Any]) -> pb.RequestRecord:
    msg = pb.RequestRecord(**{k: v for k, v in row.items() if k in _REQ_FIELDS and v is not None})
    d = decision_msg(row.get("decision"))
    if d is not None:
        msg.decision.CopyFrom(d)
    return msg


def session_msg(s: dict[str, Any]) -> pb.Session:
    return pb.Session(session_id=s["session_id"], client=s["client"],
                      started_at=s["started_at"], last_at=s["last_at"], turns=s["requests"],
                      spend_usd=s["cost_usd"], baseline_usd=s["baseline_usd"],
                      savings_usd=s["savings_usd"], cache_hit_rate=s["cache_hit_rate"],
                      models=s["models"])


def _after(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    t, sep, rid = token.partition("|")
    try:
        if not sep:
            raise ValueError
        return float(t), rid
    except ValueError:
        raise ValueError("invalid page_token") from None


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def _engine(self) -> Any:
        assert self.daemon.ctx is not None
        return self.daemon.ctx.ledger.engine

    async def ListRequests(self, request: pb.ListRequestsRequest, context: Any
                           ) -> pb.ListRequestsReply:
        r = request
        f = queries.RequestFilter(since=r.since or None, until=r.until or None,
                                  session_id=r.session_id or None, model=r.model or None,
                                  status=r.status or None, client=r.client or None,
                                  team_key_id=r.team_key_id or None)
        n = page_size(r.page_size)
        rows = await asyncio.to_thread(queries.list_requests, self._engine, f, n + 1,
                                       _after(r.page_token))
        token = ""
        if len(rows) > n:
            rows = rows[:n]
            token = f"{rows[-1]['started_at']!r}|{rows[-1]['id']}"
        return pb.ListRequestsReply(requests=[request_msg(x) for x in rows],
                                    next_page_token=token)

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Any
                           ) -> pb.ListSessionsReply:
        n = page_size(request.page_size)
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            raise ValueError("invalid page_token") from None
        rows = await asyncio.to_thread(queries.list_sessions, self._engine,
                                       request.since or None, n + 1, offset)
        token = str(offset + n) if len(rows) > n else ""
        return pb.ListSessionsReply(sessions=[session_msg(s) for s in rows[:n]],
                                    next_page_token=token)

    async def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.SessionDetail:
        sid = request.session_id

        def load() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            return (queries.list_sessions(self._engine, None, 1, session_id=sid),
                    queries.session_rows(self._engine, sid))

        summary, rows = await asyncio.to_thread(load)
        if not summary:
            raise LookupError(f"no session {sid!r} in the ledger")
        return pb.SessionDetail(session=session_msg(summary[0]),
                                timeline=[request_msg(x) for x in rows])
