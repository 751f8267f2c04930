"""Observability (issue #7 item 7): Prometheus /metrics on the proxy port and
structured JSON logs whose request ids match the x-request-id header."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchman_daemon.cli import build_parser
from switchman_daemon.logs import JsonFormatter, TextFormatter
from switchman_daemon.metrics import CONTENT_TYPE, LATENCY_BUCKETS, Metrics
from switchman_shared.config_schema import Config
from tests.support.running import RunningDaemon

AH = {"anthropic-version": "2023-06-01", "x-api-key": "local"}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_exposition(text: str) -> tuple[dict[str, str], Samples]:
    """A tiny Prometheus text-format (0.0.4) parser: (family -> type, name -> samples).
    Fails on any line that is neither a comment nor a well-formed sample."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name, labels_s, value = m.groups()
        labels: dict[str, str] = {}
        if labels_s:
            pos = 0
            for lm in _LABEL.finditer(labels_s):
                assert lm.start() == pos, f"bad labels: {labels_s!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            assert pos == len(labels_s), f"bad labels: {labels_s!r}"
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert family in types or name in types, f"sample before its TYPE: {line!r}"
        samples.setdefault(name, []).append((labels, float(value)))
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    got = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(got) == 1, (name, labels, samples.get(name))
    return got[0]


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[RunningDaemon]:
    d = RunningDaemon(tmp_path, overrides={"daemon": {"max_retries": 0}})
    try:
        yield d
    finally:
        d.stop()


def _traffic(d: RunningDaemon) -> None:
    system = "You are a careful coding agent. " * 400  # past the cache minimum
    for i in range(3):
        r = httpx.post(d.url + "/v1/messages", headers=AH, timeout=30, json={
            "model": "sim-claude-cheap", "max_tokens": 16,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": f"turn {i}"}]})
        assert r.status_code == 200, r.text
    for _ in range(2):
        with httpx.stream("POST", d.url + "/v1/chat/completions", timeout=30, json={
                "model": "sim-gpt-cheap", "stream": True,
                "messages": [{"role": "user", "content": "hello"}]}) as r:
            assert r.status_code == 200
            r.read()
    r = httpx.post(d.url + "/v1/chat/completions", timeout=30, json={
        "model": "sim-gpt-cheap", "messages": [{"role": "user", "content": "[[sim:error 500]]"}]})
    assert r.status_code == 500
    r = httpx.post(d.url + "/v1/messages", headers=AH, timeout=30, json={"model": "x"})
    assert r.status_code == 400  # refused before routing
    r = httpx.post(d.url + "/v1/messages", timeout=30, headers={
        **AH, "x-api-key": "sk-sw-forgedforgedforgedforgedforgedforged00"}, json={
        "model": "sim-claude-cheap", "max_tokens": 4, "messages": [
            {"role": "user", "content": "x"}]})
    assert r.status_code == 401


def test_metrics_after_traffic(quick: RunningDaemon) -> None:
    _traffic(quick)
    rows = quick.ledger_rows()
    r = httpx.get(quick.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == CONTENT_TYPE
    types, s = parse_exposition(r.text)
    assert types["switchman_requests_total"] == "counter"
    assert types["switchman_request_latency_seconds"] == "histogram"
    assert types["switchman_cache_hit_ratio"] == "gauge"

    req = "switchman_requests_total"
    assert value(s, req, client_format="anthropic", served_model="sim-claude-cheap",
                 status="200") == 3
    assert value(s, req, client_format="chat", served_model="sim-gpt-cheap", status="200") == 2
    assert value(s, req, client_format="chat", served_model="sim-gpt-cheap", status="500") == 1
    assert value(s, req, client_format="anthropic", served_model="none", status="400") == 1
    assert value(s, req, client_format="anthropic", served_model="none", status="401") == 1
    assert sum(v for _, v in s[req]) == 8
    assert value(s, "switchman_errors_total", kind="api_error") == 1
    assert value(s, "switchman_errors_total", kind="invalid_request") == 1
    assert value(s, "switchman_errors_total", kind="authentication") == 1
    assert value(s, "switchman_requests_in_flight") == 0

    # tokens and spend agree with the ledger
    for model in ("sim-claude-cheap", "sim-gpt-cheap"):
        mine = [row for row in rows if row["served_model"] == model]
        assert value(s, "switchman_tokens_total", model=model, kind="input") == sum(
            row["input_tokens"] for row in mine)
        assert value(s, "switchman_tokens_total", model=model, kind="output") == sum(
            row["output_tokens"] for row in mine)
        assert value(s, "switchman_spend_usd_total", model=model) == pytest.approx(
            sum(row["cost_usd"] for row in mine))
    assert value(s, "switchman_baseline_usd_total") == pytest.approx(
        sum(row["baseline_cost_usd"] or 0.0 for row in rows))
    hit = value(s, "switchman_cache_hit_ratio", model="sim-claude-cheap")
    assert 0 < hit < 1  # turns 2 and 3 read the system prompt from the cache

    # histograms: cumulative, monotone, +Inf == count
    for fam, model, n in (("switchman_request_latency_seconds", "sim-claude-cheap", 3),
                          ("switchman_request_latency_seconds", "sim-gpt-cheap", 3),
                          ("switchman_ttfb_seconds", "sim-claude-cheap", 3),
                          ("switchman_ttfb_seconds", "sim-gpt-cheap", 2)):
        buckets = [(lab["le"], v) for lab, v in s[fam + "_bucket"]
                   if lab["served_model"] == model]
        les = [float(le) for le, _ in buckets]
        counts = [v for _, v in buckets]
        assert les == sorted(les) and les[-1] == float("inf")
        assert counts == sorted(counts), (fam, counts)
        assert counts[-1] == value(s, fam + "_count", served_model=model) == n
        assert value(s, fam + "_sum", served_model=model) > 0
    lat = [float(lab["le"]) for lab, _ in s["switchman_request_latency_seconds_bucket"]
           if lab["served_model"] == "sim-claude-cheap"]
    assert lat[:-1] == list(LATENCY_BUCKETS)


def test_metrics_needs_no_team_key_but_honours_origin(tmp_path: Path) -> None:
    d = RunningDaemon(tmp_path, overrides={"daemon": {"local_open": False}})
    try:
        assert httpx.get(d.url + "/metrics", timeout=10).status_code == 200
        r = httpx.get(d.url + "/metrics", headers={"origin": "http://evil.example"}, timeout=10)
        assert r.status_code == 403
    finally:
        d.stop()


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.rejected('we"ird\\fmt\n', 400, "invalid_request")
    _, s = parse_exposition(m.render().decode())
    (labels, v), = s["switchman_requests_total"]
    assert labels["client_format"] == 'we\\"ird\\\\fmt\\n' and v == 1


def test_hot_path_costs_microseconds() -> None:
    from switchman_daemon.proxy.flow import Flow
    from switchman_daemon.routing.signals import Signals

    f = Flow(client_format="chat", signals=Signals.__new__(Signals))
    f.served_model, f.status, f.http_status = "m", "ok", 200
    f.latency_ms, f.ttfb_ms, f.cost_usd = 120.0, 30.0, 0.001
    m = Metrics()
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        m.flow_opened(f)
        m.flow_closed(f)
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} us per flow"  # typically ~2 us


# ---- structured logs -------------------------------------------------------------------

@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter())
    lg = logging.getLogger("switchman")
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line]


def test_json_logs_carry_the_request_id(quick: RunningDaemon, json_log: io.StringIO,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = "BODYMARKER-7f3a9c"
    r = httpx.post(quick.url + "/v1/messages", headers=AH, timeout=30, json={
        "model": "claude-opus-4-8", "max_tokens": 8,
        "messages": [{"role": "user", "content": marker}]})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    bad = httpx.post(quick.url + "/v1/chat/completions", timeout=30, json={"model": "m"})
    assert bad.status_code == 400 and bad.headers["x-request-id"]

    # a log record written deep inside a request carries that request's id
    original = quick.ctx.router.choose

    def choose(*a: object, **k: object) -> object:
        logging.getLogger("switchman.routing").warning("deciding")
        return original(*a, **k)

    monkeypatch.setattr(quick.ctx.router, "choose", choose)
    third = httpx.post(quick.url + "/v1/messages", headers=AH, timeout=30, json={
        "model": "sim-claude-cheap", "max_tokens": 8,
        "messages": [{"role": "user", "content": "x"}]})
    assert third.status_code == 200
    time.sleep(0.05)  # the access line is written as the handler returns

    lines = _lines(json_log)
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    access = {line["request_id"]: line for line in lines if line["logger"] == "switchman.access"}
    a = access[rid]
    assert a["level"] == "INFO" and a["status"] == 200 and a["client_format"] == "anthropic"
    assert a["requested_model"] == "claude-opus-4-8" and a["served_model"].startswith("sim-")
    assert a["latency_ms"] > 0 and a["output_tokens"] > 0 and a["cost_usd"] > 0
    assert f"claude-opus-4-8->{a['served_model']}" in a["msg"]
    assert access[bad.headers["x-request-id"]]["status"] == 400
    (deciding,) = [line for line in lines if line["msg"] == "deciding"]
    assert deciding["request_id"] == third.headers["x-request-id"]
    assert marker not in json_log.getvalue()  # bodies are not logged


def test_text_format_tags_lines_with_the_request_id() -> None:
    from switchman_daemon.logs import request_id

    rec = logging.LogRecord("switchman.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    fmt = TextFormatter()
    assert fmt.format(rec).endswith("switchman.x: hello w")
    tok = request_id.set("0123456789abcdef0123")
    try:
        assert fmt.format(rec).endswith("switchman.x [0123456789ab]: hello w")
    finally:
        request_id.reset(tok)


def test_log_format_flag_and_config() -> None:
    args = build_parser().parse_args(["daemon", "--log-format", "json"])
    assert args.log_format == "json"
    assert build_parser().parse_args(["daemon"]).log_format is None
    assert Config.model_validate({"daemon": {"log_format": "json"}}).daemon.log_format == "json"
    with pytest.raises(ValueError):
        Config.model_validate({"daemon": {"log_format": "xml"}})
