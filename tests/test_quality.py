"""Quality prediction: features, the fixed eval split, a tiny training run and the
shipped artifact. Full training is not run here (``switchman train`` takes ~1 min)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from switchman_daemon.models import ModelInfo, Prices
from switchman_daemon.routing.features import N_FEATURES, request_features
from switchman_daemon.routing.quality import DEFAULT_ARTIFACT, QualityModel
from switchman_daemon.training import data as D

DATA = D.default_data_dir()
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared/data not present")


def _model(name: str, quality: float, out_price: float, upstream: str | None = None) -> ModelInfo:
    return ModelInfo(
        name=name,
        upstream_id=upstream or name,
        provider="p",
        prices=Prices(out_price / 5, out_price, 0.0, 0.0, 0.0),
        min_cache_prefix=1024,
        context_window=200_000,
        max_output=8192,
        tools=True,
        vision=False,
        thinking=False,
        quality=quality,
    )


# --- split rule -------------------------------------------------------------------
def test_split_rule_is_the_fixed_hash_rule() -> None:
    for i in range(500):
        want = int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 5 == 0
        assert D.is_eval(str(i)) is want
    # known values: question ids 0, 1, 14 are held out; 2 is not
    assert D.is_eval("0") and D.is_eval("1") and D.is_eval("14")
    assert not D.is_eval("2")


@needs_data
def test_no_eval_question_in_training_rows(tmp_path: Path) -> None:
    from switchman_daemon.training.quality_train import Hyper, run

    res = run(
        DATA,
        tmp_path / "q.json.gz",
        hp=Hyper(steps=20),
        datasets=["routellm_gsm8k", "routellm_mtbench"],
        limit=400,
    )
    used = res["train_qids"]
    assert used, "tiny run trained on nothing"
    assert not [q for _, q in used if D.is_eval(q)]
    # MT-Bench has its own question ids: those are what the rule is applied to
    mt = [q for ds, q in used if ds == "routellm_mtbench"]
    assert mt and all(q.isdigit() for q in mt)
    # the tiny artifact loads and is honest about what it was trained on
    doc = json.loads(gzip.decompress((tmp_path / "q.json.gz").read_bytes()))
    assert doc["split_rule"] == D.SPLIT_RULE
    assert doc["counts"]["routellm_gsm8k"]["eval"] > 200
    qm = QualityModel.load(tmp_path / "q.json.gz")
    p = qm.predict_text("What is 2 + 2?", _model("x", 0.7, 2.0))
    assert 0.0 <= p <= 1.0


@needs_data
def test_cross_dataset_duplicates_of_eval_are_dropped() -> None:
    items = D.load_routellm(DATA)
    train, ev, _ = D.split(items)
    ev_stems = {D.stem(it.text) for it in ev}
    assert not any(D.stem(it.text) in ev_stems for it in train)


# --- features ---------------------------------------------------------------------
def test_features_deterministic_and_in_range() -> None:
    text = "def f(x):\n    return x ** 2  # why does this fail?\n```\n$\\frac{1}{2}$"
    a, b = request_features(text), request_features(text)
    assert a == b
    assert all(0 <= k < N_FEATURES for k in a)
    assert all(0.0 <= v <= 1.5 for v in a.values())
    # stable across processes (no salted str hash)
    code = (
        "import json,sys;from switchman_daemon.routing.features import request_features as r;"
        "print(json.dumps(sorted(r(sys.argv[1]).items())))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code, text], capture_output=True, text=True, env=env, check=True
    )
    assert [tuple(x) for x in json.loads(out.stdout)] == sorted(a.items())


def test_features_handle_empty_and_huge_text() -> None:
    assert request_features("")[0] == 1.0
    big = request_features("word " * 50_000)
    assert len(big) < 100  # head/tail only for hashed words


# --- shipped artifact ---------------------------------------------------------------
def test_artifact_small_and_loads() -> None:
    assert DEFAULT_ARTIFACT.exists()
    assert DEFAULT_ARTIFACT.stat().st_size < 2 * 1024 * 1024
    qm = QualityModel.load()
    assert qm is QualityModel.load()  # cached
    assert qm.meta["split_rule"] == D.SPLIT_RULE
    for name, q, price in (
        ("claude-opus-4-8", 0.95, 25.0),
        ("gpt-4o-mini", 0.6, 0.6),
        ("gpt-4o", 0.75, 10.0),
        ("mystery", 0.0, 1.1),  # no quality: price-tier prior
    ):
        m = _model(name, q, price)
        for text in ("", "hi", "Prove that sqrt(2) is irrational.", "x" * 10_000):
            p = qm.predict_text(text, m)
            assert 0.0 <= p <= 1.0
    assert qm.data_model_for(_model("gpt-4o", 0.75, 10.0)) == "mmlu_pro/gpt-4o-2024-05-13"
    llama = _model("l70", 0.7, 0.9, upstream="meta-llama/Meta-Llama-3.1-70B-Instruct")
    assert qm.data_model_for(llama) == "mmlu_pro/Meta-Llama-3_1-70B-Instruct"
    assert qm.data_model_for(_model("claude-opus-4-8", 0.95, 25.0)) is None


def _eval_sample(n: int) -> list[D.Item]:
    items = [it for it in D.load_mmlu_pro(DATA) if D.is_eval(it.qid)]
    items.sort(key=lambda it: int(it.qid))
    return items[:n]


@needs_data
def test_strong_beats_cheap_on_held_out_sample_and_hard_ones_score_lower() -> None:
    qm = QualityModel.load()
    sample = _eval_sample(300)
    strong, weak = "mmlu_pro/gpt-4o-2024-05-13", "mmlu_pro/Mixtral-8x7B-Instruct-v0.1"
    feats = [request_features(it.text) for it in sample]
    ps = [qm.predict_data_model(f, strong) for f in feats]
    pw = [qm.predict_data_model(f, weak) for f in feats]
    assert sum(pw) / len(pw) < sum(ps) / len(ps)
    # held-out questions the strong model got wrong must look harder (lower
    # predicted success) than those it got right: fails if the text term is noise
    right = [p for p, it in zip(ps, sample, strict=True) if it.scores.get("gpt-4o-2024-05-13")]
    wrong = [p for p, it in zip(ps, sample, strict=True) if not it.scores.get("gpt-4o-2024-05-13")]
    assert sum(wrong) / len(wrong) < sum(right) / len(right)
    # pool level: a cheap catalog model never gets a higher mean than a strong one
    cheap, top = _model("gpt-4o-mini", 0.6, 0.6), _model("claude-opus-4-8", 0.95, 25.0)
    assert sum(qm.predict(f, cheap) for f in feats) < sum(qm.predict(f, top) for f in feats)


def test_harder_looking_prompt_scores_lower_for_cheap_model() -> None:
    qm = QualityModel.load()
    cheap = _model("gpt-4o-mini", 0.6, 0.6)
    easy = "Which city is the capital of France?"
    hard = (
        "Let $f(x)=\\int_0^x e^{-t^2}\\,dt$. Compute the limit of $x e^{x^2}(\\sqrt{\\pi}/2-f(x))$"
        " as x goes to infinity, and prove the asymptotic expansion to second order.\n"
        "A. 1/2\nB. 1\nC. 2\nD. 1/4\nE. 0\nF. 3/2\nG. 3/4\nH. pi\nI. e\nJ. 1/3\nAnswer:"
    )
    assert qm.predict_text(hard, cheap) < qm.predict_text(easy, cheap)


def test_predictor_heads_use_the_named_data_model() -> None:
    """A pool model that *is* a training-data model (switchman eval's tiers) is
    predicted by that model's own head; others keep the catalog-level blend."""
    from switchman_daemon.routing.quality_prior import QualityPredictor

    qm = QualityModel.load()
    key = "llmrouter/qwen2.5-7b-instruct"
    tier = _model("sim-claude-cheap", 0.7, 5.0)
    other = _model("sim-claude-mid", 0.88, 15.0)
    pred = QualityPredictor(heads={tier.name: key, "gone": "llmrouter/no-such-model"})
    text = "Write a function that returns the n-th Fibonacci number."
    assert pred.predict(text, tier) == pytest.approx(
        qm.predict_data_model(request_features(text), key))
    assert pred.predict("", tier) == qm.train_acc[key]
    assert pred.predict(text, other) == pytest.approx(qm.predict_text(text, other))
    assert pred.predict(text, _model("gone", 0.5, 1.0)) == pytest.approx(
        qm.predict_text(text, _model("gone", 0.5, 1.0)))
