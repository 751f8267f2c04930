"""Requests shaped like Claude Code's, Codex's and Aider's go through intact: the
same-format path changes only ``model``, forwards the protocol headers, replaces
the client's credential with the provider's, and records the session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from switchman_daemon.sim import create_sim_app
from tests.support.running import RunningApp, RunningDaemon
from tests.support.shapes import aider_turn, claude_code_turn, codex_turn


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = create_sim_app(time_scale=0)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            raw = await request.read()
            self.requests.append({"path": request.path, "query": dict(request.query),
                                  "headers": dict(request.headers), "raw": raw})
            return await handler(request)

        app.middlewares.append(record)
        return app


@pytest.fixture(scope="module")
def rec() -> Iterator[tuple[Recorder, RunningApp]]:
    r = Recorder()
    up = RunningApp(r.app)
    yield r, up
    up.stop()


@pytest.fixture
def shaped(tmp_path: Path, rec: tuple[Recorder, RunningApp],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningDaemon, Recorder]]:
    recorder, up = rec
    recorder.requests.clear()
    monkeypatch.setenv("REC_PROVIDER_KEY", "provider-secret-123")
    cfg = tmp_path / "rec.toml"
    cfg.write_text(f"""
[providers.rec-anthropic]
kind = "anthropic"
base_url = "{up.url}"
key = "env:REC_PROVIDER_KEY"
[providers.rec-openai]
kind = "openai"
base_url = "{up.url}/v1"
key = "env:REC_PROVIDER_KEY"
[models."claude-opus-4-8"]
provider = "rec-anthropic"
upstream_id = "sim-claude-strong"
[models."gpt-5.5"]
provider = "rec-openai"
upstream_id = "sim-gpt-strong"
[models."gpt-4o"]
provider = "rec-openai"
upstream_id = "sim-gpt-mid"
""")
    d = RunningDaemon(tmp_path, config_path=cfg)
    try:
        yield d, recorder
    finally:
        d.stop()


def _without_model(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "model"}


def test_claude_code_turn_passes_through(shaped: tuple[RunningDaemon, Recorder]) -> None:
    d, recorder = shaped
    body, headers = claude_code_turn(target_kb=100)
    raw = json.dumps(body).encode()
    assert len(raw) > 90_000
    r = httpx.post(d.url + "/v1/messages?beta=true", content=raw,
                   headers={**headers, "content-type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.text.startswith("event: message_start")
    assert "event: message_stop" in r.text
    (up,) = recorder.requests
    assert up["path"] == "/v1/messages"
    sent = json.loads(up["raw"])
    assert sent["model"] == "sim-claude-strong"
    assert _without_model(sent) == _without_model(body)  # byte-for-byte content
    h = {k.lower(): v for k, v in up["headers"].items()}
    assert h["anthropic-beta"] == headers["anthropic-beta"]
    assert h["anthropic-version"] == "2023-06-01"
    assert h["x-claude-code-session-id"] == headers["x-claude-code-session-id"]
    assert h["x-api-key"] == "provider-secret-123"
    assert "cc-client-secret-key" not in json.dumps(h)
    (row,) = d.ledger_rows()
    assert row["session_id"] == headers["x-claude-code-session-id"]
    assert row["client"].startswith("claude-cli/")
    assert row["status"] == "ok" and row["input_tokens"] + row["cache_write_tokens"] > 10_000
    assert "provider-secret-123" not in json.dumps(row)


def test_claude_code_subagent_is_recognised(shaped: tuple[RunningDaemon, Recorder]) -> None:
    d, _ = shaped
    body, headers = claude_code_turn(target_kb=30, agent_id="a1b2c3")
    body["model"] = "claude-opus-4-8"
    r = httpx.post(d.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=30)
    assert r.status_code == 200
    (row,) = d.ledger_rows()
    assert row["agent_id"] == "a1b2c3" and row["request_role"] == "subagent"


def test_codex_turn_passes_through(shaped: tuple[RunningDaemon, Recorder]) -> None:
    d, recorder = shaped
    body, headers = codex_turn()
    r = httpx.post(d.url + "/v1/responses", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    events = [ln[7:] for ln in r.text.splitlines() if ln.startswith("event: ")]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert "response.output_item.done" in events and "response.output_text.delta" in events
    (up,) = recorder.requests
    assert up["path"] == "/v1/responses"
    sent = json.loads(up["raw"])
    assert sent["model"] == "sim-gpt-strong"
    assert _without_model(sent) == _without_model(body)
    assert up["headers"]["Authorization"] == "Bearer provider-secret-123"
    (row,) = d.ledger_rows()
    assert row["session_id"] == headers["session-id"]
    assert row["request_role"] == "main"


def test_codex_compaction_is_recognised(shaped: tuple[RunningDaemon, Recorder]) -> None:
    d, _ = shaped
    body, headers = codex_turn(kind="compaction")
    r = httpx.post(d.url + "/v1/responses", json=body, headers=headers, timeout=30)
    assert r.status_code == 200
    (row,) = d.ledger_rows()
    assert row["request_role"] == "compaction"


def test_aider_turn_gets_no_usage_chunk_but_is_billed(
        shaped: tuple[RunningDaemon, Recorder]) -> None:
    d, recorder = shaped
    body, headers = aider_turn()
    r = httpx.post(d.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200
    chunks = [json.loads(ln[6:]) for ln in r.text.splitlines()
              if ln.startswith("data: {")]
    assert chunks and all(c["choices"] for c in chunks)
    assert r.text.rstrip().endswith("data: [DONE]")
    sent = json.loads(recorder.requests[0]["raw"])
    # the router asked for usage upstream on the client's behalf
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == body["messages"]  # last message stays role system
    (row,) = d.ledger_rows()
    assert row["output_tokens"] > 0 and row["cost_usd"] > 0
