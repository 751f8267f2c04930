"""Crash durability (issue #7 item 2): ``kill -9`` the daemon mid-stream, restart
it on the same data directory, and check the ledger.

The daemon runs as a real subprocess (``switchman daemon``) with its simulated
providers slowed (time_scale 0.2, long replies) so streams are in flight when it
dies. Each round fires staggered concurrent streams, kills the process, restarts
it and checks:

- no request id has more than one row, and no row is left ``open``;
- every request sent more than the batch window (WINDOW_S) before the kill has
  a row;
- rows of streams cut by the kill are ``interrupted`` (recovered at start);
- every stream the client saw finish (message_stop / [DONE]) has an ``ok`` row
  with tokens, except ones that finished inside the ledger's batch window
  (~50 ms, module docs of ledger/store.py) right before the kill; those are
  counted and reported, and must be few;
- budgets reflect reserved spend: every row of a request that reached the
  provider carries the estimate reserved for it, and the restarted daemon's
  budget counts the interrupted ones at that estimate (they may have been billed)
  on top of the real cost of the finished ones (PostgreSQL: see below);
- the store is sound at the end: ``PRAGMA integrity_check`` on SQLite; on
  PostgreSQL (no such check without superuser extensions) the constraints the
  ledger relies on are in place and hold: ``requests.id`` is the primary key and
  unique, required columns are never NULL, every status is a known one and every
  closed row has ``ended_at``, all rows belong to this daemon's instance id, and
  no budget hold is left (the restarts turned them into spend);
- no configured provider key appears in anything the killed daemons left: their
  stdout, stderr and log files (text on stderr for some runs, a log file for the
  others) and the data directory.

Both ledger backends (issue #7): the SQLite file in the data dir, and a private
PostgreSQL schema (``[ledger] url``, tests/support/backends.py) when
``SWITCHMAN_TEST_PG_URL`` is set. On PostgreSQL the budget lives in the database
(``budget_counters`` and ``budget_holds``, shared mode in daemon/budgets.py), not
re-read from the ledger, so the budget check there compares two independent
records of the same spend: they must agree except for requests in the ledger's
last batch window, and each such difference must be explained, to $0.00001, by
what that request was doing at the kill (``_unsynced``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa

from switchman_daemon.budgets import Budgets
from switchman_daemon.ledger import Ledger
from switchman_daemon.ledger.schema import requests
from switchman_daemon.store_tables import budget_holds
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import providers_pb2
from tests.support.backends import pg_schema

ROUNDS = 3
REQUESTS_PER_ROUND = 36
STAGGER_S = 0.04  # between request starts
KILL_AFTER_S = 1.3  # from the first request
# Completed streams missing from the ledger are tolerated only this close to the
# kill: the batch window (50 ms) plus the commit and scheduling slack.
WINDOW_S = 0.25
# PostgreSQL: this round's gap between budget and ledger must be explained by at
# most this many requests of the ledger's last batch window (see _unsynced), each
# amount to within TOL_USD.
MAX_UNSYNCED = 4
TOL_USD = 1e-5
LONG_REPLY = "[[sim:reply " + " ".join(f"word{i}" for i in range(100)) + "]]"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class Sent:
    sent_at: float = 0.0
    rid: str | None = None
    done_at: float | None = None  # client saw the terminal event


@dataclass
class Setup:
    """What every daemon run shares: data dir, config with provider keys taken from
    the environment, and a folder for each run's stdout, stderr and log file."""

    data: Path
    out: Path
    config: Path
    keys: dict[str, str]  # env var -> provider key
    db_url: str  # the ledger (and budgets) of every run
    runs: int = 0


def _setup(tmp_path: Path, pg_url: str | None) -> Setup:
    tag = secrets.token_hex(6)
    keys = {
        "SWITCHMAN_CRASH_ANTHROPIC_KEY": f"sk-ant-api03-CRASH{tag}-abcdefghijklmnop",
        "SWITCHMAN_CRASH_OPENAI_KEY": f"sk-proj-CRASH{tag}-qrstuvwxyz0123456",
    }
    config = tmp_path / "config.toml"
    config.write_text(
        '[providers.sim-anthropic]\nkind = "anthropic"\nbase_url = "sim"\n'
        'key = "env:SWITCHMAN_CRASH_ANTHROPIC_KEY"\n\n'
        '[providers.sim-openai]\nkind = "openai"\nbase_url = "sim"\n'
        'key = "env:SWITCHMAN_CRASH_OPENAI_KEY"\n'
        # PostgreSQL: the daemon picks its ledger by URL (README, Scale-out)
        + (f"\n[ledger]\nurl = {json.dumps(pg_url)}\n" if pg_url else "")
    )
    data = tmp_path / "data"
    db_url = pg_url or f"sqlite:///{data / 'ledger.db'}"
    st = Setup(data, tmp_path / "out", config, keys, db_url)
    st.out.mkdir()
    return st


class DaemonProcess:
    def __init__(self, st: Setup) -> None:
        self.port = _free_port()
        n = st.runs = st.runs + 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **st.keys}
        env.pop("SWITCHMAN_LOG_FILE", None)
        argv = [
            sys.executable,
            "-m",
            "switchman_daemon.cli",
            "daemon",
            "--port",
            str(self.port),
            "--data-dir",
            str(st.data),
            "--config",
            str(st.config),
            "--sim-time-scale",
            "0.2",
            "--log-level",
            "info",
        ]
        if n % 2 == 0:  # every other run logs to a (rotating) file instead of stderr
            argv += ["--log-file", str(st.out / f"daemon-{n}.log")]
        with (
            open(st.out / f"daemon-{n}.out", "wb") as out,
            open(st.out / f"daemon-{n}.err", "wb") as err,
        ):
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        self.stderr = st.out / f"daemon-{n}.err"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.stderr.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise TimeoutError("daemon did not become ready")

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def _one(session: aiohttp.ClientSession, url: str, i: int, sent: Sent) -> None:
    if i % 2:
        path, body = "/v1/messages", {"model": "sim-claude-mid", "max_tokens": 1024, "stream": True}
        terminal = b"event: message_stop"
    else:
        path, body = "/v1/chat/completions", {"model": "sim-gpt-mid", "stream": True}
        terminal = b"data: [DONE]"
    body["messages"] = [{"role": "user", "content": f"crash round req {i} {LONG_REPLY}"}]
    sent.sent_at = time.monotonic()
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
        async with session.post(url + path, json=body) as r:
            sent.rid = r.headers.get("x-request-id")
            async for line in r.content:
                if line.startswith(terminal):
                    sent.done_at = time.monotonic()


async def _round(session: aiohttp.ClientSession, d: DaemonProcess) -> tuple[list[Sent], float]:
    sent = [Sent() for _ in range(REQUESTS_PER_ROUND)]
    t0 = time.monotonic()

    async def staggered(i: int) -> None:
        await asyncio.sleep(i * STAGGER_S)
        await _one(session, d.url, i, sent[i])

    tasks = [asyncio.create_task(staggered(i)) for i in range(REQUESTS_PER_ROUND)]
    await asyncio.sleep(KILL_AFTER_S - (time.monotonic() - t0))
    killed_at = time.monotonic()
    d.kill9()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    return sent, killed_at


@contextlib.contextmanager
def _store(url: str) -> Iterator[sa.Engine]:
    """The ledger's database, read from outside the daemon (no pooled connections
    kept between reads, so nothing of ours outlives a check)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def _rows(url: str) -> dict[str, dict]:
    c = requests.c
    with _store(url) as engine, engine.connect() as conn:
        dup = conn.execute(
            sa.select(c.id, sa.func.count()).group_by(c.id).having(sa.func.count() > 1)
        )
        assert dup.all() == [], "duplicated ledger rows"
        return {r["id"]: dict(r) for r in conn.execute(sa.select(requests)).mappings()}


REQUIRED = tuple(col.name for col in requests.columns if not col.nullable)
STATUSES = ("ok", "error", "cancelled", "interrupted")  # ledger/records.py, "open" aside


def _check_store(url: str, owner: str) -> None:
    """The ledger's database is sound after the last run (see module docs)."""
    c = requests.c
    with _store(url) as engine, engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(c.status == "open")).scalar() == 0
        if engine.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            return
        # PostgreSQL: what the ledger's correctness rests on, checked in the database
        pk = sa.inspect(conn).get_pk_constraint("requests")
        assert pk["constrained_columns"] == ["id"], pk
        total, ids = conn.execute(sa.select(sa.func.count(), sa.func.count(c.id.distinct()))).one()
        assert total == ids > 0
        for name in REQUIRED:
            nulls = conn.execute(sa.select(sa.func.count()).where(c[name].is_(None))).scalar()
            assert nulls == 0, f"requests.{name} has {nulls} NULLs"
        bad = conn.execute(
            sa.select(c.id, c.status).where(c.status.not_in(STATUSES)).limit(5)
        ).all()
        assert bad == [], f"unknown ledger statuses {bad}"
        unended = conn.execute(sa.select(sa.func.count()).where(c.ended_at.is_(None))).scalar()
        assert unended == 0, "closed ledger rows without ended_at"
        owners = set(conn.execute(sa.select(c.owner).distinct()).scalars())
        assert owners == {owner}, owners
        held = conn.execute(sa.select(sa.func.count()).select_from(budget_holds)).scalar()
        assert held == 0, "budget holds left after a restart (they should be spend)"


def _charge(row: dict) -> float:
    """What a budget must count for a ledger row: its real cost, or for a request
    cut by the crash at least the estimate reserved before it went upstream."""
    if row["status"] == "interrupted":
        return max(row["cost_usd"], row["reserved_usd"] or 0.0)
    return row["cost_usd"]


def _model(i: int) -> str:
    return "sim-claude-mid" if i % 2 else "sim-gpt-mid"  # as _one sends it


def _unsynced(
    new: dict[str, dict], rows: dict[str, dict], sent: list[Sent], killed_at: float
) -> list[tuple[str, float]]:
    """PostgreSQL: how the budget (kept in the database, apart from the ledger) may
    legitimately differ from the ledger's charge for this round's requests. The
    budget's transactions commit at once, the ledger's records ~50 ms later, so at
    the kill a request in the ledger's last batch may be (the amount: budget minus
    ledger, in dollars):

    - reserved, its row or its hold not written yet: the restart turns its hold
      into spend, +estimate;
    - finished and settled, its close not written yet: the ledger has it
      interrupted at its estimate, the budget at its real cost, cost - estimate;
    - closed in the ledger, its settle still queued: the hold became spend,
      estimate - cost.

    Real costs and estimates are the same model's in other rows (the simulator is
    deterministic; prompts differ by a few characters, well under TOL_USD)."""
    cost = {r["requested_model"]: r["cost_usd"] for r in rows.values() if r["status"] == "ok"}
    est = {r["requested_model"]: r["reserved_usd"] for r in rows.values() if r["reserved_usd"]}
    by_rid = {s.rid: s for s in sent if s.rid is not None}
    opts: list[tuple[str, float]] = []
    for rid, r in new.items():
        m, s = r["requested_model"], by_rid.get(rid)
        held = r["reserved_usd"]
        if held is None:
            opts.append((f"{rid[:8]} hold not journaled", est[m] - r["cost_usd"]))
        elif r["status"] == "interrupted":
            opts.append((f"{rid[:8]} settled, close lost", cost[m] - held))
        elif s is not None and (s.done_at is None or killed_at - s.done_at < WINDOW_S):
            opts.append((f"{rid[:8]} closed, settle queued", held - r["cost_usd"]))
    seen = {r["id"] for r in new.values()}
    for i, s in enumerate(sent):
        if s.rid not in seen and killed_at - s.sent_at < WINDOW_S:
            opts.append((f"req {i} reserved without a row", est[_model(i)]))
    return opts


def _explain(diff: float, opts: list[tuple[str, float]]) -> list[str] | None:
    """The fewest requests (at most MAX_UNSYNCED) whose amounts add up to ``diff``."""
    for k in range(MAX_UNSYNCED + 1):
        for pick in itertools.combinations(opts, k):
            if abs(sum(a for _, a in pick) - diff) <= TOL_USD * (k + 1):
                return [f"{why} ({a:+.5f})" for why, a in pick]
    return None


def _check_budget(
    data: Path,
    budget_id: str,
    rows: dict[str, dict],
    new: dict[str, dict],
    sent: list[Sent],
    killed_at: float,
    drift: float | None,
) -> tuple[float, float | None, list[str]]:
    """The restarted daemon's budget counts every request the crash cut at its
    reserved estimate. Returns the reserved spend of all interrupted rows so far,
    the budget's drift from the ledger so far and what explains this round's.

    SQLite: budgets are loaded from the ledger, so they match it exactly.
    PostgreSQL: the budget is its own record (budget_counters, holds absorbed on
    restart); it must match the ledger but for the requests in the ledger's last
    batch window, each by an amount it explains (``_unsynced``)."""
    by_rid = {s.rid: s for s in sent if s.rid is not None}
    for rid, r in rows.items():
        s = by_rid.get(rid)
        if s is not None and r["reserved_usd"] is None:
            # only a hold queued in the ledger's last batch window may be missing
            assert killed_at - s.sent_at < WINDOW_S, f"request {rid} has no reserved estimate"
    with AdminClient.connect(data) as client:
        [st] = [x for x in client.budget_status() if x.budget.id == budget_id]
    assert st.reserved_usd == 0  # nothing in flight right after the restart
    charged = sum(_charge(r) for r in rows.values())
    why: list[str] = []
    if drift is None:  # SQLite
        assert st.spent_usd == pytest.approx(charged, rel=1e-9)
    else:
        diff = st.spent_usd - charged
        found = _explain(diff - drift, _unsynced(new, rows, sent, killed_at))
        assert found is not None, (
            f"budget ${st.spent_usd:.6f} vs ledger ${charged:.6f}: "
            f"{diff - drift:+.6f} this round, not explained by requests in the batch window"
        )
        why, drift = found, diff
    cut = [r for r in rows.values() if r["status"] == "interrupted" and r["reserved_usd"]]
    assert st.spent_usd > sum(r["cost_usd"] for r in rows.values())
    return sum(r["reserved_usd"] for r in cut), drift, why


def _scan_for_keys(st: Setup) -> None:
    """No provider key in any run's output, log file or the data directory."""
    blobs = {
        str(p): p.read_bytes()
        for d in (st.out, st.data)
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }
    logs = b"".join(b for name, b in blobs.items() if name.startswith(str(st.out)))
    # not a vacuous scan: the runs did log, on stderr and in log files, and the
    # restarts reported what they recovered
    assert any(n.endswith(".log") and b for n, b in blobs.items())
    assert any(n.endswith(".err") and b"->" in b for n, b in blobs.items())
    assert b"interrupted" in logs
    for key in st.keys.values():
        for part in (key, key[6:-6]):  # also a truncated or re-wrapped copy
            found = [name for name, b in blobs.items() if part.encode() in b]
            assert not found, f"a provider key is in {found}"


async def test_kill9_mid_stream_keeps_the_ledger_consistent(backend: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        # the private PostgreSQL schema outlives every daemon run (terminated below)
        pg_url = stack.enter_context(pg_schema()) if backend == "postgresql" else None
        await _kill9_rounds(_setup(tmp_path, pg_url))


async def _kill9_rounds(st: Setup) -> None:
    data = st.data
    led = Ledger(st.db_url)  # a budget that covers everything, never binding
    budget = Budgets(led.engine).set("global", "total", hard_usd=1e6).id
    led.stop()
    report: list[str] = []
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        d = DaemonProcess(st)
        try:
            await d.wait_ready(session)
            with AdminClient.connect(data) as client:  # the configured keys are in use
                providers = {p.name: p for p in client.list_providers()}
            for name, var in (
                ("sim-anthropic", "SWITCHMAN_CRASH_ANTHROPIC_KEY"),
                ("sim-openai", "SWITCHMAN_CRASH_OPENAI_KEY"),
            ):
                k = providers[name].key
                assert k.source == providers_pb2.KEY_SOURCE_ENV
                assert k.fingerprint == hashlib.sha256(st.keys[var].encode()).hexdigest()[:12]
            rows: dict[str, dict] = {}
            drift: float | None = None if st.db_url.startswith("sqlite") else 0.0
            for n in range(ROUNDS):
                sent, killed_at = await _round(session, d)
                d = DaemonProcess(st)  # restart: recover_interrupted runs before binding
                await d.wait_ready(session)
                before, rows = rows, _rows(st.db_url)
                new = {k: r for k, r in rows.items() if k not in before}
                # every request that reached the daemon long enough before the kill has
                # a row (those still without response headers have no id to match)
                early = [s for s in sent if killed_at - s.sent_at >= WINDOW_S]
                assert len(new) >= len(early), f"round {n}: {len(new)} rows, {len(early)} sent"
                assert all(s.rid in new for s in early if s.rid is not None)
                done = [s for s in sent if s.done_at is not None]
                cut = [s for s in sent if s.rid is not None and s.done_at is None]
                assert done and cut, (
                    f"round {n}: the kill should land mid-load ({len(done)} done, {len(cut)} cut)"
                )
                assert not [r for r in rows.values() if r["status"] == "open"]
                lost = [s for s in done if s.rid not in rows or rows[s.rid]["status"] != "ok"]
                for s in done:
                    if s in lost:
                        assert killed_at - s.done_at < WINDOW_S, (
                            f"a stream finished {killed_at - s.done_at:.3f} s before the "
                            "kill has no ok row"
                        )
                        continue
                    r = rows[s.rid]
                    assert (
                        r["output_tokens"] > 0
                        and r["input_tokens"] + r["cache_read_tokens"] > 0
                        and r["ended_at"] is not None
                    )
                cut_rows = [rows[s.rid] for s in cut if s.rid in rows]
                # a stream that finished in the daemon a moment before the client saw it
                # may be ok; anything else open at the kill is now interrupted
                assert all(r["status"] in ("interrupted", "ok") for r in cut_rows)
                interrupted = sum(r["status"] == "interrupted" for r in cut_rows)
                assert interrupted > 0
                held, drift, why = _check_budget(data, budget, rows, new, sent, killed_at, drift)
                report.append(
                    f"round {n}: {len(done)} done ({len(lost)} lost in window), "
                    f"{len(cut)} cut ({interrupted} interrupted, "
                    f"{len(cut) - len(cut_rows)} without a row); "
                    f"budget counts ${held:.4f} reserved by interrupted requests "
                    "so far" + (f"; budget vs ledger in the batch window: {why}" if why else "")
                )
        finally:
            d.terminate()
    _check_store(st.db_url, (data / "instance-id").read_text().strip())
    _scan_for_keys(st)
    print("\n" + "\n".join(report))
