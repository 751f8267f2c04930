"""`switchman doctor`: green against a healthy running daemon, a clear ✗ with
the fix for each problem, exit code 0 only when all checks pass."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

from switchman_daemon import doctor
from switchman_daemon.cli import main
from switchman_shared import agent_setup
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SWITCHMAN_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    return home


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_green_against_a_running_daemon(env: Path, admin_daemon: RunningDaemon,
                                        mem_keyring: MemoryKeyring,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = admin_daemon.daemon.data_dir
    agent_setup.apply(agent_setup.plan("claude-code", home=env, proxy_url=admin_daemon.url))
    checks = by_name(doctor.run(data, home=env))
    assert checks["daemon reachable"].ok and admin_daemon.url in checks["daemon reachable"].detail
    assert checks["keyring"].ok and "MemoryKeyring" in checks["keyring"].detail
    assert mem_keyring.store == {}  # the probe entry is deleted again
    assert checks["proxy port"].ok
    assert checks["agents configured"].ok
    assert checks["agents configured"].detail.startswith(f"claude-code → {admin_daemon.url}")
    assert checks["ledger integrity"].ok and "quick_check ok" in checks["ledger integrity"].detail
    assert checks["disk space"].ok and checks["config"].ok

    assert main(["doctor", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.count("✓") == 7 and "✗" not in out and out.endswith("all good\n")


def test_clear_failures_when_the_daemon_is_down(env: Path, tmp_path: Path,
                                                mem_keyring: MemoryKeyring,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["doctor", "--data-dir", str(data)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "daemon reachable" in ln)
    assert line.startswith("✗") and "no running switchman daemon" in line
    assert "fix: start it at login with `switchman service install`" in out
    assert "✗ agents configured" in out and "`switchman setup claude-code`" in out
    assert "✓ keyring" in out


def test_keyring_without_a_backend_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        c = doctor.check_keyring("linux")
    finally:
        keyring.set_keyring(previous)
    assert not c.ok and "fail.Keyring" in c.detail and "SWITCHMAN_KEY_<NAME>" in c.fix


def test_port_taken_and_corrupt_ledger(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        c = doctor.check_port(doctor.DaemonProbe(None), "127.0.0.1", port)
    assert not c.ok and "taken by another program" in c.detail and str(port) in c.fix
    assert doctor.check_port(doctor.DaemonProbe(None), "127.0.0.1", port).ok  # freed

    db = tmp_path / "ledger.db"
    db.write_bytes(b"this is not a database" * 100)
    c = doctor.check_ledger(f"sqlite:///{db}")
    assert not c.ok and ".recover" in c.fix
    assert doctor.check_ledger(f"sqlite:///{tmp_path / 'none.db'}").ok  # not created yet

    buf = io.StringIO()
    doctor.render([c, doctor.Check("disk space", True, "plenty")], buf)
    assert buf.getvalue().splitlines()[0].startswith("✗ ledger integrity")
    assert buf.getvalue().endswith("1 problem(s)\n")
