"""Real held-out questions as the synthetic sessions' agent tasks, with recorded
outcomes per pool tier (the quality side of ``switchman eval``).

Each task's user prompt is a question from a router outcome data set, taken
**only from the fixed evaluation split** (``training.data.is_eval``), so the
quality predictor never trained or tuned on it. Each pool model ("tier") maps
to one model of that data set, and a task's quality on a tier is that model's
recorded score on the question (0/1 correctness, or the data set's task
metric in [0, 1]). The router sees the real question text; the oracle and the
quality metric see the recorded outcomes.

Tier mapping (``map_tiers``), fixed by a rule on the *training* split, never
on eval results: every pool model gets the data model whose training-split
mean score, relative to the data set's best model, is closest to the pool
model's catalog quality relative to the pool's strongest (strong first, each
data model used once). For the default pool (catalog quality 0.95 / 0.88 /
0.70 for Opus / Sonnet / Haiku pricing) this gives:

* ``llmrouter``: llama-3.1-nemotron-51b-instruct (train 0.616) /
  llama-3.3-nemotron-super-49b-v1 (0.567) / qwen2.5-7b-instruct (0.515). The
  data's own price table ($0.9 / $0.9 / $0.2 per M) keeps about the same
  cheap-to-strong ratio as Haiku to Opus (0.2).
* ``mmlu-pro``: gpt-4o-2024-05-13 (0.725) / gemini-1.5-flash-002 (0.641) /
  deepseek-chat-2024-05 (0.526).

Task sets (``--tasks``): ``llmrouter`` (default: 14 tasks incl. HumanEval and
MBPP code generation, math, reasoning and QA; 1,191 held-out questions),
``llmrouter-code`` (HumanEval + MBPP only, 149 questions, reused once
exhausted), ``mmlu-pro`` (2,425 held-out questions, 14 subjects), and
``templates`` (the earlier made-up task texts with an assumed success curve
by hidden difficulty). RouteLLM's data has two models only, too few for a
three-tier pool, so it is not offered.

Which question a task gets: the generator draws a task difficulty as before
(it sets the number of tool-loop steps); the question is the one at the same
quantile of the data's own difficulty ranking (1 - mean score over *all* of
the data set's models), so hard questions come with long tasks, as in real
agent work. The router never sees that difficulty.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from switchman_daemon.training import data as D
from switchman_daemon.training.quality_train import model_key

DEFAULT_POOL = ("sim-claude-strong", "sim-claude-mid", "sim-claude-cheap")
DEFAULT_TASK_SET = "llmrouter"
TEMPLATES = "templates"
_SETS: dict[str, tuple[str, frozenset[str] | None]] = {
    # name -> (data set, LLMRouter task names kept or None for all)
    "llmrouter": ("llmrouter", None),
    "llmrouter-code": ("llmrouter", frozenset({"human_eval", "mbpp"})),
    "mmlu-pro": ("mmlu_pro", None),
}
TASK_SETS: tuple[str, ...] = (*_SETS, TEMPLATES)


@dataclass(frozen=True, slots=True)
class Question:
    qid: str  # the id the split rule is applied to (the text where the data has none)
    text: str
    scores: dict[str, float]  # data model -> recorded score
    difficulty: float  # 1 - mean score over all of the data set's models


@dataclass(slots=True)
class TaskSet:
    name: str
    dataset: str
    questions: list[Question]  # eval split only, easiest first
    tiers: dict[str, str]  # pool model -> data model
    train_means: dict[str, float]
    _used: set[int] = field(default_factory=set)

    def heads(self) -> dict[str, str]:
        """Pool model -> the quality predictor's head for its data model."""
        return {p: model_key(self.dataset, m) for p, m in self.tiers.items()}

    def pick(self, u: float) -> Question:
        """The unused question nearest quantile ``u`` of the difficulty ranking
        (all used: start over, reusing questions)."""
        n = len(self.questions)
        if len(self._used) >= n:
            self._used.clear()
        i = min(n - 1, max(0, round(u * (n - 1))))
        for k in range(n):
            for j in (i - k, i + k):
                if 0 <= j < n and j not in self._used:
                    self._used.add(j)
                    return self.questions[j]
        raise AssertionError("unreachable")


def map_tiers(train_means: dict[str, float], pool_quality: dict[str, float]) -> dict[str, str]:
    """Pool model -> data model, by relative ability (module docstring)."""
    best = max(train_means.values())
    top = max(pool_quality.values())
    free = dict(train_means)
    out: dict[str, str] = {}
    for p, q in sorted(pool_quality.items(), key=lambda kv: (-kv[1], kv[0])):
        want = q / top
        m = min(free, key=lambda k: (abs(free[k] / best - want), k))
        out[p] = m
        del free[m]
    return out


def pool_quality(pool: Sequence[str]) -> dict[str, float]:
    """Catalog (or built-in config) quality of each pool model."""
    from switchman_daemon.config import load_config
    from switchman_daemon.models import ModelRegistry

    reg = ModelRegistry(load_config(None, overrides={"pools": {"eval": {"models": list(pool)}}}))
    return {n: reg.models[n].quality for n in pool}


def _order(qid: str) -> int:  # tie-break between equally hard questions, seed-free
    return int(hashlib.sha256(qid.encode()).hexdigest()[:12], 16)


@cache
def _llmrouter_tasks(root: Path) -> dict[str, str]:
    d = root / "llmrouter_uiuc" / "example_data" / "query_data"
    out: dict[str, str] = {}
    for name in ("default_query_train.jsonl", "default_query_test.jsonl"):
        with (d / name).open(encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                out.setdefault(r["query"], r["task_name"])
    return out


@cache
def _items(dataset: str, root: Path) -> tuple[D.Item, ...]:
    return tuple(D.load_all(root, [dataset]))


def load(name: str, pool_quality: dict[str, float], data_dir: Path | None = None) -> TaskSet:
    """The task set ``name`` for a pool (pool model -> catalog quality)."""
    if name not in _SETS:
        raise ValueError(f"unknown task set {name!r} (one of {', '.join(TASK_SETS)})")
    dataset, keep = _SETS[name]
    root = (data_dir or D.default_data_dir()).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"outcome data not found at {root} (set --data-dir or "
                                "SWITCHMAN_DATA_SETS, or use --tasks templates)")
    items = _items(dataset, root)
    train = [it for it in items if not D.is_eval(it.qid)]
    models = sorted({m for it in items for m in it.scores})
    means = {m: statistics.fmean(s) for m in models
             if (s := [it.scores[m] for it in train if m in it.scores])}
    tiers = map_tiers(means, pool_quality)
    want = set(tiers.values())
    if keep is not None:
        kind = _llmrouter_tasks(root)
        items = tuple(it for it in items if kind.get(it.text) in keep)
    qs = [Question(it.qid, it.text, dict(it.scores),
                   1.0 - statistics.fmean(it.scores.values()))
          for it in items if D.is_eval(it.qid) and want <= it.scores.keys()]
    if not qs:
        raise ValueError(f"task set {name!r}: no held-out questions with outcomes for "
                         f"{sorted(want)}")
    qs.sort(key=lambda q: (q.difficulty, _order(q.qid)))
    return TaskSet(name, dataset, qs, tiers, means)


# -- matching a drawn task difficulty to the data's ranking ------------------------------


@cache
def _beta_cdf_table(a: float, b: float, n: int = 1000) -> tuple[float, ...]:
    """Beta(a, b) CDF at i/n (trapezoid rule; a, b > 1 so the density is bounded)."""
    xs = [i / n for i in range(n + 1)]
    dens = [x ** (a - 1) * (1 - x) ** (b - 1) for x in xs]
    acc = [0.0]
    for i in range(n):
        acc.append(acc[-1] + (dens[i] + dens[i + 1]) / (2 * n))
    return tuple(v / acc[-1] for v in acc)


def beta_quantile_of(x: float, a: float, b: float) -> float:
    """CDF of Beta(a, b) at ``x`` (the generator's difficulty draw -> a quantile)."""
    t = _beta_cdf_table(a, b)
    n = len(t) - 1
    pos = min(max(x, 0.0), 1.0) * n
    i = min(math.floor(pos), n - 1)
    return t[i] + (t[i + 1] - t[i]) * (pos - i)

