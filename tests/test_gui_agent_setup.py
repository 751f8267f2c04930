"""agent_setup: pure functions over paths (tmp dirs stand in for $HOME), and the
Agents page's write button."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from switchman_gui import agent_setup as a
from switchman_gui.app import MainWindow
from tests.support.gui import settle, wait_for, window  # noqa: F401

URL = "http://127.0.0.1:8787"


def test_claude_code_merges_env_and_backs_up(tmp_path: Path) -> None:
    f = tmp_path / ".claude" / "settings.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"model": "opus", "env": {"FOO": "1"}}))
    p = a.plan("claude-code", home=tmp_path, proxy_url=URL + "/")
    assert p.path == f and not p.up_to_date
    backup = a.apply(p, now=0)
    assert backup is not None and backup.name.startswith("settings.json.switchman-backup-1970")
    assert json.loads(backup.read_text()) == {"model": "opus", "env": {"FOO": "1"}}
    data = json.loads(f.read_text())
    assert data["model"] == "opus" and data["env"]["FOO"] == "1"
    assert data["env"]["ANTHROPIC_BASE_URL"] == URL  # no /v1 for Anthropic clients
    assert data["env"]["ANTHROPIC_AUTH_TOKEN"] == a.LOCAL_KEY
    assert data["env"]["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    again = a.plan("claude-code", home=tmp_path, proxy_url=URL)
    assert again.up_to_date and a.apply(again) is None  # idempotent, no second backup
    assert len(list(f.parent.glob("*.switchman-backup-*"))) == 1


def test_codex_config_keeps_other_settings(tmp_path: Path) -> None:
    f = tmp_path / ".codex" / "config.toml"
    f.parent.mkdir()
    f.write_text('model = "gpt-5.5-codex"\n[model_providers.other]\nname = "x"\n'
                 'base_url = "https://x"\n')
    p = a.plan("codex", home=tmp_path, proxy_url=URL, api_key="sk-sw-team")
    assert a.apply(p) is not None
    data = tomllib.loads(f.read_text())
    assert data["model_provider"] == "switchman" and data["model"] == "gpt-5.5-codex"
    sw = data["model_providers"]["switchman"]
    assert sw["base_url"] == URL + "/v1" and sw["wire_api"] == "responses"
    assert sw["env_key"] == "SWITCHMAN_API_KEY" and "SWITCHMAN_API_KEY" in p.notes
    assert data["model_providers"]["other"]["name"] == "x"
    # CODEX_HOME wins over ~/.codex; a fresh file needs no backup
    alt = tmp_path / "codex-home"
    p2 = a.plan("codex", home=tmp_path, proxy_url=URL, environ={"CODEX_HOME": str(alt)})
    assert p2.path == alt / "config.toml" and a.apply(p2) is None
    assert "env_key" not in tomllib.loads(p2.path.read_text())["model_providers"]["switchman"]


def test_aider_and_sdk_files_are_upserted(tmp_path: Path) -> None:
    conf = tmp_path / ".aider.conf.yml"
    conf.write_text("dark-mode: true\nopenai-api-base: https://old\n")
    a.apply(a.plan("aider", home=tmp_path, proxy_url=URL))
    lines = conf.read_text().splitlines()
    assert lines == ["dark-mode: true", f"openai-api-base: {URL}/v1",
                     f"openai-api-key: {a.LOCAL_KEY}"]

    env = tmp_path / "app" / ".env"
    env.parent.mkdir()
    env.write_text("DEBUG=1\nOPENAI_API_KEY=sk-real\n")
    a.apply(a.plan("sdk", home=tmp_path, sdk_dir=env.parent, proxy_url=URL))
    text = env.read_text()
    assert "DEBUG=1" in text and "OPENAI_API_KEY=sk-real" in text  # a real key is kept
    assert f"OPENAI_BASE_URL={URL}/v1" in text and f"ANTHROPIC_BASE_URL={URL}\n" in text
    a.apply(a.plan("sdk", home=tmp_path, sdk_dir=env.parent, proxy_url=URL, api_key="team"))
    assert "OPENAI_API_KEY=team" in env.read_text()  # an explicit team key replaces it


def test_unreadable_settings_are_not_overwritten(tmp_path: Path) -> None:
    f = tmp_path / ".claude" / "settings.json"
    f.parent.mkdir()
    f.write_text("{not json")
    with pytest.raises(a.SetupError):
        a.plan("claude-code", home=tmp_path, proxy_url=URL)
    p = a.plan("aider", home=tmp_path, proxy_url=URL)
    (tmp_path / ".aider.conf.yml").write_text("changed meanwhile\n")
    with pytest.raises(a.SetupError):
        a.apply(p)
    with pytest.raises(ValueError):
        a.plan("cursor", home=tmp_path, proxy_url=URL)


def test_agents_page_writes_settings_for_the_running_daemon(
        window: MainWindow, qtbot: Any, tmp_path: Path) -> None:  # noqa: F811
    page = window.page("Agents")
    window.go(6)
    settle(qtbot, window)
    wait_for(qtbot, lambda: page.proxy_url != "http://127.0.0.1:8787")  # from Status
    page.tabs.setCurrentIndex(1)  # Codex
    assert page.agent == "codex" and 'wire_api = "responses"' in page.preview.toPlainText()
    page.write_btn.click()
    cfg = tmp_path / "home" / ".codex" / "config.toml"
    assert tomllib.loads(cfg.read_text())["model_providers"]["switchman"]["base_url"] == \
        page.proxy_url + "/v1"
    assert "already set up" in page.status.text() or "Wrote" in page.status.text()
    assert not page.write_btn.isEnabled()
