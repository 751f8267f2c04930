"""Ledger export to CSV or JSON Lines, and parsing of ``--since`` style times."""

from __future__ import annotations

import csv
import json
import math
import re
import time
from datetime import UTC, date, datetime
from typing import Any, Literal, TextIO

from .schema import REQUEST_COLUMNS
from .store import Ledger

_TIME_COLUMNS = ("started_at", "ended_at")

# Stable export order: the table's columns, each epoch time followed by its ISO form.
EXPORT_COLUMNS: tuple[str, ...] = tuple(
    col
    for name in REQUEST_COLUMNS
    for col in ((name, f"{name}_iso") if name in _TIME_COLUMNS else (name,))
)

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def iso_utc(epoch: float | None) -> str | None:
    """ISO-8601 UTC with millisecond precision, e.g. ``2026-11-01T09:30:00.250Z``."""
    if epoch is None:
        return None
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def export(
    ledger_or_url: Ledger | str,
    fmt: Literal["csv", "jsonl"],
    out: TextIO,
    since: float | None = None,
) -> int:
    """Write ledger rows started at or after ``since`` (oldest first) to ``out``.

    CSV has a header row; empty cells are NULL and booleans are ``true``/``false``.
    JSONL has one object per line with native types; ``decision`` is embedded as
    JSON when it parses, else kept as text. Returns the number of rows written.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}; use 'csv' or 'jsonl'")
    if isinstance(ledger_or_url, Ledger):
        return _write(ledger_or_url, fmt, out, since)
    ledger = Ledger(ledger_or_url)  # read-only use: the writer thread is never started
    try:
        return _write(ledger, fmt, out, since)
    finally:
        ledger.stop()


def _write(ledger: Ledger, fmt: str, out: TextIO, since: float | None) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for row in ledger.iter_rows(since):
            rec = _with_iso(row)
            writer.writerow([_csv_cell(rec[c]) for c in EXPORT_COLUMNS])
            count += 1
    else:
        for row in ledger.iter_rows(since):
            rec = _with_iso(row)
            rec["decision"] = _maybe_json(rec["decision"])
            out.write(json.dumps({c: rec[c] for c in EXPORT_COLUMNS}, ensure_ascii=False))
            out.write("\n")
            count += 1
    return count


def _with_iso(row: dict[str, Any]) -> dict[str, Any]:
    for name in _TIME_COLUMNS:
        row[f"{name}_iso"] = iso_utc(row[name])
    row["stream"] = bool(row["stream"])
    return row


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _maybe_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_since(text: str, now: float | None = None) -> float:
    """Turn a user's "since" into UTC epoch seconds.

    Accepts a date (``2026-11-01``, midnight UTC), an ISO-8601 datetime (naive
    means UTC, matching the export), a relative age (``30m``, ``24h``, ``7d``,
    also ``s``/``w``) counted back from ``now``, or plain epoch seconds.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty time; use e.g. 2026-11-01, 2026-11-01T09:00Z or 24h")
    match = _RELATIVE.match(raw)
    if match:
        current = time.time() if now is None else now
        return current - float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    try:
        epoch = float(raw)
    except ValueError:
        pass
    else:
        if math.isfinite(epoch):
            return epoch
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}; use e.g. 2026-11-01, 2026-11-01T09:00Z, 30m, 24h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
