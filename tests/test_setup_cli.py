"""`switchman setup <agent>`: writes, prints and undoes each agent's settings in
a temporary $HOME; the URL comes from the running daemon when there is one."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from switchman_daemon.cli import main
from switchman_shared import agent_setup
from tests.support.running import RunningDaemon

URL = "http://127.0.0.1:8787"  # the built-in default when no daemon runs

# an existing settings file per agent, with something of the user's in it
ORIGINAL = {
    "claude-code": (".claude/settings.json", '{\n  "model": "opus",\n  "env": {"FOO": "1"}\n}\n'),
    "codex": (".codex/config.toml", 'model = "gpt-5.5-codex"\napproval_policy = "never"\n'),
    "aider": (".aider.conf.yml", "dark-mode: true\nopenai-api-base: https://old.example\n"),
    "sdk": (".env", "DEBUG=1\n"),
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.setenv("USERPROFILE", str(h))
    monkeypatch.setenv("SWITCHMAN_DATA_DIR", str(tmp_path / "data"))  # no daemon there
    monkeypatch.setenv("SWITCHMAN_CONFIG", str(tmp_path / "absent.toml"))
    for var in ("CODEX_HOME", "SWITCHMAN_TEAM_KEY"):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.mark.parametrize("agent", list(agent_setup.AGENTS))
def test_setup_print_write_undo_round_trip(agent: str, home: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rel, original = ORIGINAL[agent]
    f = home / rel
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(original)

    assert main(["setup", agent, "--print"]) == 0
    shown = capsys.readouterr().out
    assert str(f) in shown and "would change" in shown and URL in shown
    assert f.read_text() == original and not agent_setup.backups(f)  # --print writes nothing

    assert main(["setup", agent]) == 0
    assert "backup:" in capsys.readouterr().out
    assert agent_setup.target_url(agent, home=home) == URL
    (backup,) = agent_setup.backups(f)
    assert backup.read_bytes() == original.encode()  # the backup is the original, exactly

    assert main(["setup", agent]) == 0  # again: nothing to change, no second backup
    assert "nothing changed" in capsys.readouterr().out
    assert len(agent_setup.backups(f)) == 1

    assert main(["setup", agent, "--undo"]) == 0
    assert "restored" in capsys.readouterr().out
    assert f.read_text() == original and not agent_setup.backups(f)
    assert main(["setup", agent, "--undo"]) == 1  # nothing left to undo
    assert "no switchman backup" in capsys.readouterr().err


def test_undo_removes_a_file_setup_created_and_steps_back(home: Path) -> None:
    f = home / ".codex" / "config.toml"
    assert main(["setup", "codex"]) == 0
    assert f.exists() and agent_setup.target_url("codex", home=home) == URL
    assert main(["setup", "codex", "--team-key", "sk-sw-1"]) == 0  # a second change
    assert main(["setup", "codex", "--undo"]) == 0  # back to the first switchman version
    assert "env_key" not in tomllib.loads(f.read_text())["model_providers"]["switchman"]
    assert main(["setup", "codex", "--undo"]) == 0  # back to no file at all
    assert not f.exists() and list(f.parent.iterdir()) == []


def test_team_key_and_no_telemetry(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["setup", "claude-code", "--team-key", "sk-sw-team", "--no-telemetry"]) == 0
    env = json.loads((home / ".claude" / "settings.json").read_text())["env"]
    assert env["ANTHROPIC_AUTH_TOKEN"] == "sk-sw-team"
    assert {k: env[k] for k in ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER",
                                "DISABLE_TELEMETRY", "DISABLE_ERROR_REPORTING")} == dict.fromkeys(
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_AUTOUPDATER", "DISABLE_TELEMETRY",
         "DISABLE_ERROR_REPORTING"), "1")

    assert main(["setup", "codex", "--team-key", "sk-sw-team", "--no-telemetry"]) == 0
    cfg = tomllib.loads((home / ".codex" / "config.toml").read_text())
    assert cfg["model_providers"]["switchman"]["env_key"] == "SWITCHMAN_API_KEY"
    assert cfg["model_providers"]["switchman"]["wire_api"] == "responses"
    assert cfg["check_for_update_on_startup"] is False
    assert cfg["analytics"] == {"enabled": False} and cfg["features"] == {"plugins": False}
    assert "export SWITCHMAN_API_KEY=sk-sw-team" in capsys.readouterr().out

    conf = home / ".aider.conf.yml"
    conf.write_text("set-env:\n  - FOO=1\n")  # a YAML list of the user's: left alone
    assert main(["setup", "aider", "--no-telemetry"]) == 0
    lines = conf.read_text().splitlines()
    assert lines[:2] == ["set-env:", "  - FOO=1"]
    assert {"check-update: false", "show-release-notes: false", "analytics-disable: true",
            f"openai-api-base: {URL}/v1"} <= set(lines)


def test_url_comes_from_the_running_daemon(home: Path, tmp_path: Path, mem_keyring: object,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    d = RunningDaemon(tmp_path / "d")
    try:
        monkeypatch.setenv("SWITCHMAN_DATA_DIR", str(d.daemon.data_dir))
        assert main(["setup", "aider"]) == 0
        assert "the running daemon" in capsys.readouterr().out
        assert agent_setup.target_url("aider", home=home) == d.url != URL
        assert main(["setup", "sdk", "--url", "http://127.0.0.1:9999/"]) == 0
        assert agent_setup.target_url("sdk", home=home) == "http://127.0.0.1:9999"
    finally:
        d.stop()
