"""The ledger: non-blocking enqueue on the hot path, batched writes on a thread.

``open()``/``hold()``/``close()`` only put the record on a ``queue.SimpleQueue`` (a C-level
unbounded FIFO whose put never blocks), so the event loop never waits on the database. One
writer thread wakes on the first queued record, lets a short window (50 ms) fill,
then writes everything queued in transactions of at most 500 records: one
executemany INSERT for the opens, then executemany UPDATEs for the holds and the
closes, so an open and its hold and close in the same batch all apply, open first
(in practice they merge into the open's INSERT).

Durability: a record is on disk once its batch commits, i.e. within ~50 ms plus the
commit. A hard crash loses at most that window; ``recover_interrupted()`` then marks
the rows that were opened but never closed.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .records import RequestClose, RequestHold, RequestOpen
from .schema import REQUEST_COLUMNS, ensure_schema, make_engine, requests

log = logging.getLogger("switchman.ledger")

_OPEN_FIELDS = tuple(RequestOpen.__slots__)  # type: ignore[attr-defined]
_CLOSE_FIELDS = tuple(RequestClose.__slots__)  # type: ignore[attr-defined]
_CLOSE_KEEP_IF_NONE = ("served_model", "provider", "upstream_format", "decision")

# Bind names carry a prefix: SQLAlchemy reserves a column's own name in SET clauses.
_UPDATE_CLOSE = (
    sa.update(requests)
    .where(requests.c.id == sa.bindparam("b_id"))
    .values(
        {
            name: (
                sa.func.coalesce(
                    sa.bindparam(f"b_{name}", type_=requests.c[name].type), requests.c[name]
                )
                if name in _CLOSE_KEEP_IF_NONE
                else sa.bindparam(f"b_{name}", type_=requests.c[name].type)
            )
            for name in _CLOSE_FIELDS
            if name != "id"
        }
    )
)

_UPDATE_HOLD = (
    sa.update(requests)
    .where(requests.c.id == sa.bindparam("b_id"))
    .values(reserved_usd=sa.bindparam("b_reserved_usd", type_=requests.c.reserved_usd.type))
)
_UPDATE_HOLD_SQL = "UPDATE requests SET reserved_usd = ? WHERE id = ?"

DEFAULT_OWNER = "local"

# Column defaults for the raw INSERT below (which must supply every column).
_DEFAULTS: dict[str, Any] = {
    c.name: (c.default.arg if c.default is not None and c.default.is_scalar else None)
    for c in requests.columns
}


def _insert_sql(dialect: sa.engine.Dialect) -> str:
    """A plain INSERT in the driver's paramstyle: executemany with tuples costs a
    fraction of SQLAlchemy's per-row parameter processing, and this runs on a
    thread that shares the GIL with the event loop."""
    style = dialect.paramstyle
    mark = "?" if style == "qmark" else "%s" if style in ("format", "pyformat") else None
    if mark is None:  # numeric / named: let SQLAlchemy handle it
        return ""
    cols = ", ".join(REQUEST_COLUMNS)
    return f"INSERT INTO requests ({cols}) VALUES ({', '.join([mark] * len(REQUEST_COLUMNS))})"


_TOKEN_KINDS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
)

# Ids opened (and committed) by this process whose close has not arrived; a close for
# one of them needs no existence check. Capped so forgotten closes cannot grow it
# without bound; past the cap we just fall back to checking the database.
_KNOWN_OPEN_CAP = 100_000


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop(_Flush):
    __slots__ = ()


class Ledger:
    """One row per proxied request, written in batches by a background thread."""

    def __init__(
        self,
        url: str,
        *,
        batch_interval: float = 0.05,
        max_batch: int = 500,
        owner: str = DEFAULT_OWNER,
    ) -> None:
        self.url = url
        # The daemon instance writing (stamped on every row it opens): several daemons
        # sharing one PostgreSQL ledger each recover only their own rows.
        self.owner = owner
        self._defaults = {**_DEFAULTS, "owner": owner}
        self._default_row = [self._defaults[col] for col in REQUEST_COLUMNS]
        self.engine = make_engine(url)
        ensure_schema(self.engine)
        self.batch_interval = batch_interval
        self.max_batch = max_batch
        # Rows opened before this instant belong to an earlier process (see
        # recover_interrupted); rows this process opens later are never touched.
        self.created_at = time.time()
        self.write_errors = 0  # records dropped after a failed write; for health checks
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._put = self._q.put
        self._qsize = self._q.qsize
        self._poke = threading.Event()  # cuts the batching window short
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._known_open: set[str] = set()
        self._insert_sql = _insert_sql(self.engine.dialect)
        # SQLite: the writer keeps one DBAPI connection and sends tuples built
        # straight from the records (no per-row dicts): this thread shares the
        # GIL with the event loop, so its CPU is the proxy's latency.
        self._raw_ok = self.engine.dialect.name == "sqlite" and bool(self._insert_sql)
        self._raw_conn: Any = None

    # ---- hot path -------------------------------------------------------------

    def open(self, rec: RequestOpen) -> None:
        """Enqueue the start of a request. Never blocks; safe from any thread."""
        if self._stopped:
            log.warning("ledger stopped; dropping open for request %s", rec.id)
            return
        self._put(rec)
        if self._qsize() >= self.max_batch and not self._poke.is_set():
            self._poke.set()

    def hold(self, request_id: str, reserved_usd: float) -> None:
        """Enqueue the budget estimate reserved for an open request (see
        ``RequestHold``). Never blocks; safe from any thread."""
        if self._stopped:
            return
        self._put(RequestHold(id=request_id, reserved_usd=reserved_usd))
        if self._qsize() >= self.max_batch and not self._poke.is_set():
            self._poke.set()

    def close(self, rec: RequestClose) -> None:
        """Enqueue the end of a request. Never blocks; safe from any thread."""
        if self._stopped:
            log.warning("ledger stopped; dropping close for request %s", rec.id)
            return
        self._put(rec)
        if self._qsize() >= self.max_batch and not self._poke.is_set():
            self._poke.set()

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread. Records enqueued before this are kept and written."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="switchman-ledger", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every record enqueued before this call is committed (or dropped
        after a logged write error). Raises TimeoutError if that takes longer than
        ``timeout`` and RuntimeError if the writer thread is not running."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("ledger writer is not running; call start() first")
        marker = _Flush()
        self._put(marker)
        self._poke.set()
        if not marker.done.wait(timeout):
            raise TimeoutError(f"ledger flush did not finish within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Write everything queued, stop the writer thread and release the engine."""
        if self._stopped:
            return
        if self._thread is None and self._qsize():
            self.start()  # records queued but never written: write them now
        self._stopped = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            marker = _Stop()
            self._put(marker)
            self._poke.set()
            if not marker.done.wait(timeout):
                log.error("ledger writer did not stop within %s s; records may be lost", timeout)
            thread.join(timeout)
        self.engine.dispose()

    def recover_interrupted(self, before: float | None = None) -> int:
        """Mark rows left "open" by an earlier process (e.g. after a crash) as
        "interrupted", ending now. Returns how many rows changed.

        Only rows started before ``before`` (default: when this Ledger was created)
        are touched, so requests this process is serving stay open; and only rows of
        this ledger's ``owner`` (or from before schema v2, which had no owner) on a
        shared (non-SQLite) database, so another daemon's live requests stay open.
        """
        cutoff = self.created_at if before is None else before
        now = time.time()
        c = requests.c
        where = [c.status == "open", c.started_at < cutoff]
        if self.engine.dialect.name != "sqlite":
            # a SQLite file has one daemon: there, a lost instance-id must not strand rows
            where.append(sa.or_(c.owner == self.owner, c.owner.is_(None)))
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(requests).where(*where).values(status="interrupted", ended_at=now)
            )
        count = result.rowcount or 0
        if count:
            log.warning("marked %d ledger rows from an earlier run as interrupted", count)
        return count

    # ---- reads ----------------------------------------------------------------

    def iter_rows(self, since: float | None = None, chunk: int = 1000) -> Iterator[dict[str, Any]]:
        """Stream rows oldest first, as dicts in table column order."""
        stmt = sa.select(requests).order_by(requests.c.started_at, requests.c.id)
        if since is not None:
            stmt = stmt.where(requests.c.started_at >= since)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=chunk).execute(stmt)
            for row in result.mappings():
                yield dict(row)

    def rows(
        self, since: float | None = None, limit: int | None = None, *, newest_first: bool = False
    ) -> list[dict[str, Any]]:
        """Rows started at or after ``since``; oldest first unless ``newest_first``
        (with ``limit``, that gives the most recent N)."""
        order = (
            (requests.c.started_at.desc(), requests.c.id.desc())
            if newest_first
            else (requests.c.started_at, requests.c.id)
        )
        stmt = sa.select(requests).order_by(*order)
        if since is not None:
            stmt = stmt.where(requests.c.started_at >= since)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]

    def totals(self, since: float | None = None) -> dict[str, Any]:
        """Aggregate counts, cost and tokens for rows started at or after ``since``.

        ``cache_hit_rate`` is cache-read tokens over the whole prompt (uncached +
        cache read + both kinds of cache write); 0.0 when there were no input tokens.
        """
        c = requests.c
        cols = [
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((c.status == "error", 1), else_=0)).label("errors"),
            sa.func.sum(c.cost_usd).label("cost_usd"),
            sa.func.sum(c.baseline_cost_usd).label("baseline_cost_usd"),
            *(sa.func.sum(c[k]).label(k) for k in _TOKEN_KINDS),
        ]
        stmt = sa.select(*cols)
        if since is not None:
            stmt = stmt.where(c.started_at >= since)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().one()
        out: dict[str, Any] = {
            "requests": int(row["requests"] or 0),
            "errors": int(row["errors"] or 0),
            "cost_usd": float(row["cost_usd"] or 0.0),
            "baseline_cost_usd": float(row["baseline_cost_usd"] or 0.0),
        }
        for k in _TOKEN_KINDS:
            out[k] = int(row[k] or 0)
        prompt = (
            out["input_tokens"]
            + out["cache_read_tokens"]
            + out["cache_write_tokens"]
            + out["cache_write_1h_tokens"]
        )
        out["prompt_tokens"] = prompt
        out["cache_hit_rate"] = out["cache_read_tokens"] / prompt if prompt else 0.0
        return out

    # ---- writer thread --------------------------------------------------------

    def _run(self) -> None:
        q = self._q
        batch: list[RequestOpen | RequestClose] = []
        while True:
            item = q.get()
            try:
                if not isinstance(item, _Flush):
                    # Let the batch fill briefly; flush()/stop()/a full queue cut it short.
                    self._poke.wait(self.batch_interval)
                self._poke.clear()
                while True:
                    if isinstance(item, _Flush):
                        self._write(batch)
                        item.done.set()
                        if isinstance(item, _Stop):
                            if self._raw_conn is not None:
                                with contextlib.suppress(Exception):
                                    self._raw_conn.close()
                                self._raw_conn = None
                            return
                    else:
                        batch.append(item)
                        if len(batch) >= self.max_batch:
                            self._write(batch)
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                self._write(batch)
            except Exception:  # pragma: no cover - _write already swallows write errors
                log.exception("ledger writer loop error; continuing")
                batch.clear()

    def _write(self, batch: list[RequestOpen | RequestClose]) -> None:
        """Commit ``batch`` in one transaction (clearing it); never raises."""
        if not batch:
            return
        try:
            try:
                done = self._apply_raw(batch) if self._raw_ok else None
                if done is None:
                    with self.engine.begin() as conn:
                        done = self._apply(conn, batch)
                self._remember(*done)
            except Exception:
                if len(batch) == 1:
                    raise
                # Retry one by one so a single bad record does not lose its neighbours.
                log.warning(
                    "ledger batch of %d failed; retrying records one by one",
                    len(batch),
                    exc_info=True,
                )
                for rec in batch:
                    try:
                        with self.engine.begin() as conn:
                            done = self._apply(conn, [rec])
                        self._remember(*done)
                    except Exception:
                        self.write_errors += 1
                        log.exception(
                            "ledger dropped %s for request %s",
                            type(rec).__name__,
                            getattr(rec, "id", "?"),
                        )
        except Exception:
            self.write_errors += 1
            rec = batch[0]
            log.exception(
                "ledger dropped %s for request %s", type(rec).__name__, getattr(rec, "id", "?")
            )
        finally:
            batch.clear()

    def _apply(
        self, conn: Connection, batch: list[RequestOpen | RequestClose]
    ) -> tuple[list[str], list[str]]:
        """Run the batch's statements; returns (opened ids, closed ids)."""
        opens: list[dict[str, Any]] = []
        closes: list[dict[str, Any]] = []
        holds: list[dict[str, Any]] = []
        for rec in batch:
            if type(rec) is RequestOpen:
                opens.append(_open_params(rec))
            elif type(rec) is RequestClose:
                closes.append(_close_params(rec))
            elif type(rec) is RequestHold:
                holds.append({"b_id": rec.id, "b_reserved_usd": rec.reserved_usd})
            else:
                raise TypeError(f"ledger got {type(rec).__name__}, not a ledger record")
        if holds and opens:  # the usual case: the hold follows its open within the batch
            by_id = {p["id"]: p for p in opens}
            rest = []
            for h in holds:
                o = by_id.get(h["b_id"])
                if o is None:
                    rest.append(h)
                else:
                    o["reserved_usd"] = h["b_reserved_usd"]
            holds = rest

        if opens and closes:
            # A request that opened and closed within one batch (most short ones)
            # becomes a single INSERT of its final state.
            by_id = {p["id"]: p for p in opens}
            rest = []
            for c in closes:
                o = by_id.get(c["b_id"])
                if o is None:
                    rest.append(c)
                    continue
                for name in _CLOSE_FIELDS:
                    v = c[f"b_{name}"]
                    if v is None and name in _CLOSE_KEEP_IF_NONE:
                        continue
                    o[name] = v
            merged_ids = [c["b_id"] for c in closes if c["b_id"] in by_id]
            closes = rest
        else:
            merged_ids = []
        if opens:
            if self._insert_sql:
                d = self._defaults
                conn.exec_driver_sql(
                    self._insert_sql,
                    [tuple(p.get(k, d[k]) for k in REQUEST_COLUMNS) for p in opens],
                )
            else:
                conn.execute(sa.insert(requests), [{**p, "owner": self.owner} for p in opens])
        if holds:  # the open was committed earlier (or lost: then this updates nothing)
            conn.execute(_UPDATE_HOLD, holds)
        if closes:
            opened_here = {p["id"] for p in opens}
            unknown = [
                p["b_id"]
                for p in closes
                if p["b_id"] not in opened_here and p["b_id"] not in self._known_open
            ]
            if unknown:
                # Defensive: a close whose open was never recorded (dropped, or from a
                # caller bug) still gets a row, so its tokens and cost are not lost.
                present = set(
                    conn.execute(
                        sa.select(requests.c.id).where(requests.c.id.in_(unknown))
                    ).scalars()
                )
                stubs = {}
                for p in closes:
                    if p["b_id"] in unknown and p["b_id"] not in present:
                        stubs[p["b_id"]] = {**_stub_params(p), "owner": self.owner}
                if stubs:
                    log.warning("ledger: %d close(s) without an open; inserting rows", len(stubs))
                    conn.execute(sa.insert(requests), list(stubs.values()))
            conn.execute(_UPDATE_CLOSE, closes)
        return [p["id"] for p in opens], [p["b_id"] for p in closes] + merged_ids

    def _apply_raw(
        self, batch: list[RequestOpen | RequestClose]
    ) -> tuple[list[str], list[str]] | None:
        """The common batch (opens, and closes of requests opened by this process)
        on a raw SQLite connection; None hands the batch to the general path."""
        opens: dict[str, RequestOpen] = {}
        closes: list[RequestClose] = []
        held: dict[str, float] = {}  # holds of opens in this batch: merged into the INSERT
        hold_updates: list[tuple[float, str]] = []
        for rec in batch:
            if type(rec) is RequestOpen:
                opens[rec.id] = rec
            elif type(rec) is RequestClose:
                closes.append(rec)
            elif type(rec) is RequestHold:
                if rec.id in opens:
                    held[rec.id] = rec.reserved_usd
                elif rec.id in self._known_open:
                    hold_updates.append((rec.reserved_usd, rec.id))
                else:
                    return None
            else:
                return None
        merged: dict[str, RequestClose] = {}
        updates: list[RequestClose] = []
        for c in closes:
            if c.id in opens and c.id not in merged:
                merged[c.id] = c
            elif c.id in self._known_open:
                updates.append(c)
            else:
                return None  # a close with no known open: the careful path
        if self._raw_conn is None:
            self._raw_conn = self.engine.raw_connection()
        conn = self._raw_conn
        try:
            cur = conn.cursor()
            if opens:
                cur.executemany(
                    self._insert_sql,
                    [
                        _row_tuple(o, merged.get(o.id), self._default_row, held.get(o.id))
                        for o in opens.values()
                    ],
                )
            if hold_updates:
                cur.executemany(_UPDATE_HOLD_SQL, hold_updates)
            if updates:
                cur.executemany(_UPDATE_SQL, [_update_tuple(c) for c in updates])
            conn.commit()
        except Exception:
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()
            self._raw_conn = None
            raise
        return list(opens), [c.id for c in closes]

    def _remember(self, opened: list[str], closed: list[str]) -> None:
        # Called only after a commit, so the set never vouches for an uncommitted row.
        known = self._known_open
        if len(known) > _KNOWN_OPEN_CAP:
            known.clear()
        known.update(opened)
        known.difference_update(closed)


def _json(decision: str | Mapping[str, Any] | None) -> str | None:
    if decision is None or isinstance(decision, str):
        return decision
    return orjson.dumps(decision, default=str).decode()


def _open_params(rec: RequestOpen) -> dict[str, Any]:
    params = {name: getattr(rec, name) for name in _OPEN_FIELDS}
    params["decision"] = _json(rec.decision)
    params["stream"] = bool(rec.stream)
    params["status"] = "open"
    return params


_HOLD_INDEX = REQUEST_COLUMNS.index("reserved_usd")
_OPEN_SET = frozenset(_OPEN_FIELDS)
_CLOSE_SET = frozenset(_CLOSE_FIELDS) - {"id"}
_KEEP_SET = frozenset(_CLOSE_KEEP_IF_NONE)
_UPDATE_COLS = [c for c in _CLOSE_FIELDS if c != "id"]
_UPDATE_SQL = (
    "UPDATE requests SET "
    + ", ".join(f"{c} = COALESCE(?, {c})" if c in _KEEP_SET else f"{c} = ?" for c in _UPDATE_COLS)
    + " WHERE id = ?"
)


# _row_tuple's plan, fixed at import: which record supplies each column (the
# writer builds a row per request on a thread that shares the GIL with the
# event loop, so a per-column loop of set lookups and getattr shows up there)
_COL_INDEX = {c: i for i, c in enumerate(REQUEST_COLUMNS)}
_OPEN_COLS = [c for c in REQUEST_COLUMNS if c in _OPEN_SET]
_OPEN_IDX = [_COL_INDEX[c] for c in _OPEN_COLS]
_OPEN_GET = operator.attrgetter(*_OPEN_COLS)
_CLOSE_COLS = [c for c in REQUEST_COLUMNS if c in _CLOSE_SET]
_CLOSE_PLAN = [(_COL_INDEX[c], c in _KEEP_SET) for c in _CLOSE_COLS]
_CLOSE_GET = operator.attrgetter(*_CLOSE_COLS)
_STATUS_I, _DECISION_I, _STREAM_I = (_COL_INDEX[c] for c in ("status", "decision", "stream"))


def _row_tuple(
    o: RequestOpen, c: RequestClose | None, defaults: list[Any], hold: float | None
) -> tuple[Any, ...]:
    """One INSERT row: the open's fields, overlaid by its hold and close if they came
    in the same batch (None keeps the open's value for the keep-if-None columns).
    ``defaults`` holds every column's default, in REQUEST_COLUMNS order."""
    out = defaults.copy()
    for i, v in zip(_OPEN_IDX, _OPEN_GET(o), strict=True):
        out[i] = v
    if c is None:
        out[_STATUS_I] = "open"
    else:
        for (i, keep), v in zip(_CLOSE_PLAN, _CLOSE_GET(c), strict=True):
            if v is not None or not keep:
                out[i] = v
    out[_DECISION_I] = _json(out[_DECISION_I])
    out[_STREAM_I] = bool(out[_STREAM_I])
    out[_HOLD_INDEX] = hold
    return tuple(out)


def _update_tuple(c: RequestClose) -> tuple[Any, ...]:
    return (
        *[_json(c.decision) if col == "decision" else getattr(c, col) for col in _UPDATE_COLS],
        c.id,
    )


def _close_params(rec: RequestClose) -> dict[str, Any]:
    params = {f"b_{name}": getattr(rec, name) for name in _CLOSE_FIELDS}
    params["b_decision"] = _json(rec.decision)
    return params


def _stub_params(close: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": close["b_id"],
        "started_at": close["b_ended_at"],
        "client": "",
        "client_format": "unknown",
        "requested_model": close["b_served_model"] or "",
        "stream": False,
        "status": "open",
    }


__all__ = ["DEFAULT_OWNER", "REQUEST_COLUMNS", "Ledger"]
