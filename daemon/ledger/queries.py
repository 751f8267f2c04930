"""Read-side ledger queries for the admin plane: filtered request pages,
per-session aggregates and timelines, per-model totals and time buckets.

Blocking (SQLAlchemy); callers on the event loop run them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .schema import requests

c = requests.c
_TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
           "output_tokens")


@dataclass(frozen=True, slots=True)
class RequestFilter:
    since: float | None = None
    until: float | None = None
    session_id: str | None = None
    model: str | None = None
    status: str | None = None
    client: str | None = None
    team_key_id: str | None = None


def list_requests(engine: Engine, f: RequestFilter, limit: int,
                  after: tuple[float, str] | None = None) -> list[dict[str, Any]]:
    """Rows newest first; ``after`` = (started_at, id) of the previous page's last row."""
    stmt = sa.select(requests).order_by(c.started_at.desc(), c.id.desc()).limit(limit)
    for col, val in ((c.session_id, f.session_id), (c.served_model, f.model),
                     (c.status, f.status), (c.client, f.client),
                     (c.team_key_id, f.team_key_id)):
        if val:
            stmt = stmt.where(col == val)
    if f.since:
        stmt = stmt.where(c.started_at >= f.since)
    if f.until:
        stmt = stmt.where(c.started_at < f.until)
    if after is not None:
        t, rid = after
        stmt = stmt.where(sa.or_(c.started_at < t, sa.and_(c.started_at == t, c.id < rid)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def _aggregates() -> list[Any]:
    return [
        sa.func.count().label("requests"),
        sa.func.sum(sa.case((c.status == "error", 1), else_=0)).label("errors"),
        sa.func.sum(c.cost_usd).label("cost_usd"),
        sa.func.sum(sa.func.coalesce(c.baseline_cost_usd, c.cost_usd)).label("baseline_usd"),
        *(sa.func.sum(c[k]).label(k) for k in _TOKENS),
    ]


def _totals(row: Any) -> dict[str, Any]:
    out = {"requests": int(row["requests"] or 0), "errors": int(row["errors"] or 0),
           "cost_usd": float(row["cost_usd"] or 0.0),
           "baseline_usd": float(row["baseline_usd"] or 0.0)}
    for k in _TOKENS:
        out[k] = int(row[k] or 0)
    prompt = sum(out[k] for k in _TOKENS[:4])
    out["cache_hit_rate"] = out["cache_read_tokens"] / prompt if prompt else 0.0
    out["savings_usd"] = out["baseline_usd"] - out["cost_usd"]
    return out


def totals_by(engine: Engine, column: str, since: float | None,
              until: float | None = None) -> dict[str, dict[str, Any]]:
    """Totals keyed by ``column`` ("served_model" or "session_id"), rows with a value only."""
    col = c[column]
    stmt = sa.select(col.label("key"), *_aggregates()).where(col.is_not(None)).group_by(col)
    if since:
        stmt = stmt.where(c.started_at >= since)
    if until:
        stmt = stmt.where(c.started_at < until)
    with engine.connect() as conn:
        return {r["key"]: _totals(r) for r in conn.execute(stmt).mappings()}


def totals(engine: Engine, since: float | None, until: float | None = None) -> dict[str, Any]:
    stmt = sa.select(*_aggregates())
    if since:
        stmt = stmt.where(c.started_at >= since)
    if until:
        stmt = stmt.where(c.started_at < until)
    with engine.connect() as conn:
        return _totals(conn.execute(stmt).mappings().one())


def list_sessions(engine: Engine, since: float | None, limit: int, offset: int = 0,
                  session_id: str | None = None) -> list[dict[str, Any]]:
    """Sessions, most recently active first, with totals and the models used."""
    stmt = (sa.select(c.session_id, sa.func.min(c.started_at).label("started_at"),
                      sa.func.max(c.started_at).label("last_at"),
                      sa.func.max(c.client).label("client"), *_aggregates())
            .where(c.session_id.is_not(None)).group_by(c.session_id)
            .order_by(sa.desc("last_at"), c.session_id).limit(limit).offset(offset))
    if since:
        stmt = stmt.where(c.started_at >= since)
    if session_id:
        stmt = stmt.where(c.session_id == session_id)
    with engine.connect() as conn:
        rows = list(conn.execute(stmt).mappings())
        ids = [r["session_id"] for r in rows]
        models: dict[str, list[str]] = {i: [] for i in ids}
        if ids:
            pairs = conn.execute(
                sa.select(c.session_id, c.served_model).distinct()
                .where(c.session_id.in_(ids), c.served_model.is_not(None))
                .order_by(c.session_id, c.served_model))
            for sid, model in pairs:
                models[sid].append(model)
    return [{"session_id": r["session_id"], "client": r["client"] or "",
             "started_at": r["started_at"], "last_at": r["last_at"],
             "models": models[r["session_id"]], **_totals(r)} for r in rows]


def session_rows(engine: Engine, session_id: str) -> list[dict[str, Any]]:
    stmt = (sa.select(requests).where(c.session_id == session_id)
            .order_by(c.started_at, c.id))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def active_sessions(engine: Engine, since: float) -> int:
    stmt = sa.select(sa.func.count(sa.distinct(c.session_id))).where(
        c.started_at >= since, c.session_id.is_not(None))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one() or 0)


def rollups(engine: Engine, bucket_s: int, since: float,
            until: float | None) -> list[dict[str, Any]]:
    """Totals per time bucket of ``bucket_s`` seconds (UTC-aligned), oldest first."""
    # integer seconds then modulo: portable (SQLite may lack floor()); PostgreSQL's
    # cast rounds, which can move a request at most one second across a boundary
    secs = sa.cast(c.started_at, sa.BigInteger)
    bucket = (secs - secs % bucket_s).label("bucket")
    stmt = (sa.select(bucket, *_aggregates()).where(c.started_at >= since)
            .group_by(bucket).order_by(bucket))
    if until:
        stmt = stmt.where(c.started_at < until)
    with engine.connect() as conn:
        return [{"bucket_start": float(r["bucket"]), **_totals(r)}
                for r in conn.execute(stmt).mappings()]


def recent(engine: Engine, limit: int, since: float | None = None,
           started_before: float | None = None) -> list[dict[str, Any]]:
    """The latest finished requests, newest first (for the live decision feed)."""
    stmt = (sa.select(c.id, c.started_at, c.ended_at, c.session_id, c.requested_model,
                      c.served_model, c.cost_usd, c.decision)
            .where(c.status != "open").order_by(c.ended_at.desc(), c.id.desc()).limit(limit))
    if since is not None:
        stmt = stmt.where(c.ended_at > since)
    if started_before is not None:
        stmt = stmt.where(c.started_at < started_before)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def spend_by_team_key(engine: Engine, ids: list[str] | None = None) -> dict[str, float]:
    """All-time ledger spend (sum of ``cost_usd``) per team key id; ``ids`` narrows it."""
    stmt = (sa.select(c.team_key_id, sa.func.sum(c.cost_usd))
            .where(c.team_key_id.is_not(None)).group_by(c.team_key_id))
    if ids is not None:
        if not ids:
            return {}
        stmt = stmt.where(c.team_key_id.in_(ids))
    with engine.connect() as conn:
        return {k: float(v or 0.0) for k, v in conn.execute(stmt)}
