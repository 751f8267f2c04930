"""The replay harness (switchman eval): schema, generator calibration, replay
determinism, strategy sanity, provider/tracker separation, converters."""

from __future__ import annotations

import io
import itertools
import json
import statistics
from pathlib import Path

import pytest

from switchman_daemon.cli import main as cli_main
from switchman_daemon.evaluation import converters, replay, schema, synthetic
from switchman_daemon.routing.quality_prior import QualityPredictor

DATA = Path("/work/shared/data")
OBJ = {"cost": 0.2, "quality": 1.0, "latency": 0.0}


@pytest.fixture(scope="module")
def prepared() -> list[replay.Prepared]:
    return replay.prepare(synthetic.generate(8, seed=3))


@pytest.fixture(scope="module")
def predictor() -> QualityPredictor:
    return QualityPredictor()


def _run(prepared, predictor, make, objective=None) -> replay.RunResult:
    env = replay.Env(replay.DEFAULT_POOL, objective, quality=predictor)
    truth = replay.Truth(prepared, predictor)
    return replay.run(prepared, make(env), env, truth, objective)


def test_schema_round_trip() -> None:
    recs = synthetic.generate(2, seed=1)
    recs[0].segments = [{"id": "sys", "tokens": 900}, {"id": "u1", "tokens": 50}]
    buf = io.BytesIO()
    assert schema.write_jsonl(recs, buf) == len(recs)
    back = schema.read_jsonl(io.BytesIO(buf.getvalue()))
    assert [r.to_json() for r in back] == [r.to_json() for r in recs]
    with pytest.raises(ValueError, match="unknown role"):
        schema.read_jsonl(io.BytesIO(b'{"session_id":"s","t":0,"prompt_tokens":5,"role":"x"}\n'))


def test_synthetic_matches_tracelab_calibration() -> None:
    recs = synthetic.generate(60, seed=7)
    sessions = {r.session_id for r in recs}
    t = synthetic.TARGETS
    assert abs(len(recs) / len(sessions) / t["calls_per_session"] - 1) < 0.2
    assert abs(statistics.fmean(r.prompt_tokens for r in recs) / t["prompt_tokens_per_call"]
               - 1) < 0.2
    assert abs(statistics.fmean(r.output_tokens for r in recs) / t["output_tokens_per_call"]
               - 1) < 0.15
    roles = {r.role for r in recs}
    assert roles == {"main", "subagent", "utility", "compaction"}
    gaps = [b.t - a.t for a, b in itertools.pairwise(recs)
            if a.session_id == b.session_id]
    assert synthetic.generate(60, seed=7)[5].to_json() == recs[5].to_json()
    assert max(gaps, default=0) > 300 or len(recs) > 0  # idle gaps: checked per session below
    by = dict(schema.by_session(recs))
    assert any(any(b.t - a.t > 300 for a, b in itertools.pairwise(v))
               for v in by.values())


def test_cache_read_share_staying_on_one_model(prepared, predictor) -> None:
    res = _run(prepared, predictor, lambda e: replay.Strongest())
    assert abs(res.cache_hit - synthetic.TARGETS["cache_read_share"]) < 0.03


def test_replay_is_deterministic(predictor) -> None:
    a = replay.prepare(synthetic.generate(3, seed=5))
    b = replay.prepare(synthetic.generate(3, seed=5))
    ra = _run(a, predictor, lambda e: replay.RouterStrategy(e), OBJ).to_json()
    rb = _run(b, predictor, lambda e: replay.RouterStrategy(e), OBJ).to_json()
    assert ra == rb
    assert _run(a, predictor, lambda e: replay.RandomPick(3)).to_json() == \
        _run(b, predictor, lambda e: replay.RandomPick(3)).to_json()


def test_cheapest_costs_less_than_strongest(prepared, predictor) -> None:
    strong = _run(prepared, predictor, lambda e: replay.Strongest())
    cheap = _run(prepared, predictor, lambda e: replay.Cheapest())
    assert cheap.cost < strong.cost
    assert cheap.quality < strong.quality


def test_cache_unaware_pays_more_writes(prepared, predictor) -> None:
    aware = _run(prepared, predictor, lambda e: replay.RouterStrategy(e), OBJ)
    blind = _run(prepared, predictor,
                 lambda e: replay.RouterStrategy(e, "blind", cache_aware=False), OBJ)
    assert blind.write_tokens > aware.write_tokens
    assert blind.cache_hit < aware.cache_hit


def test_provider_cache_and_tracker_are_separate_on_one_clock(prepared) -> None:
    env = replay.Env(replay.DEFAULT_POOL)
    strat = replay.RouterStrategy(env)
    tracker = strat.router.tracker
    assert tracker is not env.sim.table and type(tracker).__module__.endswith("routing.tracker")
    assert type(env.sim.table).__module__.endswith("sim.cache")
    assert tracker.clock is env.clock and env.sim.table.clock is env.clock
    p = next(q for q in prepared if q.rec.role == "main")
    env.clock.now = p.rec.t
    m = strat.choose(p, env)
    sv = env.sim.serve(m, p)
    strat.observe(p, env, m, sv)
    sid = p.signals.cache_session
    assert tracker.expires_in(sid, m.name) == pytest.approx(300.0)
    env.clock.now += 301  # simulated time only: both the belief and the truth expire
    assert tracker.expires_in(sid, m.name) == 0.0
    assert env.sim.table.tokens_for(m.upstream_id) == []


def test_oracle_not_worse_than_strongest_on_cost(prepared, predictor) -> None:
    truth = replay.Truth(prepared, predictor)
    strong = _run(prepared, predictor, lambda e: replay.Strongest())
    orc = _run(prepared, predictor, lambda e: replay.Oracle(prepared, truth, eps=0.05))
    assert orc.cost <= strong.cost
    assert orc.quality >= 0.95 * strong.quality


@pytest.mark.skipif(not DATA.exists(), reason="shared data not present")
def test_converters_parse_shipped_samples() -> None:
    tl = DATA / "agent_traces_small/tracelab"
    rounds = converters.convert("tracelab", tl / "derived/round_trace.jsonl")
    assert len(rounds) == 19 and {r.source for r in rounds} == {"tracelab"}
    assert rounds[0].prompt_tokens == 32272
    csvs = converters.convert("tracelab-csv", tl / "replay/examples")
    assert len({r.session_id for r in csvs}) >= 48
    aider = converters.aider_history(DATA / "aider_sessions/chat-history.md", max_sessions=60)
    assert aider and all(r.prompt_tokens > 0 for r in aider)
    trajs = converters.convert("swe-agent", DATA / "agent_traces_small/swe_agent/tests")
    assert len({r.session_id for r in trajs}) == 3 and all(r.prompt_tokens for r in trajs)
    # converted real traces replay end to end (quality: predictor estimate)
    prep = replay.prepare(rounds + trajs)
    res = _run(prep, QualityPredictor(use_learned=False), lambda e: replay.Strongest())
    assert res.calls == len(prep) and res.quality_source == "predictor estimate"


def test_ledger_converter(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "ledger.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE requests (started_at REAL, session_id TEXT, agent_id TEXT, "
                "request_role TEXT, input_tokens INT, cache_read_tokens INT, "
                "cache_write_tokens INT, cache_write_1h_tokens INT, output_tokens INT, "
                "status TEXT)")
    con.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?)", [
        (100.0, "s1", None, "main", 10, 0, 5000, 0, 40, "ok"),
        (110.0, "s1", None, "main", 10, 5000, 800, 0, 40, "ok"),
        (900.0, "s1", None, "main", 10, 0, 5900, 0, 40, "ok"),
        (901.0, "s1", None, "main", 10, 0, 5900, 0, 40, "error")])
    con.commit()
    con.close()
    recs = converters.convert("ledger", db)
    assert [r.prompt_tokens for r in recs] == [5010, 5810, 5910]
    assert recs[0].task_id == recs[1].task_id != recs[2].task_id  # idle > 5 min


def test_cli_json(capsys) -> None:
    assert cli_main(["eval", "--synthetic", "2", "--seed", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in out["results"]]
    assert names == ["always-strongest", "always-cheapest", "random", "cache-unaware",
                     "cache-unaware-sticky", "switchman", "switchman+keepalive", "oracle"]
    assert out["tasks"]["task_set"] == "llmrouter" and out["tasks"]["tiers"]
    assert out["quality_source"].startswith("recorded outcomes")
    assert {t["target"][:5] for t in out["targets"]}


# -- tasks grounded in held-out outcome data --------------------------------------------

needs_data = pytest.mark.skipif(not DATA.exists(), reason="shared data not present")


@pytest.fixture(scope="module")
def split_items():
    from switchman_daemon.training import data as D

    train, ev, _ = D.split(D.load_all(DATA))
    return train, ev


@needs_data
def test_training_split_holds_no_eval_question(split_items) -> None:
    """What `switchman train` fits on: no held-out id, no held-out question under
    another data set's id; the shipped artifact was trained on exactly that split."""
    from switchman_daemon.routing.quality import QualityModel
    from switchman_daemon.training import data as D

    train, ev = split_items
    assert not [it for it in train if D.is_eval(it.qid)]
    ev_stems = {D.stem(it.text) for it in ev}
    assert not [it for it in train if D.stem(it.text) in ev_stems]
    counts: dict[str, dict[str, int]] = {}
    for name, rows in (("train", train), ("eval", ev)):
        for it in rows:
            counts.setdefault(it.dataset, {"train": 0, "eval": 0})[name] += 1
    assert QualityModel.load().meta["counts"] == counts


@needs_data
@pytest.mark.parametrize("task_set", ["llmrouter", "llmrouter-code", "mmlu-pro"])
def test_synthetic_tasks_are_held_out_questions(split_items, task_set) -> None:
    from switchman_daemon.evaluation import tasks
    from switchman_daemon.training import data as D

    train, _ = split_items
    train_qids = {(it.dataset, it.qid) for it in train}
    train_stems = {D.stem(it.text) for it in train}
    ts = tasks.load(task_set, tasks.pool_quality(replay.DEFAULT_POOL))
    assert all(D.is_eval(q.qid) for q in ts.questions)
    recs = synthetic.generate(6, seed=11, tasks=task_set)
    firsts = [r for r in recs if r.outcomes]
    assert len(firsts) == len({(r.session_id, r.task_id) for r in recs if r.role == "main"})
    by_qid = {q.qid: q for q in ts.questions}
    for r in firsts:
        qid = r.extra["qid"]
        assert D.is_eval(qid) and (ts.dataset, qid) not in train_qids
        assert D.stem(r.task_text) not in train_stems
        q = by_qid[qid]
        assert r.task_text == q.text
        # a tier's quality is its data-set counterpart's recorded score
        assert r.outcomes == {p: q.scores[m] for p, m in ts.tiers.items()}


@needs_data
def test_tier_mapping_rule_on_training_split() -> None:
    from switchman_daemon.evaluation import tasks

    pq = tasks.pool_quality(replay.DEFAULT_POOL)
    assert tasks.load("llmrouter", pq).tiers == {
        "sim-claude-strong": "llama-3.1-nemotron-51b-instruct",
        "sim-claude-mid": "llama-3.3-nemotron-super-49b-v1",
        "sim-claude-cheap": "qwen2.5-7b-instruct"}
    assert tasks.load("mmlu-pro", pq).tiers == {
        "sim-claude-strong": "gpt-4o-2024-05-13",
        "sim-claude-mid": "gemini-1.5-flash-002",
        "sim-claude-cheap": "deepseek-chat-2024-05"}
    # the rule itself: nearest relative ability, strongest first, no model twice
    got = tasks.map_tiers({"a": 0.8, "b": 0.7, "c": 0.4, "d": 0.79},
                          {"s": 1.0, "m": 0.99, "c": 0.5})
    assert got == {"s": "a", "m": "d", "c": "c"}


@needs_data
def test_truth_uses_recorded_outcomes(predictor) -> None:
    recs = synthetic.generate(2, seed=4)
    prep = replay.prepare(recs)
    truth = replay.Truth(prep, predictor)
    assert truth.source == "recorded outcomes (llmrouter, eval split)"
    env = replay.Env(replay.DEFAULT_POOL)
    first = next(r for r in recs if r.outcomes)
    p = next(q for q in prep if q.rec is first or (q.rec.session_id, q.rec.task_id) ==
             (first.session_id, first.task_id))
    for m in env.models:
        assert truth(p, m) == first.outcomes[m.name]
    odd = replay.Env(["sim-gpt-strong"]).models[0]
    with pytest.raises(ValueError, match="same --pool"):
        truth(p, odd)


@needs_data
def test_harness_is_deterministic() -> None:
    from switchman_daemon.evaluation import harness

    def once() -> dict:
        recs = synthetic.generate(3, seed=9)
        return harness.evaluate(recs, replay.DEFAULT_POOL, seed=9)

    a, b = once(), once()
    assert a == b
    assert {r["name"] for r in a["results"]} >= {"switchman", "switchman+keepalive"}
    ka = next(r for r in a["results"] if r["name"] == "switchman+keepalive")["keepalive"]
    assert ka["refreshes"] + ka["declined"] > 0


def test_keepalive_refresh_keeps_the_sim_cache_warm(predictor) -> None:
    """One session, a 400 s pause after its first task: with a policy that has
    seen such pauses, the refresh (a cache read) turns the return's re-write
    into a read, and the refresh is billed."""
    from switchman_daemon.evaluation.keepalive_sim import KeepAliveSim
    from switchman_daemon.routing.keepalive import GapModel, KeepAlive

    S = schema.TraceRecord
    recs = [S("s", 0.0, 30_000, task_id="t0", new_tokens=30_000 - 20_000, output_tokens=50,
              task_text="first"),
            S("s", 10.0, 34_000, task_id="t0", new_tokens=4_000, output_tokens=50),
            S("s", 410.0, 36_000, task_id="t1", new_tokens=2_000, output_tokens=50,
              task_text="second")]
    prep = replay.prepare(recs)
    truth = replay.Truth(prep, predictor)

    def go(ka):
        env = replay.Env(["sim-claude-strong"], quality=predictor)
        return replay.run(prep, replay.Strongest(), env, truth, keepalive=ka), env

    gaps = GapModel()
    for k in range(6):  # another session that came back ~400 s after each pause
        gaps.turn("other", k * 400.0)
    plain, _ = go(None)
    kept, _ = go(KeepAliveSim(KeepAlive(gaps)))
    # one before the return, one after the last turn (the trace's end is not known)
    assert kept.keepalive["refreshes"] == 2
    assert kept.keepalive["kept_warm"] == 1
    assert kept.write_tokens < plain.write_tokens - 30_000  # the prefix was not re-written
    assert kept.cost < plain.cost and kept.keepalive["cost"] > 0
