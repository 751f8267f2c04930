"""RouteLLM-style router metrics for a strong/weak pair (pure Python).

A router gives each prompt a score (higher = more reason to call the strong
model). Sweeping the threshold routes the top-k prompts to the strong model,
k = 0..N. PGR(k) = (perf(k) - perf_weak) / (perf_strong - perf_weak).
APGR is the area under PGR over the fraction of strong calls (trapezoid on
k/N); a random router scores 0.5. CPT(x) is the smallest fraction of strong
calls whose PGR reaches x (random: x).
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def pgr_curve(
    scores: Sequence[float], y_strong: Sequence[float], y_weak: Sequence[float]
) -> list[float]:
    n = len(scores)
    perf_w = sum(y_weak) / n
    perf_s = sum(y_strong) / n
    gap = perf_s - perf_w
    if gap <= 0:
        raise ValueError("strong model is not better than weak on this set")
    order = sorted(range(n), key=lambda i: -scores[i])
    curve = [0.0]
    tot = 0.0
    for i in order:
        tot += y_strong[i] - y_weak[i]
        curve.append((tot / n) / gap)
    return curve


def apgr(curve: Sequence[float]) -> float:
    n = len(curve) - 1
    return sum((curve[i] + curve[i + 1]) / 2 for i in range(n)) / n


def cpt(curve: Sequence[float], target: float) -> float:
    n = len(curve) - 1
    for k, v in enumerate(curve):
        if v >= target - 1e-12:
            return k / n
    return 1.0


def router_metrics(
    scores: Sequence[float],
    y_strong: Sequence[float],
    y_weak: Sequence[float],
    random_trials: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of ``scores`` plus the empirical random-router and oracle baselines."""
    c = pgr_curve(scores, y_strong, y_weak)
    out = {
        "n": float(len(scores)),
        "perf_weak": sum(y_weak) / len(y_weak),
        "perf_strong": sum(y_strong) / len(y_strong),
        "apgr": apgr(c),
        "cpt50": cpt(c, 0.5),
        "cpt80": cpt(c, 0.8),
    }
    rng = random.Random(seed)
    ra, r50, r80 = 0.0, 0.0, 0.0
    for _ in range(random_trials):
        rc = pgr_curve([rng.random() for _ in scores], y_strong, y_weak)
        ra += apgr(rc)
        r50 += cpt(rc, 0.5)
        r80 += cpt(rc, 0.8)
    out |= {
        "random_apgr": ra / random_trials,
        "random_cpt50": r50 / random_trials,
        "random_cpt80": r80 / random_trials,
    }
    oc = pgr_curve([s - w for s, w in zip(y_strong, y_weak, strict=True)], y_strong, y_weak)
    out |= {"oracle_apgr": apgr(oc), "oracle_cpt80": cpt(oc, 0.8)}
    return out


def auc(pred: Sequence[float], y: Sequence[float]) -> float:
    """ROC AUC of ``pred`` for binary-ised ``y`` (>= 0.5), ties counted half."""
    pairs = sorted(zip(pred, (v >= 0.5 for v in y), strict=True))
    pos = sum(1 for _, t in pairs if t)
    neg = len(pairs) - pos
    if not pos or not neg:
        return float("nan")
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2  # 1-based ranks i+1..j
        rank_sum += avg_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
