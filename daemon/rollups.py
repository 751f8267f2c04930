"""Minute / hour / day aggregates of the ledger, for charts over months of data.

``compute`` recomputes every bucket that overlaps a time range from the raw
``requests`` rows and replaces what was stored for those buckets, in one
transaction: running it twice (or after a crash halfway) gives the same table.
Minute and hour buckets are aligned to UTC epoch multiples; day buckets start at
local midnight in the configured time zone, so "today" on a chart is the user's.
Rows are bucketed by ``started_at``; an open request counts with its cost so far
(zero) until a later recompute (the jobs re-run recent buckets for that).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from switchman_daemon.ledger.schema import requests
from switchman_daemon.store_tables import ensure_admin_tables, rollups

Resolution = Literal["minute", "hour", "day"]
RESOLUTIONS: tuple[str, ...] = ("minute", "hour", "day")
_SIZE = {"minute": 60.0, "hour": 3600.0}
ALL_MODELS = "*"
_TOKENS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
)
_SUMS = ("requests", "errors", "cost_usd", "baseline_cost_usd", *_TOKENS)


class Rollups:
    def __init__(self, engine: Engine, tz: str = "UTC") -> None:
        self.engine = engine
        self.tz = ZoneInfo(tz)
        ensure_admin_tables(engine)

    # ---- buckets --------------------------------------------------------------------

    def floor(self, resolution: str, t: float) -> float:
        """Start of the bucket holding ``t``."""
        if resolution in _SIZE:
            size = _SIZE[resolution]
            return math.floor(t / size) * size
        if resolution == "day":
            d = datetime.fromtimestamp(t, self.tz).date()
            return datetime.combine(d, dtime(0), tzinfo=self.tz).timestamp()
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")

    def next_bucket(self, resolution: str, start: float) -> float:
        if resolution in _SIZE:
            return start + _SIZE[resolution]
        d = datetime.fromtimestamp(start, self.tz).date() + timedelta(days=1)
        return datetime.combine(d, dtime(0), tzinfo=self.tz).timestamp()

    def buckets(self, resolution: str, since: float, until: float) -> list[float]:
        """Starts of the buckets overlapping [since, until)."""
        out: list[float] = []
        b = self.floor(resolution, since)
        while b < until:
            out.append(b)
            b = self.next_bucket(resolution, b)
        return out

    # ---- writing --------------------------------------------------------------------

    def compute(self, resolution: str, since: float, until: float) -> int:
        """Recompute (replace) every bucket overlapping [since, until). Returns the
        number of rows written."""
        starts = self.buckets(resolution, since, until)
        if not starts:
            return 0
        lo, hi = starts[0], self.next_bucket(resolution, starts[-1])
        rows: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            if resolution in _SIZE:
                rows = self._grouped(conn, resolution, lo, hi)
            else:
                for b in starts:
                    rows += self._grouped(conn, resolution, b, self.next_bucket("day", b), b)
            conn.execute(
                sa.delete(rollups).where(
                    rollups.c.resolution == resolution,
                    rollups.c.bucket_start >= lo,
                    rollups.c.bucket_start < hi,
                )
            )
            if rows:
                conn.execute(sa.insert(rollups), rows)
        return len(rows)

    def _grouped(
        self,
        conn: Connection,
        resolution: str,
        lo: float,
        hi: float,
        fixed_bucket: float | None = None,
    ) -> list[dict[str, Any]]:
        c = requests.c
        model = sa.func.coalesce(c.served_model, c.requested_model)
        if fixed_bucket is None:
            size = _SIZE[resolution]
            if conn.dialect.name == "sqlite":
                # CAST truncates, which is floor for the positive epoch times we store.
                bucket = sa.cast(c.started_at / size, sa.Integer) * size
            else:
                bucket = sa.func.floor(c.started_at / size) * size
        else:
            bucket = sa.literal(fixed_bucket, sa.Double)
        sums = [
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((c.status == "error", 1), else_=0)).label("errors"),
            sa.func.sum(c.cost_usd).label("cost_usd"),
            # Rows without a baseline cost count as their own cost (no savings claimed).
            sa.func.sum(sa.func.coalesce(c.baseline_cost_usd, c.cost_usd)).label(
                "baseline_cost_usd"
            ),
            *(sa.func.sum(c[k]).label(k) for k in _TOKENS),
        ]
        stmt = (
            sa.select(bucket.label("b"), model.label("m"), *sums)
            .where(c.started_at >= lo, c.started_at < hi)
            # By label: the same expression twice would carry two bind parameters,
            # which PostgreSQL does not accept as "the same" grouping expression.
            .group_by(sa.literal_column("b"), sa.literal_column("m"))
        )
        per_model: list[dict[str, Any]] = []
        totals: dict[float, dict[str, Any]] = {}
        for r in conn.execute(stmt).mappings():
            b = float(r["b"])
            row = {"resolution": resolution, "bucket_start": b, "model": r["m"] or ""}
            for k in _SUMS:
                row[k] = float(r[k] or 0) if "cost" in k else int(r[k] or 0)
            per_model.append(row)
            t = totals.get(b)
            if t is None:
                totals[b] = {**row, "model": ALL_MODELS}
            else:
                for k in _SUMS:
                    t[k] += row[k]
        return per_model + list(totals.values())

    def prune(self, resolution: str, before: float) -> int:
        """Delete buckets of ``resolution`` that start before ``before``."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.delete(rollups).where(
                    rollups.c.resolution == resolution, rollups.c.bucket_start < before
                )
            ).rowcount or 0

    # ---- reading --------------------------------------------------------------------

    def series(
        self, resolution: str, since: float, until: float, by_model: bool = False
    ) -> list[dict[str, Any]]:
        """Stored buckets starting in [since, until), oldest first; one row per bucket
        (``by_model=False``) or per bucket and model. Empty buckets are absent."""
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
        r = rollups.c
        stmt = (
            sa.select(rollups)
            .where(r.resolution == resolution, r.bucket_start >= since, r.bucket_start < until)
            .where(r.model != ALL_MODELS if by_model else r.model == ALL_MODELS)
            .order_by(r.bucket_start, r.model)
        )
        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for row in conn.execute(stmt).mappings():
                d = {k: row[k] for k in ("bucket_start", *_SUMS)}
                if by_model:
                    d["model"] = row["model"]
                prompt = sum(row[k] for k in _TOKENS if k != "output_tokens")
                d["prompt_tokens"] = prompt
                d["baseline_usd"] = row["baseline_cost_usd"]  # the admin plane's name
                d["savings_usd"] = row["baseline_cost_usd"] - row["cost_usd"]
                d["cache_hit_rate"] = row["cache_read_tokens"] / prompt if prompt else 0.0
                out.append(d)
        return out


__all__ = ["ALL_MODELS", "RESOLUTIONS", "Rollups"]
