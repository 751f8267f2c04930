"""Upstream fault matrix (issue #7 item 1).

A fault-injecting fake provider (tests/support/faulty_upstream.py) stands behind
two pool models; the healthy simulator is the last fallback. Every case must end
in a fallback success or a clean error in the client's own format, and its
ledger row must be closed with the right status, attempt count and usage.

Faults before the first byte reaches the client are retried and fallen back
from; faults after it end the stream with the format's own error event
(Anthropic ``event: error``, chat ``data: {"error":...}``, Responses
``response.failed``) and keep whatever usage had arrived.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support import faulty_upstream as fu
from tests.support.running import RunningApp, RunningDaemon

READ_TIMEOUT_S = 0.2
MAX_RETRIES = 1  # so each faulty model is tried twice
HEALTHY = "sim-claude-mid"
FORMATS = ("anthropic", "chat", "responses")
PATHS = {"anthropic": "/v1/messages", "chat": "/v1/chat/completions",
         "responses": "/v1/responses"}
# faulty models and the wire format each one's provider speaks
UPSTREAMS = {"solo-an": "anthropic", "solo-oa": "chat"}
# faults the relay must catch before anything reaches the client
PRE_BYTE = ("slow-headers", "429", "429-ra", "500", "502", "503", "529", "502-html",
            "reset-before", "html")
PRE_BYTE_STREAM = (*PRE_BYTE, "slow-body")
MID_STREAM = ("reset-mid", "truncated")


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class Rig:
    daemon: RunningDaemon
    upstream: RunningApp

    def calls(self) -> list[tuple[str, str, str]]:
        return self.upstream.app[fu.CALLS]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("faults")
    up = RunningApp(fu.make_app)
    cfg = tmp / "faults.toml"
    cfg.write_text(f"""
[daemon]
max_retries = {MAX_RETRIES}
retry_max_wait_s = 0.02
upstream_read_timeout_s = {READ_TIMEOUT_S}
upstream_connect_timeout_s = 1.0
[providers.faulty-an]
kind = "anthropic"
base_url = "{up.url}"
[providers.faulty-oa]
kind = "openai-compatible"
base_url = "{up.url}/v1"
[providers.dead]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{_dead_port()}/v1"
[models.fault-a]
provider = "faulty-an"
catalog = "claude-sonnet-4-5"
[models.fault-b]
provider = "faulty-oa"
catalog = "gpt-4o"
[models.solo-an]
provider = "faulty-an"
catalog = "claude-sonnet-4-5"
[models.solo-oa]
provider = "faulty-oa"
catalog = "gpt-4o"
[models.dead-model]
provider = "dead"
catalog = "gpt-4o"
[routing]
cooldown_failures = 0  # every case sees the full retry and fallback sequence
[routing.fallbacks]
fault-a = ["fault-b", "{HEALTHY}"]
solo-an = []
solo-oa = []
dead-model = ["{HEALTHY}"]
""")
    d = RunningDaemon(tmp, config_path=cfg)
    try:
        yield Rig(d, up)
    finally:
        d.stop()
        up.stop()


# -- client side -------------------------------------------------------------------


def _body(fmt: str, model: str, text: str, stream: bool) -> dict[str, Any]:
    if fmt == "anthropic":
        return {"model": model, "max_tokens": 64, "stream": stream,
                "messages": [{"role": "user", "content": text}]}
    if fmt == "chat":
        return {"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]}
    return {"model": model, "stream": stream, "store": False, "input": text}


def _events(raw: bytes) -> list[tuple[str | None, Any]]:
    """SSE events as (name, parsed data); unparseable data is kept as bytes."""
    out: list[tuple[str | None, Any]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        if not data:
            continue
        d = b"\n".join(data)
        try:
            out.append((name, orjson.loads(d)))
        except orjson.JSONDecodeError:
            out.append((name, d))
    return out


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    row: dict[str, Any]


def _send(rig: Rig, fmt: str, model: str, text: str, stream: bool) -> Answer:
    headers = {"content-type": "application/json"}
    if fmt == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    r = httpx.post(rig.daemon.url + PATHS[fmt], content=orjson.dumps(
        _body(fmt, model, text, stream)), headers=headers, timeout=15)
    rid = r.headers["x-request-id"]
    rows = [x for x in rig.daemon.ledger_rows() if x["id"] == rid]
    assert len(rows) == 1, f"expected one ledger row for {rid}, got {rows}"
    assert rows[0]["status"] != "open" and rows[0]["ended_at"] is not None
    return Answer(r.status_code, r.headers, r.content, rows[0])


def _assert_success(fmt: str, stream: bool, a: Answer) -> None:
    assert a.status == 200, a.body[:300]
    if not stream:
        j = orjson.loads(a.body)
        if fmt == "anthropic":
            assert j["type"] == "message" and j["content"]
        elif fmt == "chat":
            assert j["choices"][0]["message"]["content"]
        else:
            assert j["status"] == "completed" and j["output"]
        return
    evs = _events(a.body)
    assert all(not isinstance(d, bytes) or d == b"[DONE]" for _, d in evs), evs
    if fmt == "anthropic":
        assert evs[-1][0] == "message_stop" and all(n != "error" for n, _ in evs)
    elif fmt == "chat":
        assert evs[-1][1] == b"[DONE]"
        assert not any(isinstance(d, dict) and "error" in d for _, d in evs)
    else:
        assert evs[-1][0] == "response.completed"


def _assert_error_body(fmt: str, body: bytes) -> dict[str, Any]:
    j = orjson.loads(body)
    if fmt == "anthropic":
        assert j["type"] == "error" and j["error"]["type"] and j["error"]["message"]
        return j["error"]
    assert set(j["error"]) >= {"message", "type", "param", "code"} and j["error"]["message"]
    return j["error"]


def _assert_stream_error_event(fmt: str, a: Answer) -> None:
    """A 200 stream that ends with the format's own error event, and nothing after."""
    assert a.status == 200
    evs = _events(a.body)
    assert evs, a.body
    if fmt == "anthropic":
        name, d = evs[-1]
        assert name == "error" and d["type"] == "error" and d["error"]["message"], evs[-3:]
        assert all(n != "message_stop" for n, _ in evs)
    elif fmt == "chat":
        errs = [d for _, d in evs if isinstance(d, dict) and "error" in d]
        assert len(errs) == 1 and errs[0]["error"]["message"], evs[-3:]
        assert evs[-1][1] == b"[DONE]" or evs[-1][1] is errs[0]
    else:
        name, d = evs[-1]
        assert name == "response.failed", evs[-3:]
        assert d["response"]["status"] == "failed" and d["response"]["error"]["message"]


# -- 1. faults before the first byte: retried, then the healthy fallback serves ---------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", PRE_BYTE_STREAM)
def test_pre_byte_fault_falls_back(rig: Rig, kind: str, fmt: str, stream: bool) -> None:
    if kind == "slow-body" and not stream:
        pytest.skip("slow-body is a streaming fault")
    a = _send(rig, fmt, "fault-a", f"[[fault:{kind}]] hello", stream)
    _assert_success(fmt, stream, a)
    row = a.row
    assert row["status"] == "ok" and row["http_status"] == 200
    assert row["served_model"] == HEALTHY
    assert row["output_tokens"] > 0
    # fault-a twice, fault-b twice, then the fallback; timeouts may cut the
    # retries short (the relay's overall retry deadline)
    if kind.startswith("slow"):
        assert 3 <= row["attempts"] <= 5
    else:
        assert row["attempts"] == 2 * (MAX_RETRIES + 1) + 1
    assert "fell back" in row["decision"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_connect_refused_falls_back(rig: Rig, fmt: str) -> None:
    a = _send(rig, fmt, "dead-model", "hello", True)
    _assert_success(fmt, True, a)
    assert a.row["served_model"] == HEALTHY and a.row["attempts"] == MAX_RETRIES + 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_first_model_fails_second_faulty_model_serves(rig: Rig, fmt: str) -> None:
    # a fault scoped to fault-a: fault-b (another provider format) answers
    a = _send(rig, fmt, "fault-a", "[[fault:503@fault-a]] hi", True)
    _assert_success(fmt, True, a)
    assert a.row["served_model"] == "fault-b" and a.row["attempts"] == MAX_RETRIES + 2
    assert a.row["input_tokens"] + a.row["cache_read_tokens"] == fu.OA_PROMPT


# -- 2. no fallback left: a clean error in the client's format ---------------------


_STATUS = {"slow-headers": 504, "slow-body": 504, "reset-before": 502, "html": 502,
           "429": 429, "429-ra": 429, "500": 500, "502": 502, "503": 503, "529": 529,
           "502-html": 502}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", PRE_BYTE_STREAM)
def test_pre_byte_fault_without_fallback_is_a_clean_error(
        rig: Rig, kind: str, fmt: str, model: str, stream: bool) -> None:
    if kind == "slow-body" and not stream:
        pytest.skip("slow-body is a streaming fault")
    if kind.startswith("slow") and model != "solo-an":
        pytest.skip("timeouts do not depend on the provider format; keep the file fast")
    a = _send(rig, fmt, model, f"[[fault:{kind}]] hello", stream)
    expected = _STATUS[kind]
    if fmt == "responses" and expected == 429:
        expected = 503  # Codex exits on 429 but retries 5xx (see relay._final_error)
    assert a.status == expected, a.body[:300]
    assert a.headers["content-type"].startswith("application/json")
    _assert_error_body(fmt, a.body)
    if kind == "429-ra":
        assert a.headers["retry-after"] == "1"
    row = a.row
    assert row["status"] == "error" and row["http_status"] == expected and row["error"]
    assert row["attempts"] == MAX_RETRIES + 1
    assert row["input_tokens"] == row["output_tokens"] == 0 and row["cost_usd"] == 0


# -- 3. faults after the first byte: the stream's own error event, partial usage ------


@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", MID_STREAM)
def test_mid_stream_fault_ends_with_error_event(
        rig: Rig, kind: str, fmt: str, model: str) -> None:
    # fault-a has fallbacks, but none may be used once the client has bytes
    a = _send(rig, fmt, model, f"[[fault:{kind}]] hello", True)
    _assert_stream_error_event(fmt, a)
    row = a.row
    assert row["status"] == "error" and row["http_status"] == 200 and row["error"]
    assert row["attempts"] == 1 and row["served_model"] == model
    if UPSTREAMS[model] == "anthropic":
        # message_start carried the input side before the stream broke
        assert row["input_tokens"] == fu.AN_INPUT
        assert row["cache_read_tokens"] == fu.AN_CACHE_READ
        assert row["cost_usd"] > 0
    else:
        assert row["input_tokens"] == 0  # chat sends usage only at the end


@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_malformed_events_end_cleanly(rig: Rig, fmt: str, model: str) -> None:
    a = _send(rig, fmt, model, "[[fault:malformed]] hello", True)
    row = a.row
    if fmt == UPSTREAMS[model]:
        # same format: bytes pass through unparsed (no per-event JSON cost on
        # the hot path); the terminal event and usage are still seen
        assert a.status == 200 and row["status"] == "ok" and row["output_tokens"] > 0
    elif UPSTREAMS[model] == "anthropic":
        _assert_success(fmt, True, a)  # the Anthropic decoder skips bad events
        assert row["status"] == "ok" and row["output_tokens"] > 0
    else:
        _assert_stream_error_event(fmt, a)  # the chat decoder stops at a bad chunk
        assert row["status"] == "error" and "malformed" in row["error"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_provider_client_error_page_becomes_a_json_error(
        rig: Rig, fmt: str, model: str, stream: bool) -> None:
    # a 4xx is not retried; an HTML body must not reach the client as "JSON"
    a = _send(rig, fmt, model, "[[fault:400-html]] hello", stream)
    assert a.status == 400
    _assert_error_body(fmt, a.body)
    assert a.row["status"] == "error" and a.row["attempts"] == 1


@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_body_cut_short_is_retried(rig: Rig, fmt: str, model: str) -> None:
    for kind in ("reset-mid", "truncated"):
        a = _send(rig, fmt, model, f"[[fault:{kind}]] hello", False)
        assert a.status == 502, a.body
        _assert_error_body(fmt, a.body)
        assert a.row["status"] == "error" and a.row["attempts"] == MAX_RETRIES + 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("model", list(UPSTREAMS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_usage_still_succeeds(rig: Rig, fmt: str, model: str, stream: bool) -> None:
    a = _send(rig, fmt, model, "[[fault:no-usage]] hello", stream)
    _assert_success(fmt, stream, a)
    assert a.row["status"] == "ok" and a.row["attempts"] == 1
    assert a.row["input_tokens"] == a.row["output_tokens"] == 0


def test_daemon_still_healthy_after_the_matrix(rig: Rig) -> None:
    assert httpx.get(rig.daemon.url + "/healthz").json()["status"] == "ok"
    a = _send(rig, "chat", "solo-oa", "plain", True)
    _assert_success("chat", True, a)
    assert a.row["input_tokens"] + a.row["cache_read_tokens"] == fu.OA_PROMPT
