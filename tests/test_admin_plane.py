"""The admin plane over a real gRPC channel to a real daemon: auth, keys,
policy, models, config export/import, ledger and stats."""

from __future__ import annotations

import logging
import os
import stat
import tomllib

import grpc
import httpx
import pytest

from switchman_daemon.admin.server import load_or_create_token
from switchman_daemon.config import load_config
from switchman_daemon.managed_config import with_managed
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import (
    budgets_pb2,
    budgets_pb2_grpc,
    daemon_pb2,
    daemon_pb2_grpc,
    ledger_pb2,
    models_pb2,
    policy_pb2,
    providers_pb2,
)
from tests.support.admin import raw_channel
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon

SECRET = "sk-ant-api03-TESTSECRET-0123456789abcdef"


def _kind(e: grpc.RpcError) -> str:
    return dict(e.trailing_metadata() or ()).get("switchman-error-kind", "")


def test_calls_without_or_with_wrong_token_are_refused(admin_daemon: RunningDaemon) -> None:
    with raw_channel(admin_daemon) as ch:
        stub = daemon_pb2_grpc.DaemonServiceStub(ch)
        for md in (None, [("authorization", "Bearer wrong")], [("authorization", "garbage")]):
            with pytest.raises(grpc.RpcError) as ei:
                stub.Status(daemon_pb2.StatusRequest(), metadata=md, timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _kind(ei.value) == "unauthenticated"
        token = (admin_daemon.daemon.data_dir / "admin.token").read_text().strip()
        ok = stub.Status(daemon_pb2.StatusRequest(),
                         metadata=[("authorization", f"Bearer {token}")], timeout=10)
        assert ok.pid == os.getpid()


def test_admin_files_are_private_and_token_is_reused(admin_daemon: RunningDaemon) -> None:
    data = admin_daemon.daemon.data_dir
    for name in ("admin.token", "admin.sock"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert stat.S_ISSOCK((data / "admin.sock").stat().st_mode)
    assert load_or_create_token(data) == (data / "admin.token").read_text().strip()


def test_status_and_unregistered_service(client: AdminClient,
                                         admin_daemon: RunningDaemon) -> None:
    s = client.status()
    assert s.proxy_url.endswith(f":{admin_daemon.port}")
    assert set(s.providers) == {"sim-anthropic", "sim-openai"}
    assert s.models == 6 and s.local_open
    # every service is registered now; a method outside the access table is refused
    assert client.call(client.budgets.ListBudgets, budgets_pb2.ListBudgetsRequest())
    unknown = client.channel.unary_unary("/switchman.v1.BudgetService/Nope",
                                         request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=budgets_pb2.ListBudgetsReply.FromString)
    with pytest.raises(AdminError) as ei:
        client.call(unknown, budgets_pb2.ListBudgetsRequest())
    assert ei.value.kind == "unimplemented"
    assert budgets_pb2_grpc.BudgetServiceServicer


def test_policy_set_changes_the_router_live(client: AdminClient,
                                            admin_daemon: RunningDaemon) -> None:
    ctx = admin_daemon.ctx
    upstreams = dict(ctx.upstreams)
    p = client.set_objective(cost=0.9, quality=0.1)
    assert (p.objective.cost, p.objective.quality, p.objective.latency) == (0.9, 0.1, 0.2)
    assert ctx.config.routing.objective.cost == 0.9
    assert ctx.router.config.routing.objective.quality == 0.1
    # unchanged providers keep their upstream sessions
    assert all(ctx.upstreams[n] is up for n, up in upstreams.items())
    managed = tomllib.loads((admin_daemon.daemon.data_dir / "managed.toml").read_text())
    assert managed["routing"]["objective"] == {"cost": 0.9, "quality": 0.1}
    # persisted: the next start merges managed.toml last
    again = load_config(None, overrides=with_managed(admin_daemon.daemon.data_dir, None))
    assert again.routing.objective.cost == 0.9

    with pytest.raises(AdminError) as ei:
        client.set_objective(latency=1.5)
    assert ei.value.kind == "invalid_argument"
    assert ctx.config.routing.objective.latency == 0.2


def test_preview_and_models(client: AdminClient) -> None:
    r = client.call(client.policy.Preview, policy_pb2.PreviewRequest(
        requested_model="default", input_tokens=1000))
    assert r.how == "pool" and r.model.startswith("sim-")
    models = {m.name: m for m in client.list_models()}
    m = models["sim-claude-cheap"]
    assert m.prices.cache_read > 0 and m.prices.cache_write_1h > 0 and m.context_window > 0
    assert "default" in m.pools
    off = client.call(client.models.SetModelEnabled,
                      models_pb2.SetModelEnabledRequest(name="sim-claude-cheap", enabled=False))
    assert not off.enabled
    assert "sim-claude-cheap" not in {m.name for m in client.list_models()}
    pool = client.call(client.models.UpsertPool, models_pb2.UpsertPoolRequest(
        pool=models_pb2.Pool(name="cheap", models=["sim-gpt-cheap"])))
    assert list(pool.models) == ["sim-gpt-cheap"]
    with pytest.raises(AdminError) as ei:
        client.call(client.models.UpsertPool, models_pb2.UpsertPoolRequest(
            pool=models_pb2.Pool(name="bad", models=["nope"])))
    assert ei.value.kind == "invalid_argument"


def test_set_key_stores_in_keyring_and_never_leaks(
        client: AdminClient, admin_daemon: RunningDaemon, mem_keyring: MemoryKeyring,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    before = admin_daemon.ctx.upstreams["sim-openai"]
    replies = [client.set_key("sim-anthropic", SECRET)]
    assert mem_keyring.store[("switchman", "sim-anthropic")] == SECRET
    replies.append(client.call(client.providers.ListProviders,
                               providers_pb2.ListProvidersRequest()))
    replies.append(client.test_key("sim-anthropic"))
    replies.append(client.export_config())
    # rotate, then remove
    replies.append(client.set_key("sim-anthropic", SECRET + "-v2"))
    assert mem_keyring.store[("switchman", "sim-anthropic")] == SECRET + "-v2"

    st = replies[0].key
    assert st.set and st.source == providers_pb2.KEY_SOURCE_KEYRING
    assert st.ref == "keyring:sim-anthropic" and st.masked.endswith("cdef")
    assert admin_daemon.ctx.upstreams["sim-openai"] is before  # untouched provider
    managed = (admin_daemon.daemon.data_dir / "managed.toml").read_text()
    assert 'key = "keyring:sim-anthropic"' in managed
    for blob in [*(r if isinstance(r, str) else r.SerializeToString().decode("latin-1")
                   for r in replies), managed, caplog.text]:
        assert "TESTSECRET" not in blob

    gone = client.remove_key("sim-anthropic")
    assert not gone.key.set and ("switchman", "sim-anthropic") not in mem_keyring.store

    with pytest.raises(AdminError) as ei:
        client.set_key("sim-anthropic", "two words")
    assert ei.value.kind == "invalid_argument" and "two" not in ei.value.message
    with pytest.raises(AdminError) as ei:
        client.set_key("nope", SECRET)
    assert ei.value.kind == "not_found"


def test_test_key_against_the_simulator(client: AdminClient) -> None:
    for provider in ("sim-anthropic", "sim-openai"):
        r = client.test_key(provider)
        assert r.ok and r.http_status == 200, r.message
    with pytest.raises(AdminError) as ei:
        client.test_key("missing")
    assert ei.value.kind == "not_found"


def test_config_export_has_no_secrets_and_import_round_trips(
        client: AdminClient, admin_daemon: RunningDaemon) -> None:
    client.set_key("sim-openai", SECRET)
    text = client.export_config()
    assert "TESTSECRET" not in text
    data = tomllib.loads(text)
    assert data["providers"]["sim-openai"]["key"] == "keyring:sim-openai"
    assert list(client.import_config(text).changed) == []

    changed = text.replace("cost = 0.5", "cost = 0.25")
    assert changed != text
    dry = client.import_config(changed, dry_run=True)
    assert list(dry.changed) == ["routing"]
    assert admin_daemon.ctx.config.routing.objective.cost == 0.5
    r = client.import_config(changed)
    assert list(r.changed) == ["routing"] and not r.restart_required
    assert admin_daemon.ctx.config.routing.objective.cost == 0.25
    assert tomllib.loads(client.export_config()) == tomllib.loads(changed)

    for bad in ("not toml [", '[models.x]\nprovider = "nowhere"\n'):
        with pytest.raises(AdminError) as ei:
            client.import_config(bad)
        assert ei.value.kind == "invalid_argument"


def test_ledger_and_stats_see_proxied_requests(client: AdminClient,
                                               admin_daemon: RunningDaemon) -> None:
    for _ in range(2):
        r = httpx.post(f"{admin_daemon.url}/v1/messages", timeout=30, headers={
            "x-api-key": "local", "anthropic-version": "2023-06-01",
            "x-claude-code-session-id": "sess-1"}, json={
            "model": "sim-claude-cheap", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200, r.text
    admin_daemon.ctx.ledger.flush()

    page = client.call(client.ledger.ListRequests, ledger_pb2.ListRequestsRequest(page_size=1))
    assert len(page.requests) == 1 and page.next_page_token
    rec = page.requests[0]
    assert rec.served_model == "sim-claude-cheap" and rec.decision.model == "sim-claude-cheap"
    page2 = client.call(client.ledger.ListRequests, ledger_pb2.ListRequestsRequest(
        page_size=1, page_token=page.next_page_token))
    assert len(page2.requests) == 1 and page2.requests[0].id != rec.id
    assert not page2.next_page_token

    sessions = client.call(client.ledger.ListSessions, ledger_pb2.ListSessionsRequest())
    assert [s.session_id for s in sessions.sessions] == ["sess-1"]
    assert sessions.sessions[0].turns == 2
    detail = client.call(client.ledger.GetSession,
                         ledger_pb2.GetSessionRequest(session_id="sess-1"))
    assert len(detail.timeline) == 2 and detail.timeline[0].decision.reasons
    with pytest.raises(AdminError) as ei:
        client.call(client.ledger.GetSession, ledger_pb2.GetSessionRequest(session_id="x"))
    assert ei.value.kind == "not_found"

    snap = client.stats_snapshot()
    assert snap.snapshot and snap.totals.requests == 2
    assert [kt.key for kt in snap.by_model] == ["sim-claude-cheap"]
    assert len(snap.decisions) == 2
    assert client.status().sessions_active == 1
