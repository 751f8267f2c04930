"""The CLI's admin verbs end to end against a running daemon."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import pytest

from switchman_daemon.cli import main
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon

SECRET = "sk-proj-CLISECRET-0123456789abcdef"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_admin_verbs(admin_daemon: RunningDaemon, mem_keyring: MemoryKeyring,
                         capsys: pytest.CaptureFixture[str], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    dd = ("--data-dir", str(admin_daemon.daemon.data_dir))

    code, out, _ = _run(capsys, "status", *dd)
    assert code == 0 and f":{admin_daemon.port}" in out and "sim-openai" in out

    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    code, out, _ = _run(capsys, "keys", "set", "sim-openai", "--stdin", *dd)
    assert code == 0 and "key stored" in out and "CLISECRET" not in out
    assert mem_keyring.store[("switchman", "sim-openai")] == SECRET

    code, out, _ = _run(capsys, "keys", "ls", *dd)
    assert code == 0 and "sim-openai" in out and "keyring" in out and "CLISECRET" not in out
    code, out, _ = _run(capsys, "keys", "test", "sim-openai", *dd)
    assert code == 0 and out.startswith("ok:")
    code, out, _ = _run(capsys, "keys", "rm", "sim-openai", *dd)
    assert code == 0 and ("switchman", "sim-openai") not in mem_keyring.store
    code, _, err = _run(capsys, "keys", "test", "nope", *dd)
    assert code == 1 and "unknown provider" in err

    code, out, _ = _run(capsys, "policy", "set", "--cost", "0.8", "--latency", "0.1", *dd)
    assert code == 0 and "cost=0.8" in out and "quality=0.5" in out
    assert admin_daemon.ctx.config.routing.objective.latency == 0.1
    code, out, _ = _run(capsys, "policy", "show", *dd)
    assert "latency=0.1" in out
    assert "cascade    off" in out and "keepalive  off" in out

    code, out, _ = _run(capsys, "policy", "set", "--cascade", "on", "--keepalive", "on",
                        "--cascade-quality-floor", "0.3", *dd)
    assert code == 0 and "cascade    on" in out and "quality_floor=0.3" in out
    assert "keepalive  on" in out and "latency=0.1" in out
    r = admin_daemon.ctx.config.routing
    assert r.cascade.enabled and r.cascade.quality_floor == 0.3 and r.keepalive
    code, out, _ = _run(capsys, "policy", "set", "--keepalive", "off",
                        "--cascade-max-cost-ratio", "0.25", *dd)
    assert code == 0 and "keepalive  off" in out and "max_cost_ratio=0.25" in out
    assert not admin_daemon.ctx.config.routing.keepalive
    code, out, _ = _run(capsys, "policy", "show", *dd)
    assert "cascade    on" in out and "keepalive  off" in out
    code, _, err = _run(capsys, "policy", "set", "--cascade-max-cost-ratio", "0", *dd)
    assert code == 1 and "routing.cascade.max_cost_ratio" in err
    code, _, err = _run(capsys, "policy", "set", *dd)
    assert code == 1 and "at least one" in err
    with pytest.raises(SystemExit):
        main(["policy", "set", "--cascade", "maybe", *dd])
    assert "expected on or off" in capsys.readouterr().err
    assert admin_daemon.ctx.config.routing.cascade.enabled

    code, out, _ = _run(capsys, "models", "ls", *dd)
    assert code == 0 and "sim-claude-strong" in out and "CACHE R" in out

    exported = tmp_path / "cfg.toml"
    code, _, _ = _run(capsys, "config", "export", "-o", str(exported), *dd)
    data = tomllib.loads(exported.read_text())
    assert code == 0 and data["routing"]["objective"]["cost"] == 0.8
    exported.write_text(exported.read_text().replace("cost = 0.8", "cost = 0.3"))
    code, out, _ = _run(capsys, "config", "import", str(exported), *dd)
    assert code == 0 and "routing" in out
    assert admin_daemon.ctx.config.routing.objective.cost == 0.3

    code, out, _ = _run(capsys, "stats", "--json", *dd)
    assert code == 0 and json.loads(out)["snapshot"] is True


def test_cli_without_a_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "status", "--data-dir", str(tmp_path))
    assert code == 3 and "no running switchman daemon" in err
