"""Budgets, team keys and live stats through the admin plane: a real daemon, a
real gRPC channel, real HTTP against the proxy. The budget and team-key tests run
on both ledger backends (``backend``: SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchman_daemon.cli import main
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2, stats_pb2, teamkeys_pb2
from tests.support.backends import daemon_on
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon

ANTHROPIC = {"anthropic-version": "2023-06-01"}


def _anthropic(
    d: RunningDaemon, key: str = "local", session: str = "sess-1", model: str = "sim-claude-cheap"
) -> httpx.Response:
    return httpx.post(
        f"{d.url}/v1/messages",
        timeout=30,
        headers={**ANTHROPIC, "x-api-key": key, "x-claude-code-session-id": session},
        json={"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
    )


def _chat(d: RunningDaemon, key: str = "local") -> httpx.Response:
    return httpx.post(
        f"{d.url}/v1/chat/completions",
        timeout=30,
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": "sim-gpt-cheap",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )


@pytest.fixture
def closed_daemon(
    tmp_path: Path, mem_keyring: MemoryKeyring, backend: str
) -> Iterator[RunningDaemon]:
    with daemon_on(backend, tmp_path, {"daemon": {"local_open": False}}) as d:
        yield d


@pytest.fixture
def budget_daemon(
    tmp_path: Path, mem_keyring: MemoryKeyring, backend: str
) -> Iterator[RunningDaemon]:
    with daemon_on(backend, tmp_path) as d:
        yield d


@pytest.fixture
def budget_client(budget_daemon: RunningDaemon) -> Iterator[AdminClient]:
    c = AdminClient.connect(budget_daemon.daemon.data_dir)
    try:
        yield c
    finally:
        c.close()


def _watch(client: AdminClient, **kw: Any) -> Any:
    return client.stats.Watch(stats_pb2.WatchRequest(interval_s=0.2, **kw), timeout=20)


def test_budget_round_trip(budget_client: AdminClient) -> None:
    client = budget_client
    g = client.set_budget("global", "daily", soft_usd=5, hard_usd=10, timezone="Europe/Oslo")
    assert g.id.startswith("bg_") and g.timezone == "Europe/Oslo"
    assert g.action == budgets_pb2.BUDGET_ACTION_BLOCK and g.scope_id == ""
    s = client.set_budget("session", "total", soft_usd=2)  # a template: each session
    assert s.action == budgets_pb2.BUDGET_ACTION_DOWNGRADE and s.hard_usd == 0
    assert s.timezone  # empty = the daemon's local zone, stored by name
    assert [b.id for b in client.list_budgets()] == [g.id, s.id]

    rows = {st.budget.id: st for st in client.budget_status()}
    st = rows[g.id]
    assert st.state == budgets_pb2.BUDGET_STATE_OK and st.spent_usd == 0
    assert 0 < st.period_start < time.time() < st.period_end
    assert st.period_end - st.period_start in (23 * 3600, 24 * 3600, 25 * 3600)
    assert rows[s.id].period_end == 0  # total: no end; template listed though unused
    assert [x.budget.id for x in client.budget_status([s.id])] == [s.id]

    # replacing keeps the id; limits change
    g2 = client.set_budget("global", "daily", hard_usd=20, timezone="Europe/Oslo", budget_id=g.id)
    assert g2.id == g.id and g2.hard_usd == 20 and g2.soft_usd == 0

    for kw, needle in (
        ({"soft_usd": 9, "hard_usd": 1}, "soft limit"),
        ({"soft_usd": 1, "timezone": "Mars/Base"}, "time zone"),
        ({"subject": "x", "soft_usd": 1}, "no subject"),
        ({}, "soft or a hard"),
    ):
        with pytest.raises(AdminError) as ei:
            client.set_budget("global", "daily", **kw)
        assert ei.value.kind == "invalid_argument" and needle in ei.value.message
    with pytest.raises(AdminError) as ei:  # scope left unspecified on the wire
        client.call(
            client.budgets.SetBudget,
            budgets_pb2.SetBudgetRequest(
                budget=budgets_pb2.Budget(period=budgets_pb2.BUDGET_PERIOD_DAILY, soft_usd=1)
            ),
        )
    assert ei.value.kind == "invalid_argument" and "scope" in ei.value.message
    with pytest.raises(AdminError) as ei:
        client.set_budget("planet", "daily", soft_usd=1)
    assert ei.value.kind == "invalid_argument"

    client.remove_budget(g.id)
    assert [b.id for b in client.list_budgets()] == [s.id]
    for call in (lambda: client.remove_budget(g.id), lambda: client.budget_status([g.id])):
        with pytest.raises(AdminError) as ei:
            call()
        assert ei.value.kind == "not_found"


def test_hard_budget_set_via_api_blocks_the_proxy(
    budget_client: AdminClient, budget_daemon: RunningDaemon
) -> None:
    client, admin_daemon = budget_client, budget_daemon
    assert _anthropic(admin_daemon).status_code == 200
    b = client.set_budget("global", "total", hard_usd=1e-9)
    r = _anthropic(admin_daemon)
    assert r.status_code == 429, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "rate_limit_error"
    assert "budget exceeded" in err["error"]["message"]
    assert "hard limit" in err["error"]["message"]
    r = _chat(admin_daemon)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert "global budget" in r.json()["error"]["message"]
    [st] = client.budget_status()
    assert st.state == budgets_pb2.BUDGET_STATE_HARD_EXCEEDED and st.spent_usd > 0
    assert st.forecast_usd == st.spent_usd  # total budget: nothing left to project
    client.remove_budget(b.id)
    assert _anthropic(admin_daemon).status_code == 200


def test_team_keys_issue_use_revoke(
    client_closed: AdminClient, closed_daemon: RunningDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c, d = client_closed, closed_daemon
    assert _anthropic(d).status_code == 401  # local_open is off: a key is required

    issued = c.issue_team_key("ci-bot", "alice", expires_at=time.time() + 3600)
    key = issued.plaintext
    assert key.startswith("sk-sw-") and issued.key.prefix == key[: len(issued.key.prefix)]
    assert issued.key.owner == "alice" and not issued.key.revoked
    assert _anthropic(d, key).status_code == 200
    assert _chat(d, key).status_code == 200  # Bearer works too
    narrow = c.issue_team_key("narrow", "bob", pools=["sim-gpt-cheap"])
    assert list(narrow.key.allowed_pools) == ["sim-gpt-cheap"]
    assert _anthropic(d, narrow.plaintext).status_code == 403
    d.ctx.ledger.flush()

    listed = c.call(c.teamkeys.List, teamkeys_pb2.ListTeamKeysRequest())
    keys = {k.id: k for k in listed.keys}
    k = keys[issued.key.id]
    assert k.spend_usd > 0 and k.last_used_at > 0 and k.name == "ci-bot"
    assert keys[narrow.key.id].spend_usd == 0

    revoked = c.revoke_team_key(issued.key.id)
    assert revoked.revoked and revoked.spend_usd == k.spend_usd
    r = _anthropic(d, key)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    assert [x.id for x in c.list_team_keys()] == [narrow.key.id]
    assert {x.id for x in c.list_team_keys(include_revoked=True)} == set(keys)
    assert c.revoke_team_key(issued.key.id).revoked  # idempotent

    for call, kind in (
        (lambda: c.revoke_team_key("tk_nope"), "not_found"),
        (lambda: c.issue_team_key(" ", "x"), "invalid_argument"),
        (lambda: c.issue_team_key("old", "x", expires_at=1.0), "invalid_argument"),
    ):
        with pytest.raises(AdminError) as ei:
            call()
        assert ei.value.kind == kind

    blobs = [
        listed.SerializeToString(),
        revoked.SerializeToString(),
        *(x.SerializeToString() for x in c.list_team_keys(include_revoked=True)),
    ]
    body = key[len("sk-sw-") :]
    assert all(body.encode() not in b for b in blobs)
    assert body not in caplog.text


@pytest.fixture
def client_closed(closed_daemon: RunningDaemon) -> Iterator[AdminClient]:
    c = AdminClient.connect(closed_daemon.daemon.data_dir)
    try:
        yield c
    finally:
        c.close()


def test_watch_snapshot_then_deltas_with_budgets(
    client: AdminClient, admin_daemon: RunningDaemon
) -> None:
    b = client.set_budget("global", "daily", soft_usd=100)
    call = _watch(client)
    try:
        it = iter(call)
        snap = next(it)
        assert snap.snapshot and snap.totals.requests == 0 and snap.daemon_version
        assert [st.budget.id for st in snap.budgets] == [b.id]
        assert snap.since <= admin_daemon.ctx.stats.started_at

        assert _anthropic(admin_daemon, session="sess-w").status_code == 200
        delta = next(it)
        assert not delta.snapshot and delta.totals.requests == 1
        assert [kt.key for kt in delta.by_model] == ["sim-claude-cheap"]
        assert [kt.key for kt in delta.by_session] == ["sess-w"]
        assert [x.served_model for x in delta.decisions] == ["sim-claude-cheap"]
        assert delta.decisions[0].reasons and delta.decisions[0].session_id == "sess-w"
        [st] = delta.budgets
        assert st.spent_usd > 0 and st.spent_usd == pytest.approx(delta.totals.spend_usd)

        # an admin edit with no traffic still reaches the stream; a removal can only
        # be expressed by a fresh snapshot
        client.remove_budget(b.id)
        again = next(it)
        assert again.snapshot and not again.budgets and again.totals.requests == 1
        assert [x.served_model for x in again.decisions] == ["sim-claude-cheap"]
    finally:
        call.cancel()
    time.sleep(0.1)
    assert admin_daemon.ctx.stats.subscribers == 0  # the hub subscription was closed


def test_watch_adds_the_ledger_of_earlier_runs(tmp_path: Path, mem_keyring: MemoryKeyring) -> None:
    first = RunningDaemon(tmp_path)
    try:
        assert _anthropic(first, session="old").status_code == 200
    finally:
        first.stop()
    d = RunningDaemon(tmp_path)
    c = AdminClient.connect(d.daemon.data_dir)
    try:
        call = _watch(c)
        it = iter(call)
        snap = next(it)
        assert snap.totals.requests == 1 and [x.session_id for x in snap.decisions] == ["old"]
        assert snap.since < d.ctx.stats.started_at
        assert _anthropic(d, session="new").status_code == 200
        delta = next(it)
        assert delta.totals.requests == 2
        [m] = delta.by_model
        assert m.key == "sim-claude-cheap" and m.totals.requests == 2
        call.cancel()
        # a window that starts after the daemon did covers only this run
        now_call = _watch(c, since=time.time())
        assert next(iter(now_call)).totals.requests == 1
        now_call.cancel()
    finally:
        c.close()
        d.stop()


def test_rollups_after_traffic(client: AdminClient, admin_daemon: RunningDaemon) -> None:
    assert client.get_rollups(stats_pb2.RESOLUTION_MINUTE) == []
    for _ in range(2):
        assert _anthropic(admin_daemon).status_code == 200
    admin_daemon.ledger_rows()  # let the flows close
    for res in (stats_pb2.RESOLUTION_MINUTE, stats_pb2.RESOLUTION_HOUR, stats_pb2.RESOLUTION_DAY):
        series = client.get_rollups(res, since=time.time() - 2 * 86400)
        assert sum(r.totals.requests for r in series) == 2, res
        assert sum(r.totals.spend_usd for r in series) > 0
    with pytest.raises(AdminError) as ei:
        client.get_rollups(since=10.0, until=5.0)
    assert ei.value.kind == "invalid_argument"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_budget_and_teamkey_verbs(
    closed_daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    dd = ("--data-dir", str(closed_daemon.daemon.data_dir))
    code, out, _ = _run(capsys, "budget", "ls", *dd)
    assert code == 0 and "no budgets" in out
    code, out, _ = _run(
        capsys,
        "budget",
        "set",
        "--scope",
        "global",
        "--period",
        "monthly",
        "--soft",
        "5",
        "--hard",
        "10",
        "--tz",
        "Europe/Oslo",
        *dd,
    )
    assert code == 0 and "monthly budget for all traffic" in out and "Europe/Oslo" in out
    bid = out.split(":", 1)[0]
    code, out, _ = _run(capsys, "budget", "ls", *dd)
    assert code == 0 and bid in out and "$10.00" in out and "ok" in out
    code, _, err = _run(capsys, "budget", "set", "--scope", "global", "--period", "daily", *dd)
    assert code == 1 and "soft or a hard" in err

    code, out, err = _run(
        capsys,
        "teamkeys",
        "issue",
        "--name",
        "ci",
        "--owner",
        "ops",
        "--pools",
        "default,sim-gpt-cheap",
        "--expires",
        "30d",
        *dd,
    )
    key = out.strip()
    assert code == 0 and key.startswith("sk-sw-") and "shown only once" in err
    assert "default, sim-gpt-cheap" in err
    assert _chat(closed_daemon, key).status_code == 200
    code, out, _ = _run(capsys, "teamkeys", "ls", *dd)
    assert code == 0 and "ci" in out and "active" in out and key[6:] not in out
    kid = out.splitlines()[1].split()[0]
    code, out, _ = _run(capsys, "stats", "--json", *dd)
    stats = json.loads(out)
    assert code == 0 and [b["budget"]["id"] for b in stats["budgets"]] == [bid]
    code, out, _ = _run(capsys, "teamkeys", "revoke", kid, *dd)
    assert code == 0 and "revoked" in out
    assert _chat(closed_daemon, key).status_code == 401
    code, out, _ = _run(capsys, "teamkeys", "ls", "--all", *dd)
    assert "revoked" in out and key[6:] not in out
    code, _, err = _run(
        capsys, "teamkeys", "issue", "--name", "x", "--owner", "y", "--expires", "soon", *dd
    )
    assert code == 2 and "--expires" in err

    code, out, _ = _run(capsys, "budget", "rm", bid, *dd)
    assert code == 0 and "removed" in out
    code, out, _ = _run(capsys, "stats", "--json", *dd)
    assert json.loads(out)["budgets"] == []
    code, _, err = _run(capsys, "budget", "rm", bid, *dd)
    assert code == 1 and "no budget" in err
