"""Cache keep-alive wired into a real daemon: remembered sessions, refreshes
sent upstream with one output token, billed in the ledger, told to the
router's cache tracker. Checks run through ``run_once(now)`` on the tracker's
clock, so nothing waits for a real TTL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from switchman_daemon.keepalive_runner import KeepAliveRunner, refresh_body
from switchman_daemon.pricing import cost_usd
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.routing.keepalive import KeepAlive, Verdict
from switchman_shared.admin_client import AdminClient
from tests.support.running import RunningApp, RunningDaemon

PREFIX = 3000  # tokens the fake provider says it caches
SEEN: web.AppKey[list[tuple[dict[str, Any], dict[str, str]]]] = web.AppKey("seen", list)


def _fake_app() -> web.Application:
    """An Anthropic Messages upstream: a normal turn writes the prefix to the
    cache, a one-token replay reads it."""
    app = web.Application()
    app[SEEN] = []

    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        request.app[SEEN].append((body, dict(request.headers)))
        refresh = body.get("max_tokens") == 1
        usage = {"input_tokens": 12, "output_tokens": 1 if refresh else 7,
                 "cache_read_input_tokens": PREFIX if refresh else 0,
                 "cache_creation_input_tokens": 0 if refresh else PREFIX}
        return web.json_response({
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "max_tokens" if refresh else "end_turn", "stop_sequence": None,
            "usage": usage})

    app.router.add_post("/v1/messages", messages)
    return app


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningApp]:
    up = RunningApp(_fake_app)
    try:
        yield up
    finally:
        up.stop()


def _daemon(tmp: Path, up: RunningApp, keepalive: bool | None) -> RunningDaemon:
    cfg = tmp / "switchman.toml"
    ka = "" if keepalive is None else f"keepalive = {str(keepalive).lower()}\n"
    cfg.write_text(f"""
[daemon]
max_retries = 0
[providers.fake-an]
kind = "anthropic"
base_url = "{up.url}"
[models.opus]
provider = "fake-an"
catalog = "claude-opus-4-8"
[pools.an]
models = ["opus"]
[routing]
{ka}""")
    return RunningDaemon(tmp / "data", config_path=cfg)


def _turn(d: RunningDaemon, session: str, text: str = "fix the bug") -> None:
    body = {"model": "an", "max_tokens": 512, "stream": False,
            "system": [{"type": "text", "text": "You are a coding agent. " * 400,
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"{d.url}/v1/messages", json=body, timeout=10,
                      headers={"x-claude-code-session-id": session,
                               "anthropic-beta": "context-1m-2025-08-07",
                               "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    d.ledger_rows()  # the flow has closed


class _Policy(KeepAlive):
    """The real gap model, a fixed answer."""

    def __init__(self, answer: bool) -> None:
        super().__init__()
        self.answer = answer
        self.asked: list[str] = []

    def decide(self, sid: str, m: Any, tokens: int, **kw: Any) -> Verdict:
        self.asked.append(sid)
        return Verdict(self.answer, 1.0 if self.answer else 0.0, 0.0, 0.0, "test")


def _runner(d: RunningDaemon) -> KeepAliveRunner:
    ka = d.daemon.keepalive
    assert ka is not None and ka in d.ctx.addons
    return ka


def _run(d: RunningDaemon, now: float) -> list[tuple[str, Verdict]]:
    return d.lt.run(_runner(d).run_once(now))


def _sent(up: RunningApp) -> list[tuple[dict[str, Any], dict[str, str]]]:
    return up.app[SEEN]


def test_disabled_by_default_keeps_nothing_and_sends_nothing(
        tmp_path: Path, upstream: RunningApp) -> None:
    d = _daemon(tmp_path, upstream, None)
    try:
        assert d.config.routing.keepalive is False
        ka = _runner(d)
        ka.policy = _Policy(True)
        before = len(_sent(upstream))
        _turn(d, "s-off")
        assert len(ka) == 0
        assert d.lt.run(ka.run_once(ka.clock() + 290.0)) == []
        assert len(_sent(upstream)) == before + 1  # only the client's own request
        assert [r["request_role"] for r in d.ledger_rows()] == ["main"]
    finally:
        d.stop()


def test_refresh_reaches_upstream_is_billed_and_moves_the_tracker(
        tmp_path: Path, upstream: RunningApp) -> None:
    d = _daemon(tmp_path, upstream, True)
    try:
        ka = _runner(d)
        ka.policy = policy = _Policy(True)
        _turn(d, "s-on")
        assert list(ka.kept) == ["s-on"]
        kept = ka.kept["s-on"]
        assert "x-api-key" not in kept.headers
        original, _ = _sent(upstream)[-1]
        tracker = d.ctx.router.tracker
        n = len(_sent(upstream))

        # not due yet: no question, nothing sent
        assert _run(d, kept.expires_at - 200.0) == []
        assert len(_sent(upstream)) == n

        now = kept.expires_at - 20.0  # inside the check's lead
        before = tracker.expires_in("s-on", "opus", now=now)
        assert 0 < before <= 20.0
        verdicts = _run(d, now)
        assert [(s, v.refresh) for s, v in verdicts] == [("s-on", True)]
        assert policy.asked == ["s-on"]

        sent = _sent(upstream)
        assert len(sent) == n + 1
        body, headers = sent[-1]
        assert body["max_tokens"] == 1 and body["stream"] is False
        for k in ("model", "system", "messages"):
            assert body[k] == original[k]  # the same prefix
        assert headers.get("anthropic-beta") == "context-1m-2025-08-07"

        rows = d.ledger_rows()
        ka_rows = [r for r in rows if r["request_role"] == "keepalive"]
        assert len(ka_rows) == 1
        row = ka_rows[0]
        assert row["client"] == "switchman-keepalive" and row["status"] == "ok"
        assert row["session_id"] == "s-on" and row["served_model"] == "opus"
        assert row["cache_read_tokens"] == PREFIX and row["output_tokens"] == 1
        model = d.ctx.registry.models["opus"]
        want = cost_usd(Usage(input_tokens=12, output_tokens=1, cache_read_tokens=PREFIX),
                        model.prices)
        assert want > 0 and row["cost_usd"] == pytest.approx(want)

        # the tracker now believes the cache lives a full TTL from the refresh
        assert tracker.expires_in("s-on", "opus", now=now) == pytest.approx(300.0)
        assert ka.kept["s-on"].expires_at == pytest.approx(now + 300.0)
        assert ka.refreshes == 1
    finally:
        d.stop()


def test_policy_no_sends_nothing_and_forgets(tmp_path: Path, upstream: RunningApp) -> None:
    d = _daemon(tmp_path, upstream, True)
    try:
        ka = _runner(d)
        ka.policy = _Policy(False)
        _turn(d, "s-no")
        n = len(_sent(upstream))
        verdicts = _run(d, ka.kept["s-no"].expires_at - 20.0)
        assert [(s, v.refresh) for s, v in verdicts] == [("s-no", False)]
        assert len(_sent(upstream)) == n
        assert len(ka) == 0 and ka.declined == 1
        assert all(r["request_role"] != "keepalive" for r in d.ledger_rows())
    finally:
        d.stop()


def test_the_real_policy_declines_a_session_without_history(
        tmp_path: Path, upstream: RunningApp) -> None:
    d = _daemon(tmp_path, upstream, True)
    try:
        ka = _runner(d)
        _turn(d, "s-new")
        n = len(_sent(upstream))
        verdicts = _run(d, ka.kept["s-new"].expires_at - 20.0)
        assert len(verdicts) == 1 and not verdicts[0][1].refresh  # no evidence: no refresh
        assert len(_sent(upstream)) == n
    finally:
        d.stop()


def test_memory_cap_and_expiry(tmp_path: Path, upstream: RunningApp) -> None:
    d = _daemon(tmp_path, upstream, True)
    try:
        ka = _runner(d)
        ka.max_sessions = 3
        ka.policy = _Policy(True)
        for i in range(5):
            _turn(d, f"s{i}")
        assert list(ka.kept) == ["s2", "s3", "s4"]  # least recently used went first
        n = len(_sent(upstream))
        # past every expiry: all cold, all dropped, nothing sent
        assert _run(d, max(e.expires_at for e in ka.kept.values()) + 1.0) == []
        assert len(ka) == 0 and len(_sent(upstream)) == n
        # turning it off at runtime forgets what was kept
        _turn(d, "s5")
        assert len(ka) == 1
        d.ctx.config.routing.keepalive = False
        _turn(d, "s6")
        assert len(ka) == 0
    finally:
        d.stop()


def test_set_policy_switches_the_runner_live(tmp_path: Path, upstream: RunningApp) -> None:
    """The admin plane's switch (console checkbox, `switchman policy set --keepalive`):
    on, the next turn is kept and the next pass refreshes; off, what was kept is
    dropped at once, before any pass or request."""
    d = _daemon(tmp_path, upstream, None)
    try:
        ka = _runner(d)
        ka.policy = _Policy(True)
        with AdminClient.connect(d.daemon.data_dir) as c:
            _turn(d, "s-a")
            assert len(ka) == 0 and not ka.enabled

            assert c.set_policy(keepalive=True).keepalive
            assert ka.enabled
            _turn(d, "s-a")
            _turn(d, "s-b")
            assert list(ka.kept) == ["s-a", "s-b"]
            n = len(_sent(upstream))
            verdicts = _run(d, ka.kept["s-a"].expires_at - 20.0)
            assert {s for s, v in verdicts if v.refresh} == {"s-a", "s-b"}
            assert len(_sent(upstream)) == n + 2 and ka.refreshes == 2

            assert not c.set_policy(keepalive=False).keepalive
            assert not ka.enabled and len(ka) == 0  # dropped by the change itself
            _turn(d, "s-c")
            assert len(ka) == 0
            n = len(_sent(upstream))
            assert _run(d, ka.clock() + 290.0) == []
            assert len(_sent(upstream)) == n
    finally:
        d.stop()


def test_refresh_bodies_per_format() -> None:
    chat = orjson.dumps({"model": "m", "messages": [], "stream": True, "max_tokens": 900,
                         "stream_options": {"include_usage": True}})
    j = orjson.loads(refresh_body("chat", chat, "openai") or b"")
    assert j["max_completion_tokens"] == 1 and "max_tokens" not in j
    assert j["stream"] is False and "stream_options" not in j
    j = orjson.loads(refresh_body("chat", chat, "openai-compatible") or b"")
    assert j["max_tokens"] == 1 and "max_completion_tokens" not in j
    resp = orjson.dumps({"model": "m", "input": "hi", "stream": True})
    j = orjson.loads(refresh_body("responses", resp, "openai") or b"")
    assert j["max_output_tokens"] == 16 and j["stream"] is False  # OpenAI's minimum
    thinking = orjson.dumps({"model": "m", "max_tokens": 9000, "messages": [],
                             "thinking": {"type": "enabled", "budget_tokens": 4000}})
    assert refresh_body("anthropic", thinking, "anthropic") is None


def test_refreshes_count_against_budgets_and_stop_at_a_hard_limit(
        tmp_path: Path, upstream: RunningApp) -> None:
    d = _daemon(tmp_path, upstream, True)
    try:
        ka = _runner(d)
        ka.policy = _Policy(True)
        budgets = d.ctx.budgets
        b = budgets.set("global", "total", hard_usd=1000.0)
        _turn(d, "s-b")
        spent0 = next(r for r in budgets.status() if r["id"] == b.id)["spent_usd"]
        _run(d, ka.kept["s-b"].expires_at - 20.0)
        assert ka.refreshes == 1
        budgets.drain(5.0)
        spent1 = next(r for r in budgets.status() if r["id"] == b.id)["spent_usd"]
        row = next(r for r in d.ledger_rows() if r["request_role"] == "keepalive")
        assert spent1 - spent0 == pytest.approx(row["cost_usd"])
        # a hard limit already reached: no refresh, the session is dropped
        budgets.set("global", "total", hard_usd=spent1 / 2, budget_id=b.id)
        n = len(_sent(upstream))
        _run(d, ka.kept["s-b"].expires_at - 20.0)
        assert len(_sent(upstream)) == n and "s-b" not in ka.kept
    finally:
        d.stop()
