"""Bad input and upstream failures: every case gets a clean error in the client's
own format with the right status, and the ledger is never left half-written."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import zstandard

from tests.support.running import RunningDaemon


def _is_anthropic_error(body: dict, etype: str) -> None:
    assert body["type"] == "error"
    assert body["error"]["type"] == etype
    assert body["error"]["message"]


def _is_openai_error(body: dict) -> None:
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["message"]


def post(d: RunningDaemon, path: str, content: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(d.url + path, content=content, timeout=10,
                      headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages?beta=true", "/messages"])
def test_malformed_json_anthropic(daemon: RunningDaemon, path: str) -> None:
    r = post(daemon, path, b'{"model": "x", "messages": [', **{"anthropic-version": "2023-06-01"})
    assert r.status_code == 400
    _is_anthropic_error(r.json(), "invalid_request_error")
    assert "JSON" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/chat/completions"])
def test_malformed_json_openai(daemon: RunningDaemon, path: str) -> None:
    r = post(daemon, path, b"not json at all")
    assert r.status_code == 400
    _is_openai_error(r.json())


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/messages", {"messages": [], "max_tokens": 5}, "model"),
    ("/v1/messages", {"model": "sim-claude-mid", "max_tokens": 5}, "messages"),
    ("/v1/messages", {"model": "sim-claude-mid", "messages": []}, "max_tokens"),
    ("/v1/messages", {"model": "sim-claude-mid", "messages": [], "max_tokens": "5"},
     "max_tokens"),
    ("/v1/chat/completions", {"model": 5, "messages": []}, "model"),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": [], "stream": "yes"}, "stream"),
    ("/v1/responses", {"model": "gpt-5.5"}, "input"),
    ("/v1/responses", {"model": "gpt-5.5", "input": 7}, "input"),
])
def test_wrong_types_and_missing_fields(daemon: RunningDaemon, path: str, body: dict,
                                        param: str) -> None:
    r = post(daemon, path, json.dumps(body))
    assert r.status_code == 400
    j = r.json()
    if path.startswith("/v1/messages"):
        _is_anthropic_error(j, "invalid_request_error")
        assert param in j["error"]["message"]
    else:
        _is_openai_error(j)
        assert j["error"]["param"] == param
    assert daemon.ledger_rows() == []


def test_body_must_be_an_object(daemon: RunningDaemon) -> None:
    r = post(daemon, "/v1/chat/completions", b"[1, 2]")
    assert r.status_code == 400
    assert "JSON object" in r.json()["error"]["message"]


def test_unknown_model_both_formats(daemon: RunningDaemon) -> None:
    with pytest.raises(anthropic.NotFoundError) as ei:
        anthropic.Anthropic(base_url=daemon.url, api_key="k", max_retries=0).messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert ei.value.status_code == 404
    assert "no-such-model" in str(ei.value)
    with pytest.raises(openai.NotFoundError) as oi:
        openai.OpenAI(base_url=daemon.url + "/v1", api_key="k",
                      max_retries=0).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert oi.value.code == "model_not_found"
    assert daemon.ledger_rows() == []


def test_unsupported_path_and_method(daemon: RunningDaemon) -> None:
    r = httpx.get(daemon.url + "/v1/embeddings")
    assert r.status_code == 404
    _is_openai_error(r.json())
    r = httpx.get(daemon.url + "/v1/messages", headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 405
    _is_anthropic_error(r.json(), "invalid_request_error")


def test_probes_and_websocket_upgrade(daemon: RunningDaemon) -> None:
    assert httpx.head(daemon.url + "/").status_code == 200
    h = httpx.get(daemon.url + "/healthz").json()
    assert h["status"] == "ok"
    r = httpx.get(daemon.url + "/v1/responses", headers={
        "upgrade": "websocket", "connection": "Upgrade",
        "openai-beta": "responses_websockets=2026-02-06"})
    assert r.status_code == 426


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_compressed_request_bodies(daemon: RunningDaemon, encoding: str) -> None:
    body = json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "[[sim:reply compressed ok]]"}]}).encode()
    data = gzip.compress(body) if encoding == "gzip" else zstandard.compress(body)
    r = post(daemon, "/v1/chat/completions", data, **{"content-encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "compressed ok"


def test_corrupt_compressed_body(daemon: RunningDaemon) -> None:
    r = post(daemon, "/v1/chat/completions", b"\x1f\x8b garbage", **{"content-encoding": "gzip"})
    assert r.status_code == 400
    assert "gzip" in r.json()["error"]["message"]


@pytest.fixture
def small_limit(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = RunningDaemon(tmp_path, overrides={"daemon": {"max_body_mb": 0.01}})
    try:
        yield d
    finally:
        d.stop()


def test_body_over_limit(small_limit: RunningDaemon) -> None:
    big = json.dumps({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "x" * 50_000}]})
    r = post(small_limit, "/v1/chat/completions", big)
    assert r.status_code == 413
    _is_openai_error(r.json())
    r = post(small_limit, "/v1/messages", big, **{"anthropic-version": "2023-06-01"})
    assert r.status_code == 413
    _is_anthropic_error(r.json(), "request_too_large")
    # a small body that inflates past the limit is refused too
    bomb = gzip.compress(big.encode())
    assert len(bomb) < 10_000
    r = post(small_limit, "/v1/chat/completions", bomb, **{"content-encoding": "gzip"})
    assert r.status_code == 413


def test_upstream_client_error_passes_through_in_client_format(daemon: RunningDaemon) -> None:
    # five breakpoints: the (simulated) provider rejects it with a 400
    blocks = [{"type": "text", "text": f"block {i}", "cache_control": {"type": "ephemeral"}}
              for i in range(5)]
    c = anthropic.Anthropic(base_url=daemon.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as ei:
        c.messages.create(model="sim-claude-mid", max_tokens=10, system=blocks,
                          messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 400
    (row,) = daemon.ledger_rows()
    assert row["status"] == "error" and row["http_status"] == 400 and row["attempts"] == 1


def test_rate_limit_retried_before_first_byte(daemon: RunningDaemon) -> None:
    c = openai.OpenAI(base_url=daemon.url + "/v1", api_key="k", max_retries=0)
    out = c.chat.completions.create(model="sim-gpt-mid", messages=[
        {"role": "user", "content": "[[sim:fail-first 2 429]] [[sim:reply made it]]"}])
    assert out.choices[0].message.content == "made it"
    (row,) = daemon.ledger_rows()
    assert row["status"] == "ok" and row["attempts"] == 3
    assert row["served_model"] == "sim-gpt-mid"


def test_persistent_rate_limit_falls_back(daemon: RunningDaemon) -> None:
    c = openai.OpenAI(base_url=daemon.url + "/v1", api_key="k", max_retries=0)
    # the first three requests with this marker fail (all retries of the first
    # model), the fallback model then succeeds
    out = c.responses.create(model="sim-gpt-strong", store=False,
                             input="[[sim:fail-first 3 429]] [[sim:reply via fallback]]")
    assert out.output_text == "via fallback"
    (row,) = daemon.ledger_rows()
    assert row["status"] == "ok"
    assert row["served_model"] != "sim-gpt-strong"
    assert "fell back" in row["decision"]


def test_codex_never_sees_a_429(daemon: RunningDaemon) -> None:
    r = post(daemon, "/v1/responses", json.dumps({
        "model": "sim-gpt-strong", "input": "[[sim:error 429]]", "store": False}))
    assert r.status_code == 503  # Codex retries 5xx but exits on 429
    _is_openai_error(r.json())
    (row,) = daemon.ledger_rows()
    assert row["status"] == "error" and row["attempts"] >= 3


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def broken_upstreams(tmp_path: Path) -> Iterator[RunningDaemon]:
    cfg = tmp_path / "broken.toml"
    cfg.write_text(f"""
[daemon]
max_retries = 1
retry_max_wait_s = 0.05
upstream_read_timeout_s = 0.5
[providers.dead]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{_dead_port()}/v1"
[models.dead-model]
provider = "dead"
catalog = "gpt-4o"
[models.slow-model]
provider = "sim-anthropic"
upstream_id = "sim-claude-mid"
[routing.fallbacks]
dead-model = []
slow-model = []
""")
    d = RunningDaemon(tmp_path, config_path=cfg)
    try:
        yield d
    finally:
        d.stop()


def test_upstream_unreachable(broken_upstreams: RunningDaemon) -> None:
    r = post(broken_upstreams, "/v1/chat/completions", json.dumps(
        {"model": "dead-model", "messages": [{"role": "user", "content": "x"}]}))
    assert r.status_code == 502
    _is_openai_error(r.json())
    assert "unreachable" in r.json()["error"]["message"]
    (row,) = broken_upstreams.ledger_rows()
    assert row["status"] == "error" and row["http_status"] == 502 and row["attempts"] == 2


def test_upstream_timeout(broken_upstreams: RunningDaemon) -> None:
    r = post(broken_upstreams, "/v1/messages", json.dumps({
        "model": "slow-model", "max_tokens": 20,
        "messages": [{"role": "user", "content": "[[sim:slow 1500]]"}]}),
        **{"anthropic-version": "2023-06-01"})
    assert r.status_code == 504
    _is_anthropic_error(r.json(), "timeout_error")
    (row,) = broken_upstreams.ledger_rows()
    assert row["status"] == "error" and row["http_status"] == 504


def test_stream_dropped_mid_way_ends_with_error_event(daemon: RunningDaemon) -> None:
    c = anthropic.Anthropic(base_url=daemon.url, api_key="k", max_retries=0)
    # the SDK surfaces the stream's error event as an exception
    with pytest.raises(anthropic.APIError), c.messages.stream(
            model="sim-gpt-mid", max_tokens=200, messages=[
                {"role": "user", "content": "[[sim:drop]] tell me a long story"}]) as s:
        for _ in s.text_stream:
            pass
    (row,) = daemon.ledger_rows()
    assert row["status"] == "error" and row["http_status"] == 200
    assert row["error"]


def test_client_disconnect_cancels_and_is_recorded(daemon: RunningDaemon) -> None:
    body = json.dumps({"model": "sim-claude-mid", "max_tokens": 20, "stream": True,
                       "messages": [{"role": "user", "content": "[[sim:slow 3000]]"}]})
    with pytest.raises(httpx.ReadTimeout):
        post_t = httpx.Client(timeout=httpx.Timeout(5, read=0.3))
        post_t.post(daemon.url + "/v1/messages", content=body,
                    headers={"content-type": "application/json"})
    post_t.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        rows = daemon.ledger_rows()
        if rows and rows[0]["status"] != "open":
            break
        time.sleep(0.05)
    (row,) = daemon.ledger_rows()
    assert row["status"] == "cancelled"
    assert row["ended_at"] is not None and row["ended_at"] - row["started_at"] < 2.5
