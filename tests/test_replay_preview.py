"""PolicyService.ReplayPreview over a real gRPC channel: the daemon replays its
own recorded traffic (ledger) through the router per objective."""

from __future__ import annotations

import anthropic
import pytest

from switchman_daemon.evaluation.converters import ledger_rows
from switchman_shared.admin_client import AdminClient
from tests.support.running import RunningDaemon

SYSTEM = "You are a careful coding agent. " * 400  # ~3.2k tokens: above every min prefix
CHEAP, RICH = (1.0, 0.1, 0.0), (0.05, 1.0, 0.0)


def agent_traffic(d: RunningDaemon, sessions: int = 2, turns: int = 10) -> None:
    """An agent loop per session: a cached system prompt and a growing history."""
    client = anthropic.Anthropic(base_url=d.url, api_key="client-key", max_retries=0)
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    for s in range(sessions):
        msgs: list[dict] = []
        for t in range(turns):
            msgs.append({"role": "user", "content": [{
                "type": "text", "text": f"step {t} of task {s}: " + "look at the code. " * 60
                + " [[sim:reply done with that step]]",
                "cache_control": {"type": "ephemeral"}}]})
            reply = client.messages.create(
                model="claude-sonnet-5", max_tokens=200, system=system, messages=msgs,
                extra_headers={"x-claude-code-session-id": f"replay-{s}"})
            for m in msgs:  # the moving breakpoint: only on the newest block
                m["content"] = [{k: v for k, v in b.items() if k != "cache_control"}
                                for b in m["content"]]
            msgs.append({"role": "assistant",
                         "content": [{"type": "text", "text": reply.content[0].text}]})


def test_replay_preview_over_recorded_traffic(admin_daemon: RunningDaemon,
                                              client: AdminClient) -> None:
    agent_traffic(admin_daemon)
    rows = admin_daemon.ledger_rows()
    assert len(rows) == 20 and all(r["status"] == "ok" for r in rows)

    reply = client.replay_preview(days=7, objectives=[CHEAP, RICH])
    assert reply.note == ""
    assert list(reply.pool) == admin_daemon.ctx.registry.pools["default"]
    cheap, rich = reply.points
    assert (cheap.objective.cost, rich.objective.quality) == (1.0, 1.0)
    # a cost-led objective never costs more than a quality-led one on the same traffic
    assert 0 < cheap.cost_usd <= rich.cost_usd
    assert cheap.quality <= rich.quality
    for p in (*reply.points, reply.strongest, reply.recorded):
        assert 0.0 <= p.cache_hit_rate <= 1.0
        assert p.requests == 20
        assert p.quality_source == "predicted"
        assert 0.0 < p.quality <= 1.0
    assert rich.cache_hit_rate > 0  # the history is cached across turns
    assert reply.strongest.cost_usd >= cheap.cost_usd
    # the recorded point is the ledger's own numbers
    assert reply.recorded.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert reply.recorded.baseline_cost_usd == pytest.approx(
        sum(r["baseline_cost_usd"] or r["cost_usd"] for r in rows))
    read = sum(r["cache_read_tokens"] for r in rows)
    prompt = sum(r[k] for r in rows for k in ("input_tokens", "cache_read_tokens",
                                              "cache_write_tokens", "cache_write_1h_tokens"))
    assert reply.recorded.cache_hit_rate == pytest.approx(read / prompt)
    assert reply.recorded.cache_hit_rate > 0

    # no objectives: the live one (marked current) plus a default sweep
    client.set_objective(cost=0.7, quality=0.4, latency=0.1)
    sweep = client.replay_preview()
    cur = [p for p in sweep.points if p.current]
    assert len(sweep.points) >= 4 and cur and cur[0].label == "current"
    assert (cur[0].objective.cost, cur[0].objective.quality) == pytest.approx((0.7, 0.4))

    # the cap replays only the most recent requests, and says so
    capped = client.replay_preview(objectives=[CHEAP], max_requests=5)
    assert capped.truncated and capped.points[0].requests == 5
    assert capped.recorded.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows[-5:]))
    assert "most recent 5" in capped.note


def test_replay_preview_without_traffic_is_a_note(client: AdminClient) -> None:
    reply = client.replay_preview(days=1)
    assert reply.note == "no recorded traffic in the last 1 days"
    assert not reply.points and not reply.HasField("recorded")
    assert not reply.HasField("strongest")


def test_ledger_rows_converter_keeps_served_model() -> None:
    rows = [{"started_at": 100.0, "session_id": "s", "agent_id": None, "request_role": "main",
             "input_tokens": 10, "cache_read_tokens": 90, "cache_write_tokens": 0,
             "cache_write_1h_tokens": 0, "output_tokens": 5, "served_model": "m"},
            {"started_at": 110.0, "session_id": "s", "agent_id": None, "request_role": None,
             "input_tokens": 20, "cache_read_tokens": 100, "cache_write_tokens": 0,
             "cache_write_1h_tokens": 0, "output_tokens": 5, "served_model": None}]
    a, b = ledger_rows(rows)
    assert (a.t, a.prompt_tokens, a.extra) == (0.0, 100, {"served_model": "m"})
    assert (b.t, b.prompt_tokens, b.role, b.extra) == (10.0, 120, "main", {})
    assert a.task_id == b.task_id  # the prompt grew: same task
