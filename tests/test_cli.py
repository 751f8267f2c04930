"""The ``switchman`` command: ledger export against a real daemon's data dir."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import httpx
import pytest

from switchman_daemon.cli import main
from tests.support.running import RunningDaemon


def test_ledger_export_csv_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = RunningDaemon(tmp_path)
    try:
        for i in range(3):
            r = httpx.post(d.url + "/v1/chat/completions", json={
                "model": "sim-gpt-cheap",
                "messages": [{"role": "user", "content": f"[[sim:reply r{i}]]"}]}, timeout=10)
            assert r.status_code == 200
        d.ledger_rows()
    finally:
        d.stop()
    data_dir = str(tmp_path / "data")
    out = tmp_path / "ledger.csv"
    assert main(["ledger", "export", "--format", "csv", "--data-dir", data_dir,
                 "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3
    assert {r["served_model"] for r in rows} == {"sim-gpt-cheap"}
    assert all(float(r["cost_usd"]) > 0 and r["status"] == "ok" for r in rows)
    assert main(["ledger", "export", "--format", "jsonl", "--data-dir", data_dir,
                 "--since", "1h"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert len(lines) == 3 and all(x["output_tokens"] > 0 for x in lines)
    assert main(["ledger", "export", "--data-dir", data_dir, "--since", "bogus"]) == 2


def test_daemon_command_rejects_a_bad_config(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[providers.x]\nkind = 'nope'\nbase_url = 'http://x'\n")
    assert main(["daemon", "--config", str(bad), "--data-dir", str(tmp_path)]) == 2
    assert "invalid config" in capsys.readouterr().err


def test_run_loop_uses_uvloop_unless_opted_out(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    from switchman_daemon.app import run_loop

    seen: list[str] = []

    async def probe() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_loop(probe())
    monkeypatch.setenv("SWITCHMAN_EVENT_LOOP", "asyncio")
    run_loop(probe())
    assert seen[0].startswith("uvloop") and seen[1].startswith("asyncio"), seen
