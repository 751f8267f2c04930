"""Team keys and budgets on the proxy path, over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anthropic
import httpx
import openai
import pytest

from tests.support.running import RunningDaemon


@pytest.fixture
def closed(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = RunningDaemon(tmp_path, overrides={"daemon": {"local_open": False}})
    try:
        yield d
    finally:
        d.stop()


def test_team_key_required_when_not_local_open(closed: RunningDaemon) -> None:
    with pytest.raises(anthropic.AuthenticationError) as ei:
        anthropic.Anthropic(base_url=closed.url, api_key="not-a-team-key",
                            max_retries=0).messages.create(
            model="sim-claude-cheap", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "team key" in str(ei.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=closed.url + "/v1", api_key="sk-sw-forged0000000000000000",
                      max_retries=0).chat.completions.create(
            model="sim-gpt-cheap", messages=[{"role": "user", "content": "x"}])
    assert closed.ledger_rows() == []  # unauthenticated traffic writes nothing


def test_issued_key_works_until_revoked_and_respects_pools(closed: RunningDaemon) -> None:
    tk = closed.ctx.teamkeys
    info, plaintext = tk.issue("ci-bot", "alice", pools=["sim-gpt-cheap"])
    assert plaintext.startswith("sk-sw-")
    c = openai.OpenAI(base_url=closed.url + "/v1", api_key=plaintext, max_retries=0)
    out = c.chat.completions.create(model="sim-gpt-cheap",
                                    messages=[{"role": "user", "content": "[[sim:reply ok]]"}])
    assert out.choices[0].message.content == "ok"
    (row,) = closed.ledger_rows()
    assert row["team_key_id"] == info.id
    assert plaintext not in json.dumps(row)
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="sim-gpt-strong",
                                  messages=[{"role": "user", "content": "x"}])
    tk.revoke(info.id)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="sim-gpt-cheap",
                                  messages=[{"role": "user", "content": "x"}])


def test_hard_budget_under_200_concurrent_requests(backend_daemon: RunningDaemon) -> None:
    daemon = backend_daemon  # SQLite, and PostgreSQL when configured
    limit = 0.05
    daemon.ctx.budgets.set("global", "daily", hard_usd=limit)
    body = json.dumps({"model": "sim-claude-strong", "max_tokens": 200, "messages": [
        {"role": "user", "content": "write a long answer " * 200}]}).encode()

    async def fire() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one() -> int:
                async with s.post(daemon.url + "/v1/messages", data=body, headers={
                        "content-type": "application/json",
                        "anthropic-version": "2023-06-01"}) as r:
                    await r.read()
                    if r.status == 429:
                        j = json.loads(await r.read())
                        assert j["error"]["type"] == "rate_limit_error"
                        assert "budget" in j["error"]["message"]
                    return r.status
            return await asyncio.gather(*(one() for _ in range(200)))

    statuses = asyncio.run(fire())
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0 and statuses.count(200) > 0
    rows = daemon.ledger_rows()
    ok = [r for r in rows if r["status"] == "ok"]
    spent = sum(r["cost_usd"] for r in ok)
    one_request = max(r["cost_usd"] for r in ok)
    assert spent <= limit + one_request  # overspend by at most one request
    rejected = [r for r in rows if r["http_status"] == 429]
    assert len(rejected) == statuses.count(429) and all(r["cost_usd"] == 0 for r in rejected)
    st = {b["id"]: b for b in daemon.ctx.budgets.status()}
    (b,) = st.values()
    assert b["spent_usd"] == pytest.approx(spent, rel=1e-6) and b["reserved_usd"] == 0


def test_soft_budget_downgrades_routing(backend_daemon: RunningDaemon) -> None:
    daemon = backend_daemon  # SQLite, and PostgreSQL when configured
    daemon.ctx.budgets.set("global", "daily", soft_usd=0.0)
    r = httpx.post(daemon.url + "/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "hello"}]}, timeout=10)
    assert r.status_code == 200
    (row,) = daemon.ledger_rows()
    d = json.loads(row["decision"])
    assert "budget soft limit" in d["reasons"][0]
    cheapest = min(d["candidates"], key=lambda c: c["cost_horizon"])
    assert row["served_model"] == cheapest["model"]


def test_savings_against_baseline(daemon: RunningDaemon) -> None:
    c = openai.OpenAI(base_url=daemon.url + "/v1", api_key="k", max_retries=0)
    c.chat.completions.create(model="sim-gpt-cheap", messages=[
        {"role": "user", "content": "[[sim:reply cheap]]"}])
    c.chat.completions.create(model="sim-claude-strong", messages=[
        {"role": "user", "content": "[[sim:reply strong]]"}])
    rows = {r["served_model"]: r for r in daemon.ledger_rows()}
    # the baseline is the default pool's strongest model (sim-claude-strong)
    strong, cheap = rows["sim-claude-strong"], rows["sim-gpt-cheap"]
    assert strong["baseline_cost_usd"] == pytest.approx(strong["cost_usd"])
    assert cheap["baseline_cost_usd"] > cheap["cost_usd"] > 0


def test_local_open_refuses_non_loopback(tmp_path: Path) -> None:
    from switchman_daemon.config import ConfigError

    with pytest.raises(ConfigError, match="local-open"):
        RunningDaemon(tmp_path, overrides={"daemon": {"host": "0.0.0.0"}}, host="0.0.0.0")


def test_price_catalog_refresh_applies_new_prices(daemon: RunningDaemon,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import switchman_daemon.app as app_mod
    from switchman_shared.catalog import CatalogModel

    d = daemon.daemon
    assert daemon.lt.run(d.refresh_prices()) is False  # unchanged catalog: nothing to do
    real = app_mod.load_catalog()
    bumped = {k: (CatalogModel.model_validate({**v.model_dump(), "input": v.input * 2})
                  if k == "sim-gpt-cheap" else v) for k, v in real.items()}
    monkeypatch.setattr(app_mod, "catalog_version", lambda: "2099-01-01")
    monkeypatch.setattr("switchman_daemon.models.load_catalog", lambda: bumped)
    assert daemon.lt.run(d.refresh_prices()) is True
    assert daemon.ctx.registry.models["sim-gpt-cheap"].prices.input == pytest.approx(
        real["sim-gpt-cheap"].input * 2)
