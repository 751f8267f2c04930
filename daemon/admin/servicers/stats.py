"""StatsService: a live snapshot-then-deltas stream and time-bucketed rollups.

Interim source: the ledger's aggregates, re-read at most once per interval
while a client watches. The stats domain module (daemon/stats.py) replaces
``_read`` with in-memory counters; the message shapes stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from switchman_daemon import __version__
from switchman_daemon.admin.servicers.ledger import decision_msg
from switchman_daemon.ledger import queries
from switchman_shared.proto_gen.switchman.v1 import stats_pb2 as pb
from switchman_shared.proto_gen.switchman.v1 import stats_pb2_grpc

if TYPE_CHECKING:
    from switchman_daemon.app import Daemon

_BUCKETS = {pb.RESOLUTION_MINUTE: 60, pb.RESOLUTION_HOUR: 3600, pb.RESOLUTION_DAY: 86400}
_DAY = 86400.0


def totals_msg(t: dict[str, Any]) -> pb.Totals:
    return pb.Totals(requests=t["requests"], errors=t["errors"], spend_usd=t["cost_usd"],
                     baseline_usd=t["baseline_usd"], savings_usd=t["savings_usd"],
                     cache_hit_rate=t["cache_hit_rate"], input_tokens=t["input_tokens"],
                     cache_read_tokens=t["cache_read_tokens"],
                     cache_write_tokens=t["cache_write_tokens"] + t["cache_write_1h_tokens"],
                     output_tokens=t["output_tokens"])


def decision_feed_msg(row: dict[str, Any]) -> pb.RecentDecision:
    d = decision_msg(row.get("decision"))
    return pb.RecentDecision(
        request_id=row["id"], at=row["ended_at"] or row["started_at"],
        session_id=row["session_id"] or "", requested_model=row["requested_model"] or "",
        served_model=row["served_model"] or "", how=d.how if d else "",
        reasons=list(d.reasons) if d else [], cost_usd=row["cost_usd"] or 0.0)


def _changed(new: dict[str, Any], old: dict[str, Any]) -> list[pb.KeyedTotals]:
    return [pb.KeyedTotals(key=k, totals=totals_msg(v)) for k, v in new.items()
            if old.get(k) != v]


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def _engine(self) -> Any:
        assert self.daemon.ctx is not None
        return self.daemon.ctx.ledger.engine

    def _read(self, since: float, n_dec: int, dec_since: float | None) -> dict[str, Any]:
        e = self._engine
        return {"totals": queries.totals(e, since),
                "by_model": queries.totals_by(e, "served_model", since),
                "by_session": queries.totals_by(e, "session_id", since),
                "decisions": queries.recent(e, n_dec, dec_since)}

    async def Watch(self, request: pb.WatchRequest, context: Any
                    ) -> AsyncIterator[pb.StatsUpdate]:
        since = request.since or time.time() - _DAY
        n_dec = request.max_decisions or 20
        interval = max(request.interval_s or 1.0, 0.2)
        cur = await asyncio.to_thread(self._read, since, n_dec, None)
        last_dec = max((d["ended_at"] or 0.0 for d in cur["decisions"]), default=0.0)
        yield pb.StatsUpdate(
            snapshot=True, at=time.time(), since=since, totals=totals_msg(cur["totals"]),
            by_model=_changed(cur["by_model"], {}), by_session=_changed(cur["by_session"], {}),
            decisions=[decision_feed_msg(d) for d in cur["decisions"]],
            daemon_version=__version__)
        while True:
            await asyncio.sleep(interval)
            new = await asyncio.to_thread(self._read, since, n_dec, last_dec)
            if new["totals"] == cur["totals"] and not new["decisions"]:
                continue
            last_dec = max((d["ended_at"] or 0.0 for d in new["decisions"]), default=last_dec)
            yield pb.StatsUpdate(
                at=time.time(), since=since, totals=totals_msg(new["totals"]),
                by_model=_changed(new["by_model"], cur["by_model"]),
                by_session=_changed(new["by_session"], cur["by_session"]),
                decisions=[decision_feed_msg(d) for d in new["decisions"]])
            cur = new

    async def GetRollups(self, request: pb.GetRollupsRequest, context: Any
                         ) -> pb.GetRollupsReply:
        bucket = _BUCKETS.get(request.resolution, 3600)
        since = request.since or time.time() - bucket * 48
        rows = await asyncio.to_thread(queries.rollups, self._engine, bucket, since,
                                       request.until or None)
        return pb.GetRollupsReply(rollups=[
            pb.Rollup(bucket_start=r["bucket_start"], totals=totals_msg(r)) for r in rows])
