"""What-if over recorded traffic: the ledger's recent requests replayed through
the real router (replay.py) with a running daemon's pool, once per objective.

The ledger carries no task outcomes and no prompt text, so quality here is the
quality predictor's estimate (catalog priors on replay bodies), never measured;
every point says so (``quality_source = "predicted"``). The recorded point is
the ledger's own spend for the same requests, with its predicted quality
computed the same way from the models that actually served them.

Blocking and CPU-bound: the admin servicer runs ``what_if`` in a thread.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from switchman_daemon.evaluation.converters import ledger_rows
from switchman_daemon.evaluation.harness import SWEEP
from switchman_daemon.evaluation.replay import (
    Env,
    RouterStrategy,
    RunResult,
    Strongest,
    Truth,
    _catalog,
    prepare,
    run,
)
from switchman_daemon.ledger.schema import requests
from switchman_daemon.routing.quality_prior import QualityPredictor
from switchman_shared.config_schema import Config

DEFAULT_DAYS = 7.0
DEFAULT_MAX_REQUESTS = 5000
# a few points from cost-led to quality-led (every other harness sweep point)
DEFAULT_SWEEP: tuple[tuple[float, float, float], ...] = SWEEP[::2]
PREDICTED = "predicted"

# One replay at a time: a replay is seconds of CPU, and the predictor caches
# per-text features (not safe to share between threads). Its own instance, so
# the live router's predictor is never touched from this thread.
_LOCK = threading.Lock()
_PREDICTOR: QualityPredictor | None = None


def _predictor() -> QualityPredictor:
    global _PREDICTOR
    if _PREDICTOR is None:
        _PREDICTOR = QualityPredictor()
    return _PREDICTOR


@dataclass
class Point:
    label: str  # recorded | current | sweep | requested | always-strongest
    cost_usd: float
    quality: float
    cache_hit_rate: float
    requests: int
    objective: dict[str, float] | None = None
    baseline_cost_usd: float = 0.0
    current: bool = False
    quality_source: str = PREDICTED


@dataclass
class WhatIf:
    since: float
    pool: list[str]
    recorded: Point | None = None
    strongest: Point | None = None
    points: list[Point] = field(default_factory=list)
    note: str = ""
    truncated: bool = False


def recent_rows(engine: Engine, since: float, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Completed requests started at or after ``since``, the most recent ``limit``
    of them, oldest first; and whether older ones were left out."""
    c = requests.c
    stmt = (sa.select(requests).where(c.status == "ok", c.started_at >= since)
            .order_by(c.started_at.desc(), c.id.desc()).limit(limit + 1))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
    truncated = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return rows, truncated


def replay_pool(config: Config) -> list[str]:
    """The default pool's enabled models the simulator can price and cache (a
    model needs a catalog entry for the sim's cache rules)."""
    pools = config.pools
    name = next((n for n, p in pools.items() if p.default), next(iter(pools), None))
    if name is None:
        return []
    cat = _catalog()
    out = []
    for m in pools[name].models:
        mc = config.models.get(m)
        if mc is None or not mc.enabled:
            continue
        if (mc.upstream_id or m) in cat:
            out.append(m)
    return out


def _obj(w: tuple[float, float, float]) -> dict[str, float]:
    return {"cost": w[0], "quality": w[1], "latency": w[2]}


def _point(label: str, r: RunResult, objective: dict[str, float] | None = None,
           current: bool = False) -> Point:
    return Point(label, r.cost, r.quality, r.cache_hit, r.calls, objective, current=current)


def what_if(rows: Sequence[dict[str, Any]], config: Config, *, since: float,
            objectives: Sequence[dict[str, float]] | None = None,
            truncated: bool = False, days: float = DEFAULT_DAYS) -> WhatIf:
    """Replay ``rows`` (oldest first) under each objective; ``objectives`` None or
    empty = the config's current objective plus ``DEFAULT_SWEEP``."""
    pool = replay_pool(config)
    out = WhatIf(since=since, pool=pool, truncated=truncated)
    if not rows:
        out.note = f"no recorded traffic in the last {days:g} days"
        return out
    if not pool:
        out.note = "the default pool has no model the simulator can replay"
        return out
    o = config.routing.objective
    cur = {"cost": o.cost, "quality": o.quality, "latency": o.latency}
    asked = [dict(x) for x in objectives or ()]
    plan: list[tuple[str, dict[str, float]]] = (
        [("requested", x) for x in asked] if asked
        else [("current", cur), *(("sweep", _obj(w)) for w in DEFAULT_SWEEP)])
    records = ledger_rows(rows)
    with _LOCK:
        predictor = _predictor()
        prepared = prepare(records)
        truth = Truth(prepared, predictor)
        out.recorded = _recorded(rows, prepared, truth, config, pool, predictor)
        env = Env(pool, cur, quality=predictor, base=config)
        out.strongest = _point("always-strongest", run(prepared, Strongest(), env, truth))
        for label, obj in plan:
            env = Env(pool, obj, quality=predictor, base=config)
            r = run(prepared, RouterStrategy(env), env, truth, obj)
            out.points.append(_point(label, r, obj, current=_same(obj, cur)))
    if truncated:
        out.note = f"replayed the most recent {len(rows)} requests of the last {days:g} days"
    return out


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) < 1e-9 for k in ("cost", "quality", "latency"))


def _recorded(rows: Sequence[dict[str, Any]], prepared: list[Any], truth: Truth,
              config: Config, pool: list[str], predictor: QualityPredictor) -> Point:
    """The ledger's actual spend and cache hits; quality predicted as for the
    replays, from the model each request was really served by."""
    cost = sum(float(r.get("cost_usd") or 0.0) for r in rows)
    # like the ledger's savings: a row without a baseline counts at its own cost
    base = sum(float(r["baseline_cost_usd"] if r.get("baseline_cost_usd") is not None
                     else r.get("cost_usd") or 0.0) for r in rows)
    read = sum(int(r.get("cache_read_tokens") or 0) for r in rows)
    prompt = sum(int(r.get(k) or 0) for r in rows for k in (
        "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens"))
    registry = Env(pool, quality=predictor, base=config).registry
    task_q: dict[str, list[float]] = {}
    for p in prepared:
        m = registry.models.get(p.rec.extra.get("served_model") or "")
        if m is not None and p.rec.role in ("main", "subagent"):
            task_q.setdefault(f"{p.rec.session_id}|{p.rec.task_id}", []).append(truth(p, m))
    q = statistics.fmean(statistics.fmean(v) for v in task_q.values()) if task_q else 0.0
    return Point("recorded", cost, q, read / prompt if prompt else 0.0, len(rows),
                 baseline_cost_usd=base)


def window_start(days: float, now: float | None = None) -> float:
    return (time.time() if now is None else now) - max(days, 0.0) * 86400.0
