"""Security (issue #7 item 5): browser requests refused unless allowed, binding
beyond loopback needs team keys and warns without TLS, HTTPS from a cert pair,
and no configured secret ever reaches the database, logs, exports, gRPC
replies or stderr."""

from __future__ import annotations

import datetime as dt
import inspect
import io
import logging
import secrets as pysecrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchman_daemon.admin import auth as admin_auth
from switchman_daemon.config import ConfigError
from switchman_daemon.ledger.export import export
from switchman_daemon.teamkeys import TeamKeys
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import (
    budgets_pb2,
    ledger_pb2,
    models_pb2,
    policy_pb2,
    providers_pb2,
    teamkeys_pb2,
)
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon
from tests.support.shapes import claude_code_turn

AH = {"anthropic-version": "2023-06-01", "x-api-key": "local"}
MSG = {"model": "sim-claude-cheap", "max_tokens": 8,
       "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "sim-gpt-cheap", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def allowing(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = RunningDaemon(tmp_path, overrides={"daemon": {
        "allowed_origins": ["http://localhost:3000", "HTTPS://Tools.Example.com:443/"]}})
    try:
        yield d
    finally:
        d.stop()


# ---- browser protection ----------------------------------------------------------------

def test_browser_requests_are_refused_in_the_client_format(daemon: RunningDaemon) -> None:
    evil = {"origin": "https://evil.example"}
    r = httpx.post(daemon.url + "/v1/messages", headers={**AH, **evil}, json=MSG, timeout=10)
    assert r.status_code == 403
    j = r.json()
    assert j["type"] == "error" and j["error"]["type"] == "permission_error"
    assert "evil.example" in j["error"]["message"] and "allowed_origins" in j["error"]["message"]
    assert j["request_id"] == r.headers["x-request-id"]

    for path, body in (("/v1/chat/completions", CHAT),
                       ("/v1/responses", {"model": "sim-gpt-cheap", "input": "hi"})):
        r = httpx.post(daemon.url + path, json=body, timeout=10, headers={
            "authorization": "Bearer k", "referer": "http://evil.example/page?q=1"})
        assert r.status_code == 403, path
        e = r.json()["error"]
        assert e["code"] == "permission_denied" and e["type"] == "invalid_request_error"
        assert "Referer" in e["message"]

    # provenance without a usable origin, preflights, GET routes and unknown paths
    for method, path, headers in (
            ("POST", "/v1/chat/completions", {"origin": "null"}),
            ("POST", "/v1/chat/completions", {"sec-fetch-site": "cross-site"}),
            ("OPTIONS", "/v1/messages", {**evil, "access-control-request-method": "POST"}),
            ("GET", "/v1/models", evil), ("GET", "/healthz", evil), ("GET", "/metrics", evil),
            ("GET", "/nope", evil)):
        r = httpx.request(method, daemon.url + path, headers=headers, json=CHAT, timeout=10)
        assert r.status_code == 403, (method, path, headers)
        assert "access-control-allow-origin" not in r.headers
    assert daemon.ledger_rows() == []  # refused before anything was routed or recorded


def test_dns_rebinding_host_is_refused_in_local_open_mode(daemon: RunningDaemon) -> None:
    r = httpx.post(daemon.url + "/v1/chat/completions", json=CHAT, timeout=10,
                   headers={"host": f"attacker.example:{daemon.port}"})
    assert r.status_code == 403 and "DNS rebinding" in r.json()["error"]["message"]
    for host in (f"localhost:{daemon.port}", f"127.0.0.1:{daemon.port}", f"[::1]:{daemon.port}",
                 "switchman.localhost"):
        r = httpx.get(daemon.url + "/healthz", headers={"host": host}, timeout=10)
        assert r.status_code == 200, host


def test_allowed_origin_passes_with_cors(allowing: RunningDaemon) -> None:
    ok = {"origin": "http://localhost:3000"}
    r = httpx.post(allowing.url + "/v1/messages", headers={**AH, **ok}, json=MSG, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-request-id" in r.headers["access-control-expose-headers"]
    pre = httpx.options(allowing.url + "/v1/chat/completions", timeout=10, headers={
        **ok, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    # normalised: scheme/host case and the default port do not matter; a Referer's path is ignored
    r = httpx.post(allowing.url + "/v1/chat/completions", json=CHAT, timeout=10,
                   headers={"referer": "https://tools.example.com/app/index.html"})
    assert r.status_code == 200
    with httpx.stream("POST", allowing.url + "/v1/chat/completions", timeout=10, headers=ok,
                      json={**CHAT, "stream": True}) as s:  # stream headers get CORS too
        assert s.status_code == 200 and s.headers["access-control-allow-origin"]
        s.read()
    # another port on the same host is another origin
    r = httpx.post(allowing.url + "/v1/messages", json=MSG, timeout=10,
                   headers={**AH, "origin": "http://localhost:3001"})
    assert r.status_code == 403
    # an allowed origin's host may also be named in Host (not only loopback names)
    r = httpx.get(allowing.url + "/healthz", headers={"host": "tools.example.com"}, timeout=10)
    assert r.status_code == 200


def test_claude_code_headers_pass(daemon: RunningDaemon) -> None:
    body, headers = claude_code_turn(target_kb=20)
    assert headers["anthropic-dangerous-direct-browser-access"] == "true"
    with httpx.stream("POST", daemon.url + "/v1/messages?beta=true", json=body,
                      headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert b"message_stop" in r.read()


# ---- binding beyond loopback and TLS ---------------------------------------------------

def test_non_loopback_requires_team_keys_and_warns_without_tls(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="local-open"):
        RunningDaemon(tmp_path / "a", host="0.0.0.0")
    caplog.set_level(logging.WARNING, logger="switchman.daemon")
    d = RunningDaemon(tmp_path / "b", overrides={"daemon": {"local_open": False}},
                      host="0.0.0.0")
    try:
        assert any("plain HTTP on non-loopback" in r.getMessage() for r in caplog.records)
        r = httpx.post(d.url + "/v1/messages", headers=AH, json=MSG, timeout=10)
        assert r.status_code == 401 and "team key" in r.json()["error"]["message"]
        _, key = d.ctx.teamkeys.issue("laptop", "alice")
        r = httpx.post(d.url + "/v1/messages", json=MSG, timeout=10,
                       headers={**AH, "x-api-key": key})
        assert r.status_code == 200
        # team-key mode does not pin Host to loopback (reverse proxies forward their own)
        r = httpx.post(d.url + "/v1/messages", json=MSG, timeout=10,
                       headers={**AH, "x-api-key": key, "host": "router.internal"})
        assert r.status_code == 200
    finally:
        d.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    x509 = pytest.importorskip(
        "cryptography.x509", reason="TLS test needs the 'cryptography' package")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_from_a_cert_pair(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    d = RunningDaemon(tmp_path, overrides={"daemon": {"tls_cert": str(cert),
                                                      "tls_key": str(key)}})
    try:
        url = f"https://127.0.0.1:{d.port}"
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(verify=trust, timeout=10) as c:
            assert c.get(url + "/healthz").json()["status"] == "ok"
            r = c.post(url + "/v1/messages", headers=AH, json=MSG)
            assert r.status_code == 200 and r.json()["type"] == "message"
        with pytest.raises(httpx.HTTPError):
            httpx.get(d.url + "/healthz", timeout=5)  # plain HTTP to the TLS port
    finally:
        d.stop()
    with pytest.raises(ConfigError, match="together"):
        RunningDaemon(tmp_path / "x", overrides={"daemon": {"tls_cert": str(cert)}})
    with pytest.raises(ConfigError, match="cannot load TLS"):
        RunningDaemon(tmp_path / "y", overrides={"daemon": {"tls_cert": str(key),
                                                            "tls_key": str(key)}})


# ---- secrets never leak ----------------------------------------------------------------

def test_team_keys_are_compared_in_constant_time() -> None:
    assert "hmac.compare_digest" in inspect.getsource(TeamKeys.verify)
    assert "hmac.compare_digest" in inspect.getsource(admin_auth.AdminInterceptor._authorised)
    assert "hmac.digest" in inspect.getsource(TeamKeys._hash)  # stored as HMAC, not plaintext


def test_no_secret_reaches_db_logs_exports_grpc_or_stderr(
        tmp_path: Path, mem_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    tag = pysecrets.token_hex(6)
    kr_key = f"sk-ant-api03-KRSECRET{tag}-abcdefghijklmnop"
    env_key = f"sk-proj-ENVSECRET{tag}-qrstuvwxyz012345"
    marker = f"BODYMARKER{tag}"
    mem_keyring.store[("switchman", "sim-anthropic")] = kr_key
    monkeypatch.setenv("SWITCHMAN_SCAN_OPENAI_KEY", env_key)
    d = RunningDaemon(tmp_path, overrides={
        "daemon": {"max_retries": 0},
        "providers": {
            "sim-anthropic": {"kind": "anthropic", "base_url": "sim",
                              "key": "keyring:sim-anthropic"},
            "sim-openai": {"kind": "openai", "base_url": "sim",
                           "key": "env:SWITCHMAN_SCAN_OPENAI_KEY"}}})
    data = d.daemon.data_dir
    client = AdminClient.connect(data)
    blobs: dict[str, bytes] = {}
    try:
        ctx = d.ctx
        # the resolved provider keys really are in use
        assert ctx.upstreams["sim-anthropic"].api_key() == kr_key
        assert ctx.upstreams["sim-openai"].api_key() == env_key
        issued = client.issue_team_key("ci", "alice")  # the one reply that shows a key
        team_key = issued.plaintext
        assert team_key.startswith("sk-sw-")
        forged = f"sk-sw-FORGED{tag}forgedforgedforgedforged"
        url = d.url

        def post(path: str, body: object, **headers: str) -> httpx.Response:
            return httpx.post(url + path, json=body, headers=headers, timeout=30)

        def msg(text: str, **kw: object) -> dict:
            return {"model": "sim-claude-cheap", "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{marker} {text}"}], **kw}

        def chat(text: str, **kw: object) -> dict:
            return {"model": "sim-gpt-cheap",
                    "messages": [{"role": "user", "content": f"{marker} {text}"}], **kw}

        sess = {"x-claude-code-session-id": f"sess-{tag}"}
        r0 = post("/v1/messages", msg("hello"), **{**AH, **sess, "x-api-key": team_key})
        assert r0.status_code == 200
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat("hi", stream=True),
                          headers={"authorization": f"Bearer {team_key}"}, timeout=30) as r:
            assert r.status_code == 200
            r.read()
        assert post("/v1/responses", {"model": "sim-gpt-cheap", "input": f"{marker} r"},
                    authorization=f"Bearer {team_key}").status_code == 200
        assert post("/v1/messages", msg("[[sim:error 401]]"), **AH).status_code == 401
        assert post("/v1/chat/completions", chat("[[sim:error 500]]")).status_code == 500
        assert post("/v1/messages", msg("[[sim:error 500]]", stream=True), **AH).status_code \
            == 500
        # translated path (anthropic client -> openai upstream) failing too
        assert post("/v1/messages", {**msg("[[sim:error 500]]"), "model": "sim-gpt-cheap"},
                    **AH).status_code == 500
        assert post("/v1/messages", msg("x"), **{**AH, "x-api-key": forged}).status_code == 401
        bad = httpx.post(url + "/v1/messages", content=b'{"model": "' + marker.encode(),
                         headers={**AH, "content-type": "application/json"}, timeout=30)
        assert bad.status_code == 400
        assert post("/v1/chat/completions", {"messages": marker}).status_code == 400
        assert post("/v1/messages", msg("x"), **AH, origin="https://evil.example").status_code \
            == 403

        # an unexpected exception deep in the request path (a driver bug)
        async def broken(*a: object, **k: object) -> None:
            raise ValueError("simulated driver bug")

        with monkeypatch.context() as mp:
            mp.setattr(type(ctx.upstreams["sim-anthropic"]), "post", broken)
            r = post("/v1/messages", msg("boom"), **{**AH, "x-api-key": team_key})
        assert r.status_code == 500 and "internal error" in r.json()["error"]["message"]
        assert any(rec.exc_info for rec in caplog.records)  # the traceback was logged

        # every read RPC the console or CLI makes
        ctx.ledger.flush()
        replies = [
            client.status(),
            client.call(client.providers.ListProviders,
                        providers_pb2.ListProvidersRequest()),
            client.call(client.models.ListModels,
                        models_pb2.ListModelsRequest(include_disabled=True)),
            client.call(client.models.ListPools, models_pb2.ListPoolsRequest()),
            client.get_policy(),
            client.call(client.policy.Preview, policy_pb2.PreviewRequest(
                requested_model="default", input_tokens=1000)),
            client.set_budget("global", "daily", soft_usd=5.0),
            client.call(client.budgets.ListBudgets,
                        budgets_pb2.ListBudgetsRequest()),
            client.call(client.teamkeys.List,
                        teamkeys_pb2.ListTeamKeysRequest(include_revoked=True)),
            client.call(client.ledger.ListRequests, ledger_pb2.ListRequestsRequest(
                page_size=100)),
            client.call(client.ledger.ListSessions, ledger_pb2.ListSessionsRequest()),
            client.call(client.ledger.GetSession, ledger_pb2.GetSessionRequest(
                session_id=f"sess-{tag}")),
            client.stats_snapshot(),
            client.test_key("sim-anthropic"),
            client.test_key("sim-openai"),
        ]
        replies += client.budget_status()
        replies += client.get_rollups()
        for i, rep in enumerate(replies):
            blobs[f"grpc reply {i} ({type(rep).__name__})"] = rep.SerializeToString()
        blobs["grpc ExportConfig"] = client.export_config().encode()
        assert len(client.call(client.ledger.ListRequests, ledger_pb2.ListRequestsRequest(
            page_size=100)).requests) >= 8

        for fmt in ("csv", "jsonl"):
            out = io.StringIO()
            assert export(ctx.ledger, fmt, out) >= 8  # type: ignore[arg-type]
            blobs[f"export {fmt}"] = out.getvalue().encode()
        blobs["metrics"] = httpx.get(url + "/metrics", timeout=10).content
        assert (data / "ledger.db-wal").exists()
        for p in sorted(data.iterdir()):
            if p.is_file():
                blobs[f"running: {p.name}"] = p.read_bytes()
    finally:
        client.close()
        d.stop()
    for p in sorted(data.iterdir()):  # after shutdown (WAL checkpointed into the db)
        if p.is_file():
            blobs[f"stopped: {p.name}"] = p.read_bytes()
    captured = capfd.readouterr()
    blobs["stderr"] = captured.err.encode()
    blobs["stdout"] = captured.out.encode()
    blobs["logs"] = caplog.text.encode()
    blobs["log records"] = "\n".join(
        f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records).encode()
    assert len(caplog.records) > 20 and "switchman.access" in caplog.text

    # the team key's row is there (by hash); the plaintext is not
    stored = b"".join(b for where, b in blobs.items() if "ledger.db" in where)
    assert issued.key.id.encode() in stored and marker.encode() not in stored
    needles = {"provider key (keyring)": kr_key, "provider key (env)": env_key,
               "team key": team_key, "forged team key": forged}
    for what, secret in needles.items():
        # also the distinctive middle, so a truncated or re-wrapped copy is caught too
        parts = {secret, secret[6:-6]}
        for where, blob in blobs.items():
            for part in parts:
                assert part.encode() not in blob, f"{what} found in {where}"
    for where in ("logs", "log records", "stderr"):
        assert marker.encode() not in blobs[where], f"request body logged in {where}"
