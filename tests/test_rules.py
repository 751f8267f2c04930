"""Deterministic routing rules: config, the router, the admin API and the proxy."""

from __future__ import annotations

import json

import httpx
import pytest

from switchman_daemon.config import load_config
from switchman_daemon.models import ModelRegistry
from switchman_daemon.routing.quality_prior import QualityPredictor
from switchman_daemon.routing.router import Router
from switchman_daemon.routing.signals import Signals
from switchman_shared.admin_client import AdminClient, AdminError
from tests.support.running import RunningDaemon


def _router(rules: list[dict]) -> Router:
    cfg = load_config(None, overrides={"routing": {"rules": rules}})
    return Router(cfg, ModelRegistry(cfg), quality=QualityPredictor(use_learned=False))


def test_first_matching_rule_pins_or_narrows() -> None:
    r = _router([
        {"name": "haiku-subagents", "match_role": "subagent", "route_to": "sim-claude-cheap"},
        {"name": "aider-gpt", "match_client": "OpenAI/Python*", "route_to": "sim-gpt-mid"},
    ])
    sub = Signals(client_format="anthropic", requested_model="claude-opus-4-8", stream=True,
                  role="subagent", agent_id="a1", session_id="s")
    d = r.choose(sub)
    assert d.model.name == "sim-claude-cheap" and d.how == "rule"
    assert "haiku-subagents" in d.reasons[0]
    aider = Signals(client_format="chat", requested_model="gpt-4o", stream=True,
                    user_agent="OpenAI/Python 2.20.0")
    assert r.choose(aider).model.name == "sim-gpt-mid"
    other = Signals(client_format="chat", requested_model="gpt-4o", stream=True,
                    user_agent="curl/8")
    assert r.choose(other).how == "pool"  # no rule matched: scored as usual


def test_rule_to_an_unknown_target_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="route_to"):
        _router([{"route_to": "no-such-pool"}])


def test_rules_over_the_admin_api_drive_the_proxy(admin_daemon: RunningDaemon,
                                                  client: AdminClient) -> None:
    client.set_rules([{"name": "cheap-utility", "match_role": "utility",
                       "route_to": "sim-gpt-cheap"},
                      {"name": "claude-family", "match_model": "claude-*",
                       "route_to": "sim-claude-mid"}])
    got = client.get_policy().rules
    assert [x.name for x in got] == ["cheap-utility", "claude-family"]
    r = httpx.post(admin_daemon.url + "/v1/messages", headers={
        "anthropic-version": "2023-06-01"}, json={
        "model": "claude-opus-4-8", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 200
    (row,) = admin_daemon.ledger_rows()
    assert row["served_model"] == "sim-claude-mid"
    assert json.loads(row["decision"])["how"] == "rule"
    with pytest.raises(AdminError):
        client.set_rules([{"route_to": "nowhere"}])
    assert [x.name for x in client.get_policy().rules] == ["cheap-utility", "claude-family"]


def test_semantic_routes_match_similar_tasks_only() -> None:
    cfg = load_config(None, overrides={"routing": {"semantic": [
        {"name": "small edits", "route_to": "sim-claude-cheap", "threshold": 0.4,
         "examples": ["fix a typo in the README", "rename this variable",
                      "update the copyright year"]},
        {"name": "hard design", "route_to": "sim-claude-strong", "threshold": 0.4,
         "examples": ["design a lock-free concurrent queue", "refactor the storage engine"]},
    ]}})
    r = Router(cfg, ModelRegistry(cfg), quality=QualityPredictor(use_learned=False))

    def pick(text: str) -> tuple[str, str]:
        s = Signals(client_format="chat", requested_model="default", stream=False,
                    task_text=text, new_task=True, session_id=text)
        d = r.choose(s)
        return d.model.name, d.how

    assert pick("please fix the typo in README.md") == ("sim-claude-cheap", "semantic")
    assert pick("refactor the storage engine for batching") == ("sim-claude-strong", "semantic")
    assert pick("write a haiku about autumn leaves")[1] == "pool"  # nothing similar


def test_semantic_vectors_are_unit_and_deterministic() -> None:
    from switchman_daemon.routing.semantic import cosine, vectorise

    a = vectorise("Fix the typo in the README")
    assert abs(cosine(a, a) - 1.0) < 1e-9
    assert a == vectorise("fix the typo in the readme")
    assert vectorise("") == {}
