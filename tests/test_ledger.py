"""The ledger on both backends (a real SQLite file, and a private schema on the
real PostgreSQL server when SWITCHMAN_TEST_PG_URL is set; see tests/support/
backends.py): batching, recovery, migrations, export, totals. WAL and pragmas are
SQLite's own."""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from switchman_daemon.ledger import Ledger, RequestClose, RequestOpen
from switchman_daemon.ledger import schema as ledger_schema
from switchman_daemon.ledger.export import EXPORT_COLUMNS, export, parse_since
from switchman_daemon.ledger.schema import SCHEMA_VERSION, SchemaVersionError, meta, requests
from switchman_daemon.ledger.store import _UPDATE_CLOSE


@pytest.fixture
def ledger(db_url: str) -> Iterator[Ledger]:
    led = Ledger(db_url)
    led.start()
    yield led
    led.stop()


def _sqlite_file(url: str) -> Path | None:
    parsed = sa.make_url(url)
    return Path(parsed.database or "") if parsed.get_backend_name() == "sqlite" else None


def _open(i: str, t: float, **kw) -> RequestOpen:
    base = dict(id=i, started_at=t, client_format="anthropic", requested_model="claude-x")
    base.update(kw)
    return RequestOpen(**base)


def test_round_trip_all_fields(ledger: Ledger, db_url: str) -> None:
    path = _sqlite_file(db_url)
    assert path is None or path.exists()  # parent folders were created
    rid = str(uuid.uuid4())
    ledger.open(
        RequestOpen(
            id=rid,
            started_at=1_700_000_000.25,
            client="claude-cli/1.0",
            client_format="responses",
            session_id="s1",
            agent_id="a1",
            request_role="subagent",
            team_key_id="tk1",
            requested_model="gpt-5",
            served_model="planned-model",
            provider="planned-provider",
            upstream_format="chat",
            stream=True,
            decision={"reasons": ["warm cache", "cheaper"], "score": 0.5},
        )
    )
    ledger.flush()
    (row,) = ledger.rows()
    assert row["status"] == "open" and row["ended_at"] is None
    assert row["served_model"] == "planned-model"

    ledger.close(
        RequestClose(
            id=rid,
            ended_at=1_700_000_003.5,
            status="error",
            http_status=529,
            served_model="fallback-model",
            provider=None,  # None keeps the provider recorded at open
            upstream_format=None,
            input_tokens=11,
            cache_read_tokens=22,
            cache_write_tokens=33,
            cache_write_1h_tokens=44,
            output_tokens=55,
            cost_usd=0.0123,
            baseline_cost_usd=0.05,
            ttfb_ms=120.5,
            latency_ms=3000.25,
            attempts=3,
            error="upstream overloaded",
        )
    )
    ledger.flush()
    (row,) = ledger.rows()
    assert row == {
        "id": rid,
        "started_at": 1_700_000_000.25,
        "ended_at": 1_700_000_003.5,
        "client": "claude-cli/1.0",
        "client_format": "responses",
        "session_id": "s1",
        "agent_id": "a1",
        "request_role": "subagent",
        "team_key_id": "tk1",
        "requested_model": "gpt-5",
        "served_model": "fallback-model",
        "provider": "planned-provider",
        "upstream_format": "chat",
        "stream": True,
        "status": "error",
        "http_status": 529,
        "input_tokens": 11,
        "cache_read_tokens": 22,
        "cache_write_tokens": 33,
        "cache_write_1h_tokens": 44,
        "output_tokens": 55,
        "cost_usd": 0.0123,
        "baseline_cost_usd": 0.05,
        "ttfb_ms": 120.5,
        "latency_ms": 3000.25,
        "attempts": 3,
        "error": "upstream overloaded",
        "decision": row["decision"],
        "owner": "local",  # Ledger's default daemon-instance id
        "reserved_usd": None,  # no budget reserved anything for it
    }
    assert json.loads(row["decision"]) == {"reasons": ["warm cache", "cheaper"], "score": 0.5}


def test_open_and_close_in_one_batch(db_url: str) -> None:
    led = Ledger(db_url)
    # Enqueued before the writer starts, so both land in the same batch.
    led.open(_open("a", 1.0, decision='{"raw": true}'))
    led.close(RequestClose(id="a", ended_at=2.0, output_tokens=7))
    led.start()
    led.flush()
    (row,) = led.rows()
    assert (row["status"], row["output_tokens"], row["decision"]) == ("ok", 7, '{"raw": true}')
    led.stop()


def test_many_threads_batched(db_url: str) -> None:
    led = Ledger(db_url, max_batch=200)
    led.start()
    threads_n, per_thread = 8, 400
    barrier = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            rid = f"{t}-{i}"
            led.open(_open(rid, 1000.0 + t * per_thread + i, session_id=f"s{t}"))
            if i % 4 != 3:  # every 4th request stays open
                led.close(
                    RequestClose(
                        id=rid, ended_at=5000.0, input_tokens=i, output_tokens=1, cost_usd=0.5
                    )
                )

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    led.flush(timeout=30)

    closed_per_thread = [i for i in range(per_thread) if i % 4 != 3]
    tot = led.totals()
    assert tot["requests"] == threads_n * per_thread
    assert tot["output_tokens"] == threads_n * len(closed_per_thread)
    assert tot["input_tokens"] == threads_n * sum(closed_per_thread)
    assert tot["cost_usd"] == pytest.approx(0.5 * threads_n * len(closed_per_thread))
    statuses = [r["status"] for r in led.rows()]
    assert statuses.count("open") == threads_n * per_thread // 4
    assert led.write_errors == 0
    led.stop()


def test_hold_records_the_reserved_estimate(db_url: str) -> None:
    led = Ledger(db_url)
    # open + hold in one batch (the proxy's usual case): merged into the INSERT
    led.open(_open("same", 1.0))
    led.hold("same", 0.25)
    led.start()
    led.flush()
    # a hold for a row committed earlier: an UPDATE
    led.open(_open("later", 2.0))
    led.flush()
    led.hold("later", 0.5)
    led.close(RequestClose(id="later", ended_at=3.0, cost_usd=0.125))
    led.hold("ghost", 9.0)  # no such row (its open was lost): harmless
    led.flush()
    # a row another process opened (this one never saw it): the careful path
    other = Ledger(db_url)
    other.start()
    other.hold("same", 0.75)
    other.flush()
    other.stop()
    rows = {r["id"]: r for r in led.rows()}
    assert set(rows) == {"same", "later"} and led.write_errors == 0
    assert rows["same"]["reserved_usd"] == 0.75 and rows["same"]["status"] == "open"
    assert (rows["later"]["reserved_usd"], rows["later"]["cost_usd"]) == (0.5, 0.125)
    assert rows["later"]["status"] == "ok"
    led.stop()


_CRASHER = """
import os, sys
from switchman_daemon.ledger import Ledger, RequestOpen, RequestClose
led = Ledger(sys.argv[1])
led.start()
for i in range(5):
    led.open(RequestOpen(id=f"r{i}", started_at=100.0 + i, client_format="chat",
                         requested_model="m"))
led.close(RequestClose(id="r0", ended_at=200.0))
led.flush()
os._exit(3)  # a crash: no stop(), no cleanup
"""


def test_recover_interrupted_after_crash(db_url: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASHER, db_url], timeout=60)
    assert proc.returncode == 3

    led = Ledger(db_url)
    led.start()
    led.open(_open("mine", time.time() + 1))  # this process's live request
    led.flush()
    before = time.time()
    assert led.recover_interrupted() == 4
    rows = {r["id"]: r for r in led.rows()}
    assert rows["r0"]["status"] == "ok"
    for i in range(1, 5):
        assert rows[f"r{i}"]["status"] == "interrupted"
        assert rows[f"r{i}"]["ended_at"] >= before
    assert rows["mine"]["status"] == "open"
    assert led.recover_interrupted() == 0
    led.stop()


def test_abandoned_ledger_in_process(db_url: str) -> None:
    first = Ledger(db_url)
    first.start()
    first.open(_open("x", 10.0))
    first.flush()
    # `first` is abandoned without stop(); a new Ledger takes over the database.
    second = Ledger(db_url)
    assert second.recover_interrupted() == 1
    assert second.rows()[0]["status"] == "interrupted"
    second.stop()
    first.engine.dispose()


def test_wal_mode_and_pragmas(tmp_path: Path) -> None:
    db_path = tmp_path / "ledger.db"
    ledger = Ledger(f"sqlite:///{db_path}")
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    ledger.stop()


def test_schema_version_recorded_and_checked(db_url: str) -> None:
    led = Ledger(db_url)
    with led.engine.begin() as conn:
        assert conn.execute(sa.select(meta.c.value)).scalar_one() == str(SCHEMA_VERSION)
        conn.execute(sa.update(meta).values(value=str(SCHEMA_VERSION + 1)))
    led.stop()
    with pytest.raises(SchemaVersionError, match="newer"):
        Ledger(db_url)


def _old_database(url: str, version: int) -> None:
    """What an older release left: the columns of that schema version, one open row."""
    later = {1: ("owner", "reserved_usd"), 2: ("reserved_usd",)}[version]
    md = sa.MetaData()
    sa.Table("requests", md, *(c._copy() for c in requests.columns if c.name not in later))
    sa.Table("meta", md, *(c._copy() for c in meta.columns))
    eng = ledger_schema.make_engine(url)
    md.create_all(eng)
    with eng.begin() as conn:
        conn.execute(sa.insert(md.tables["meta"]).values(key="schema_version", value=str(version)))
        conn.execute(
            sa.insert(md.tables["requests"]).values(
                id="old",
                started_at=1.0,
                client_format="anthropic",
                requested_model="m",
                status="open",
            )
        )
    eng.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_migrates_older_schemas(db_url: str, version: int) -> None:
    _old_database(db_url, version)
    led = Ledger(db_url, owner="me")  # opening migrates
    with led.engine.connect() as conn:
        assert conn.execute(sa.select(meta.c.value)).scalar_one() == str(SCHEMA_VERSION)
    insp = sa.inspect(led.engine)
    assert {"owner", "reserved_usd"} <= {c["name"] for c in insp.get_columns("requests")}
    assert "ix_requests_owner" in {i["name"] for i in insp.get_indexes("requests")}
    # a pre-v2 row has no owner: the (single) daemon that upgraded recovers it
    assert led.recover_interrupted() == 1
    led.start()
    led.open(_open("new", time.time()))
    led.hold("new", 0.5)
    led.flush()
    rows = {r["id"]: r for r in led.rows()}
    assert {k: (r["owner"], r["reserved_usd"]) for k, r in rows.items()} == {
        "old": (None, None),  # written before v2 / v3: no owner, no estimate
        "new": ("me", 0.5),
    }
    led.stop()
    Ledger(db_url).stop()  # a second open finds the current version: no migration


def _seed(led: Ledger) -> None:
    day = 86400.0
    base = 1_790_000_000.0
    specs = [
        ("old", base - 3 * day, 100, 0, 0, 0, 10, 0.10, 0.20, "ok"),
        ("mid", base - 1 * day, 50, 400, 30, 20, 20, 0.05, 0.30, "ok"),
        ("new", base, 25, 500, 0, 5, 5, 0.02, None, "error"),
    ]
    for rid, t, inp, cr, cw, cw1, out, cost, base_cost, status in specs:
        led.open(_open(rid, t, stream=rid == "mid", decision={"pick": rid}))
        led.close(
            RequestClose(
                id=rid,
                ended_at=t + 2.5,
                status=status,
                input_tokens=inp,
                cache_read_tokens=cr,
                cache_write_tokens=cw,
                cache_write_1h_tokens=cw1,
                output_tokens=out,
                cost_usd=cost,
                baseline_cost_usd=base_cost,
                error='bad, "quoted"\nmessage' if status == "error" else None,
            )
        )
    led.flush()


def test_totals(ledger: Ledger) -> None:
    _seed(ledger)
    tot = ledger.totals()
    assert tot["requests"] == 3 and tot["errors"] == 1
    assert tot["cost_usd"] == pytest.approx(0.17)
    assert tot["baseline_cost_usd"] == pytest.approx(0.50)
    assert (tot["input_tokens"], tot["cache_read_tokens"], tot["output_tokens"]) == (175, 900, 35)
    assert (tot["cache_write_tokens"], tot["cache_write_1h_tokens"]) == (30, 25)
    assert tot["prompt_tokens"] == 175 + 900 + 30 + 25
    assert tot["cache_hit_rate"] == pytest.approx(900 / 1130)

    recent = ledger.totals(since=1_790_000_000.0 - 86400.0)
    assert recent["requests"] == 2
    assert recent["cache_hit_rate"] == pytest.approx(900 / (75 + 900 + 30 + 25))

    empty = ledger.totals(since=2e9)
    assert empty["requests"] == 0 and empty["cache_hit_rate"] == 0.0 and empty["cost_usd"] == 0.0


def test_rows_since_limit_order(ledger: Ledger) -> None:
    _seed(ledger)
    assert [r["id"] for r in ledger.rows()] == ["old", "mid", "new"]
    assert [r["id"] for r in ledger.rows(limit=2)] == ["old", "mid"]
    assert [r["id"] for r in ledger.rows(limit=2, newest_first=True)] == ["new", "mid"]
    assert [r["id"] for r in ledger.rows(since=1_790_000_000.0 - 86400.0)] == ["mid", "new"]


def test_export_csv_round_trip(ledger: Ledger, db_url: str) -> None:
    _seed(ledger)
    buf = io.StringIO()
    assert export(ledger, "csv", buf) == 3
    reader = csv.DictReader(io.StringIO(buf.getvalue()))
    assert tuple(reader.fieldnames or ()) == EXPORT_COLUMNS
    got = list(reader)
    want = ledger.rows()
    assert [g["id"] for g in got] == [w["id"] for w in want]
    for g, w in zip(got, want, strict=True):
        assert float(g["started_at"]) == w["started_at"]
        assert float(g["ended_at"]) == w["ended_at"]
        assert int(g["cache_read_tokens"]) == w["cache_read_tokens"]
        assert float(g["cost_usd"]) == w["cost_usd"]
        assert g["stream"] == ("true" if w["stream"] else "false")
        assert g["decision"] == w["decision"]
        assert (g["error"] or None) == w["error"]
        assert (g["baseline_cost_usd"] or None) == (
            None if w["baseline_cost_usd"] is None else str(w["baseline_cost_usd"])
        )
        assert parse_since(g["started_at_iso"]) == pytest.approx(w["started_at"], abs=1e-3)
        assert g["started_at_iso"].endswith("Z")

    # `since` filters, and a URL works as well as a Ledger.
    buf = io.StringIO()
    assert export(db_url, "csv", buf, since=1_790_000_000.0) == 1
    assert [r["id"] for r in csv.DictReader(io.StringIO(buf.getvalue()))] == ["new"]


def test_export_jsonl_round_trip(ledger: Ledger) -> None:
    _seed(ledger)
    buf = io.StringIO()
    assert export(ledger, "jsonl", buf) == 3
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    want = ledger.rows()
    for got, w in zip(lines, want, strict=True):
        assert tuple(got) == EXPORT_COLUMNS
        assert got["decision"] == json.loads(w["decision"])
        rest = {k: v for k, v in got.items() if not k.endswith("_iso") and k != "decision"}
        assert rest == {k: v for k, v in w.items() if k != "decision"}
    # 1_790_000_000 is 2026-09-21 14:13:20 UTC; "new" ended 2.5 s later.
    assert lines[2]["ended_at_iso"] == "2026-09-21T14:13:22.500Z"
    assert lines[2]["started_at_iso"] == "2026-09-21T14:13:20.000Z"

    buf = io.StringIO()
    assert export(ledger, "jsonl", buf, since=1_790_000_000.0 - 86400.0) == 2
    assert [json.loads(x)["id"] for x in buf.getvalue().splitlines()] == ["mid", "new"]
    with pytest.raises(ValueError):
        export(ledger, "xml", io.StringIO())  # type: ignore[arg-type]


def test_parse_since() -> None:
    assert parse_since("2026-11-01") == 1_793_491_200.0
    assert parse_since("2026-11-01T01:00:00Z") == 1_793_491_200.0 + 3600
    assert parse_since("2026-11-01T01:00:00") == 1_793_491_200.0 + 3600  # naive = UTC
    assert parse_since("2026-11-01T02:00:00+01:00") == 1_793_491_200.0 + 3600
    now = 1_800_000_000.0
    assert parse_since("24h", now=now) == now - 86400
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since(" 30m ", now=now) == now - 1800
    assert parse_since("1.5h", now=now) == now - 5400
    assert parse_since("1700000000") == 1_700_000_000.0
    assert abs(parse_since("1h") - (time.time() - 3600)) < 5
    for bad in ("", "yesterday", "24x", "2026-13-01", "nan"):
        with pytest.raises(ValueError):
            parse_since(bad)


def test_orphan_close_is_recorded(ledger: Ledger, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="switchman.ledger"):
        ledger.close(RequestClose(id="ghost", ended_at=50.0, served_model="m2", cost_usd=1.25))
        ledger.flush()
    (row,) = ledger.rows()
    assert (row["id"], row["status"], row["cost_usd"], row["served_model"]) == (
        "ghost",
        "ok",
        1.25,
        "m2",
    )
    assert "without an open" in caplog.text


def test_bad_record_does_not_sink_batch_or_thread(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    led = Ledger(db_url)
    led.open(_open("dup", 1.0))
    led.open(_open("dup", 2.0))  # duplicate primary key: this one must fail alone
    led.open(_open("fine", 3.0))
    led.close(RequestClose(id="fine", ended_at=4.0, output_tokens=9))
    led.open("not a record")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="switchman.ledger"):
        led.start()
        led.flush()
    assert led.write_errors == 2
    rows = {r["id"]: r for r in led.rows()}
    assert set(rows) == {"dup", "fine"}
    assert rows["dup"]["started_at"] == 1.0
    assert rows["fine"]["output_tokens"] == 9
    assert "ledger dropped" in caplog.text

    led.open(_open("later", 5.0))  # the writer thread is still alive
    led.flush()
    assert len(led.rows()) == 3
    led.stop()


def test_stop_writes_pending_and_drops_after(db_url: str) -> None:
    led = Ledger(db_url, batch_interval=10.0)  # only stop() can cut the window
    led.start()
    led.open(_open("p", 1.0))
    led.stop()
    led.open(_open("q", 2.0))  # after stop: dropped with a warning, never raises
    check = Ledger(db_url)
    assert [r["id"] for r in check.rows()] == ["p"]
    check.stop()

    never_started = Ledger(db_url)
    never_started.open(_open("r", 3.0))
    never_started.stop()  # writes what was queued even though start() was never called
    check = Ledger(db_url)
    assert [r["id"] for r in check.rows()] == ["p", "r"]
    check.stop()


def test_flush_requires_running_writer(db_url: str) -> None:
    led = Ledger(db_url)
    with pytest.raises(RuntimeError):
        led.flush()
    led.stop()


def test_sql_compiles_for_postgresql() -> None:
    dialect = postgresql.dialect()
    ddl = str(CreateTable(requests).compile(dialect=dialect))
    assert "DOUBLE PRECISION" in ddl and "BOOLEAN" in ddl and "BIGINT" in ddl
    for index in requests.indexes:
        str(CreateIndex(index).compile(dialect=dialect))
    assert "coalesce" in str(_UPDATE_CLOSE.compile(dialect=dialect)).lower()
