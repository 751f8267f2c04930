"""Converters from public agent data and the daemon's ledger to the trace schema.

None of these sources carries task outcomes, so their records have no
``difficulty``: the replay's quality for them is the quality predictor's
estimate, not ground truth (the report says so).

- ``tracelab``: TraceLab ``derived/round_trace.jsonl`` (one row per LLM call with
  exact input / prefix / appended / output tokens and timestamps).
- ``tracelab-csv``: TraceLab ``replay/examples/*.csv`` workload shapes (the authors
  present them as illustrative, not measured).
- ``aider``: ``.aider.chat.history.md``; ``> Tokens: N sent`` is each call's whole
  prompt; times are only per session (calls spaced 30 s apart, an assumption);
  a ``####`` user line starts a task.
- ``swe-agent``: ``.traj`` files; prompt sizes approximated from the message
  history text (~4 chars per token), calls spaced 20 s apart.
- ``ledger``: the daemon's SQLite ledger (``requests`` table).
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from switchman_daemon.evaluation.schema import TraceRecord


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def tracelab_rounds(path: Path) -> list[TraceRecord]:
    out: list[TraceRecord] = []
    t0: dict[str, float] = {}
    task: dict[str, str] = {}
    for line in path.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        sid = str(r["session_id"])
        ev = r.get("timing_events") or []
        t = _ts(ev[0]["timestamp"]) if ev else float(r["round_index"]) * 10.0
        t0.setdefault(sid, t)  # each session starts at 0 on the replay clock
        if any(e.get("event_type") == "user_message" for e in ev) or sid not in task:
            task[sid] = f"{sid}#{r['round_index']}"  # a user message starts a task
        out.append(TraceRecord(
            session_id=sid, t=t - t0[sid], prompt_tokens=int(r["input_tokens_total"]),
            task_id=task[sid], new_tokens=int(r.get("newly_append_tokens") or 0) or None,
            output_tokens=int(r.get("output_tokens") or 0), tools=bool(r.get("tools", True)),
            source="tracelab", extra={"model": r.get("model")}))
    return out


def tracelab_csv(path: Path) -> list[TraceRecord]:
    out: list[TraceRecord] = []
    clock: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            sid = f"csv-{row['session_id']}"
            if sid not in clock:
                clock[sid] = float(row.get("arrival_time") or 0) / 1000.0
            prefix, inp = int(row["prefix_len"]), int(row["input_len"])
            out.append(TraceRecord(sid, clock[sid], prefix + inp, task_id=f"{sid}/0",
                                   new_tokens=inp if prefix else None,
                                   output_tokens=int(row["output_len"]), source="tracelab-csv"))
            # generation (~60 tok/s) plus the tool wait before the next round
            clock[sid] += int(row["output_len"]) / 60.0 + \
                float(row.get("tool_wait_after_ms") or 0) / 1000.0
    return out


_TOKENS = re.compile(r"^> Tokens: ([\d,.]+k?) sent(?:, ([\d,.]+k?) cache write)?"
                     r"(?:, ([\d,.]+k?) cache hit)?(?:, ([\d,.]+k?) cached)?, ([\d,.]+k?) received")


def _num(s: str | None) -> int:
    if not s:
        return 0
    s = s.replace(",", "")
    return int(float(s[:-1]) * 1000) if s.endswith("k") else int(float(s))


def aider_history(path: Path, max_sessions: int | None = None) -> list[TraceRecord]:
    out: list[TraceRecord] = []
    sid, t, task, text, n_sess = "", 0.0, "", "", 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        if line.startswith("# aider chat started at "):
            if max_sessions is not None and n_sess >= max_sessions:
                break
            stamp = line[len("# aider chat started at "):].strip()
            t = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()
            sid, task, text = f"aider-{stamp}", "", ""
            n_sess += 1
        elif line.startswith("#### ") and sid:
            if not text:  # the first line of a run of #### lines starts the task
                task = f"{sid}/{len(out)}"
            text += line[5:] + "\n"
        elif line.startswith("> Tokens:") and sid:
            m = _TOKENS.match(line)
            if not m:
                continue
            sent = _num(m.group(1)) + _num(m.group(2)) + _num(m.group(3)) + _num(m.group(4))
            out.append(TraceRecord(sid, t, sent, task_id=task or f"{sid}/0",
                                   output_tokens=_num(m.group(5)), task_text=text.strip(),
                                   tools=False, source="aider"))
            t += 30.0  # no per-request time in the log
            text = ""
    return out


def swe_agent_traj(path: Path) -> list[TraceRecord]:
    d = json.loads(path.read_text("utf-8"))
    hist = d.get("history") or []
    sid = f"swe-{path.stem}"
    out: list[TraceRecord] = []
    size = 0
    task_text = ""
    t = 0.0
    for msg in hist:
        content = msg.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        if msg.get("role") == "assistant":
            # an assistant turn answers a call whose prompt was everything before it
            out.append(TraceRecord(sid, t, max(size, 1), task_id=f"{sid}/0",
                                   output_tokens=max(1, len(text) // 4),
                                   task_text=task_text if not out else "", tools=True,
                                   source="swe-agent"))
            t += 20.0
        elif msg.get("role") == "user" and not task_text and len(text) > 200:
            task_text = text[:4000]
        size += len(text) // 4
    return out


_LEDGER_COLS = ("started_at", "session_id", "agent_id", "request_role", "input_tokens",
                "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                "output_tokens")


def ledger(path: Path) -> list[TraceRecord]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            f"SELECT {', '.join(_LEDGER_COLS)} "
            "FROM requests WHERE status = 'ok' ORDER BY started_at").fetchall()
    finally:
        con.close()
    return ledger_rows(dict(zip(_LEDGER_COLS, r, strict=True)) for r in rows)


def ledger_rows(rows: Iterable[Mapping[str, Any]]) -> list[TraceRecord]:
    """Ledger rows (dicts with the ``requests`` table's columns, oldest first, already
    filtered to the ones to replay) as trace records. The served model, when the row
    has one, is kept in ``extra["served_model"]`` (the recorded choice)."""
    out: list[TraceRecord] = []
    t0: float | None = None
    for row in rows:
        started = float(row["started_at"])
        t0 = started if t0 is None else t0
        role = row.get("request_role")
        role = role if role in ("main", "subagent", "utility", "compaction") else "main"
        prompt = sum(int(row.get(k) or 0) for k in (
            "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens"))
        served = row.get("served_model")
        out.append(TraceRecord(str(row.get("session_id") or "anonymous"), started - t0,
                               prompt, role=role, agent_id=row.get("agent_id"),
                               task_id="", output_tokens=int(row.get("output_tokens") or 0),
                               source="ledger",
                               extra={"served_model": served} if served else {}))
    # the ledger has no task marker: a call whose prompt did not grow from the
    # stream's previous one (a rebuild) or after >5 min idle starts a task
    last: dict[str, tuple[float, int, str]] = {}
    for r in out:
        key = f"{r.session_id}/{r.agent_id}"
        prev = last.get(key)
        if prev is None or r.t - prev[0] > 300 or r.prompt_tokens < prev[1]:
            r.task_id = f"{key}@{r.t:.0f}"
        else:
            r.task_id = prev[2]
        last[key] = (r.t, r.prompt_tokens, r.task_id)
    return out


def convert(kind: str, path: Path) -> list[TraceRecord]:
    """Convert ``path`` (a file, or a directory of ``.traj`` / ``.csv`` files)."""
    if kind == "swe-agent" and path.is_dir():
        return [r for p in sorted(path.rglob("*.traj")) for r in swe_agent_traj(p)]
    if kind == "tracelab-csv" and path.is_dir():
        return [r for p in sorted(path.glob("*.csv")) for r in tracelab_csv(p)]
    fns = {"tracelab": tracelab_rounds, "tracelab-csv": tracelab_csv, "aider": aider_history,
           "swe-agent": swe_agent_traj, "ledger": ledger}
    if kind not in fns:
        raise ValueError(f"unknown trace kind {kind!r} (one of {', '.join(fns)})")
    return fns[kind](path)
