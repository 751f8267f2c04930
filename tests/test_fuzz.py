"""Bad input at scale (issue #7 item 3): property-based tests with hypothesis.

(a) The three codecs' ``parse_request`` (and, when it accepts a body, every
    ``build_request`` translation) over arbitrary JSON-like dicts shaped like
    the real requests: nothing but ``ApiError`` escapes.
(b) The running daemon's ingress over thousands of malformed, oversized, deeply
    nested, wrongly typed and mis-encoded bodies on the three endpoints: never a
    5xx for bad input, every error in the client's own format, the daemon stays
    up and its memory stays bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchman_daemon.errors import ApiError
from switchman_daemon.protocol import codec
from tests.support.running import RunningDaemon

FORMATS = ("anthropic", "chat", "responses")
PATHS = {"anthropic": "/v1/messages", "chat": "/v1/chat/completions",
         "responses": "/v1/responses"}
LIMIT_MB = 0.25

# Field names of the three request formats, so generated dicts reach deep code
# paths instead of failing on the first missing key.
KEYS = ["model", "messages", "role", "content", "type", "text", "system", "tools", "tool_choice",
        "input", "instructions", "max_tokens", "max_output_tokens", "max_completion_tokens",
        "stream", "stream_options", "include_usage", "temperature", "top_p", "stop",
        "stop_sequences", "metadata", "thinking", "budget_tokens", "reasoning", "effort",
        "name", "description", "input_schema", "parameters", "function", "arguments",
        "tool_calls", "tool_call_id", "tool_use_id", "id", "call_id", "output", "source",
        "media_type", "data", "url", "image_url", "cache_control", "is_error", "signature",
        "thinking", "summary", "encrypted_content", "format", "response_format", "custom",
        "user", "store", "previous_response_id", "parallel_tool_calls", "n", "seed"]
VALUES = ["user", "assistant", "system", "developer", "tool", "function", "text", "image",
          "image_url", "input_text", "output_text", "input_image", "tool_use", "tool_result",
          "function_call", "function_call_output", "custom_tool_call", "message", "thinking",
          "redacted_thinking", "reasoning", "ephemeral", "auto", "any", "none", "required",
          "base64", "image/png", "sim-gpt-mid", "sim-claude-mid", "gpt-4o", ""]

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(VALUES) | st.text(max_size=30))
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(VALUES) | json_like},
    optional={"content": json_like, "tool_calls": json_like, "tool_call_id": json_like,
              "type": st.sampled_from(VALUES), "name": json_like},
)
request_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["sim-gpt-mid", "sim-claude-mid"]) | json_like},
    optional={"messages": st.lists(message | json_like, max_size=4) | json_like,
              "input": st.lists(message | json_like, max_size=4) | json_like,
              "system": json_like, "tools": json_like, "tool_choice": json_like,
              "max_tokens": json_like, "stream": json_like, "thinking": json_like,
              "reasoning": json_like, "instructions": json_like, "stop": json_like},
)


# -- (a) codecs ----------------------------------------------------------------------


def _translate_all(req: Any) -> None:
    codec("anthropic").build_request(req, "m", stream=req.stream)
    codec("chat").build_request(req, "m", stream=req.stream, max_tokens_field="max_tokens")
    codec("responses").build_request(req, "m", stream=req.stream)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=request_like | st.dictionaries(st.sampled_from(KEYS), json_like, max_size=8))
def test_parse_request_raises_only_api_error(fmt: str, body: dict[str, Any]) -> None:
    try:
        req = codec(fmt).parse_request(body)
    except ApiError:
        return
    with contextlib.suppress(ApiError):
        _translate_all(req)


# -- (b) the running daemon's ingress ---------------------------------------------


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    d = RunningDaemon(tmp_path_factory.mktemp("fuzz"),
                      overrides={"daemon": {"max_body_mb": LIMIT_MB, "max_retries": 0}})
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def client(fuzz_daemon: RunningDaemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_daemon.url, timeout=10) as c:
        yield c


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _bad_utf8(raw: bytes, pos: int) -> bytes:
    i = pos % (len(raw) + 1)
    return raw[:i] + b"\xff\xfe\xc3" + raw[i:]


@st.composite
def raw_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """(body bytes, extra headers): every way a request body can be wrong."""
    kind = draw(st.sampled_from([
        "json", "json", "json", "binary", "bad-utf8", "nested", "nested-in-messages",
        "oversized", "gzip-garbage", "gzip-truncated", "zstd-garbage", "zstd-bomb",
        "gzip-bomb", "unknown-encoding", "truncated-json", "scalar"]))
    body = orjson.dumps(draw(request_like), option=orjson.OPT_NON_STR_KEYS)
    if kind == "json":
        return body, {}
    if kind == "binary":
        return draw(st.binary(max_size=300)), {}
    if kind == "bad-utf8":
        return _bad_utf8(body, draw(st.integers(0, 10_000))), {}
    if kind == "nested":
        return _nested(draw(st.sampled_from([100, 1_100, 50_000])),
                       draw(st.sampled_from(["list", "dict"]))), {}
    if kind == "nested-in-messages":
        # <= 900: past ~970 list levels the router's prefix walk recurses out (xfail below)
        deep = _nested(draw(st.integers(50, 900)), draw(st.sampled_from(["list", "dict"])))
        return (b'{"model":"sim-gpt-mid","max_tokens":5,"messages":[{"role":"user","content":'
                + deep + b"}]}"), {}
    if kind == "oversized":
        pad = b"x" * int(LIMIT_MB * 1024 * 1024 + draw(st.integers(1, 50_000)))
        return b'{"model":"sim-gpt-mid","messages":[],"pad":"' + pad + b'"}', {}
    if kind == "gzip-garbage":
        return b"\x1f\x8b" + draw(st.binary(max_size=200)), {"content-encoding": "gzip"}
    if kind == "gzip-truncated":
        z = gzip.compress(body)
        return z[: draw(st.integers(0, max(0, len(z) - 1)))], {"content-encoding": "gzip"}
    if kind == "zstd-garbage":
        return draw(st.binary(max_size=200)), {"content-encoding": "zstd"}
    if kind == "zstd-bomb":  # ~2 KB that inflates to 64 MiB
        return _ZSTD_BOMB, {"content-encoding": "zstd"}
    if kind == "gzip-bomb":
        return _GZIP_BOMB, {"content-encoding": "gzip"}
    if kind == "unknown-encoding":
        return body, {"content-encoding": draw(st.sampled_from(["br2", "compress", "x,y"]))}
    if kind == "truncated-json":
        return body[: draw(st.integers(0, max(0, len(body) - 1)))], {}
    return draw(st.sampled_from([b"1", b'"s"', b"null", b"[]", b"true", b""])), {}


_ZSTD_BOMB = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
_GZIP_BOMB = gzip.compress(b"\0" * (16 << 20), 9)


def _check(fmt: str, r: httpx.Response) -> None:
    # 5xx is never right for a bad body; a valid one may reach the simulator
    assert r.status_code < 500, (r.status_code, r.content[:300])
    if r.status_code == 200:
        return
    j = r.json()
    if fmt == "anthropic":
        assert j["type"] == "error", j
        assert isinstance(j["error"]["type"], str) and j["error"]["message"], j
    else:
        assert set(j["error"]) >= {"message", "type", "param", "code"}, j
        assert j["error"]["message"]


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=450, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(case=raw_bodies())
def test_ingress_answers_bad_bodies_in_the_client_format(
        client: httpx.Client, fmt: str, case: tuple[bytes, dict[str, str]]) -> None:
    # Hypothesis seeds the global `random` before every example, and the
    # in-process daemon draws flow ids from it: without a fresh seed every
    # example's first request gets the same id (and the ledger rejects it).
    random.seed(os.urandom(16))
    body, headers = case
    h = {"content-type": "application/json", **headers}
    if fmt == "anthropic":
        h["anthropic-version"] = "2023-06-01"
    _check(fmt, client.post(PATHS[fmt], content=body, headers=h))


@pytest.mark.parametrize("fmt", FORMATS)
def test_list_nested_past_python_recursion_limit_is_a_4xx(client: httpx.Client, fmt: str) -> None:
    key = b'"input"' if fmt == "responses" else b'"messages"'
    body = (b'{"model":"sim-gpt-mid","max_tokens":5,' + key + b':[{"role":"user","content":'
            + _nested(1_020, "list") + b"}]}")
    r = client.post(PATHS[fmt], content=body, headers={"content-type": "application/json"})
    _check(fmt, r)


def test_daemon_up_and_memory_bounded_after_the_fuzzing(
        fuzz_daemon: RunningDaemon, client: httpx.Client) -> None:
    """Runs after the fuzz tests (file order): the same daemon is healthy, and
    another burst of the worst bodies does not grow the process."""
    assert client.get("/healthz").json()["status"] == "ok"
    worst = [(_ZSTD_BOMB, {"content-encoding": "zstd"}),
             (_GZIP_BOMB, {"content-encoding": "gzip"}),
             (_nested(50_000, "list"), {}),
             (b'{"model":"sim-gpt-mid","messages":"' + b"x" * 300_000 + b'"}', {})]
    for _ in range(5):  # warm up allocator pools
        for body, h in worst:
            client.post("/v1/chat/completions", content=body, headers=h)
    before = _rss_kib()
    for _ in range(60):
        for body, h in worst:
            r = client.post("/v1/chat/completions", content=body, headers=h)
            _check("chat", r)
            assert r.status_code in (400, 413)
    grown_mib = (_rss_kib() - before) / 1024
    assert grown_mib < 32, f"RSS grew {grown_mib:.1f} MiB over 240 hostile requests"
    rows = fuzz_daemon.ledger_rows()
    assert all(r["status"] != "open" for r in rows)
