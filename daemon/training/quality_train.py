"""Offline training of the quality predictor (``switchman train``).

Model: for a data model m and request features x (``routing.features``),
    P(m does well | x) = sigmoid(b_m + (w_shared + d_m) . x)
``w_shared`` is a text "easiness" direction learned from all data sets and all
models; ``d_m`` is the model's own deviation, with a stronger L2 pull to 0 so
two-model data (RouteLLM) still gets sensible heads. Fitted full-batch with
Adam on a dense float32 matrix (numpy, training only; inference is pure
Python in ``routing.quality``). Soft labels: LLMRouter task scores and MT-Bench
judge scores / 10 are used as targets in [0, 1].

Evaluation: the fixed split (``data.is_eval``) is never used for fitting or
tuning; ``--tune`` picks L2 strengths on a validation fold carved from the
training split (hash % 5 == 1 of the same id).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchman_daemon.routing.features import (
    DENSE_NAMES,
    FEATURES_VERSION,
    HASH_BITS,
    N_FEATURES,
    request_features,
)
from switchman_daemon.training import data as D
from switchman_daemon.training.metrics import auc, router_metrics

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "routing" / "artifacts" / "quality-v1.json.gz"

# Strong/weak pair per evaluated data set, fixed before looking at eval results:
# the strongest model in the data vs a much cheaper one (RouteLLM's own pair
# for its data; Mixtral for MMLU-Pro to mirror that pair).
PAIRS: dict[str, tuple[str, str]] = {
    "mmlu_pro": ("gpt-4o-2024-05-13", "Mixtral-8x7B-Instruct-v0.1"),
    "llmrouter": ("llama-3.1-nemotron-51b-instruct", "llama-3.1-8b-instruct"),
    "routellm_gsm8k": (D.ROUTELLM_STRONG, D.ROUTELLM_WEAK),
    "routellm_mmlu": (D.ROUTELLM_STRONG, D.ROUTELLM_WEAK),
    "routellm_mtbench": (D.ROUTELLM_STRONG, D.ROUTELLM_WEAK),
}

SOURCES = {
    "mmlu_pro": "TIGER-AI-Lab/MMLU-Pro eval_results (Apache-2.0), 31 models",
    "llmrouter": "ulab-uiuc/LLMRouter dcrouter_preprocessed (MIT), 9 models",
    "routellm": "lm-sys/RouteLLM evals GSM8K/MMLU/MT-Bench (Apache-2.0), GPT-4 vs Mixtral",
}


def group_of(dataset: str) -> str:
    """Heads are per model *per source*: the RouteLLM subsets share a model pair."""
    return "routellm" if dataset.startswith("routellm") else dataset


def model_key(dataset: str, model: str) -> str:
    return f"{group_of(dataset)}/{model}"


@dataclass
class Hyper:
    # defaults = the pick of ``--tune`` (validation fold of the training split:
    # mean APGR 0.648 vs 0.646 for (1e-5, 1e-4) and 0.611-0.643 for the others)
    l2_shared: float = 1e-5
    l2_delta: float = 1e-5
    steps: int = 250
    lr: float = 0.05


@dataclass
class Fitted:
    keys: list[str]
    shared: list[float]
    delta: list[list[float]]  # per key, dense
    bias: list[float]
    train_acc: list[float]
    center: list[float]


def _matrix(items: Sequence[D.Item]) -> Any:  # a numpy array (numpy: training only)
    import numpy as np

    x = np.zeros((len(items), N_FEATURES), dtype=np.float32)
    for r, it in enumerate(items):
        f = request_features(it.text)
        x[r, list(f.keys())] = list(f.values())
    return x


def fit(items: Sequence[D.Item], hp: Hyper, log: bool = False) -> Fitted:
    import numpy as np

    keys = sorted({model_key(it.dataset, m) for it in items for m in it.scores})
    kidx = {k: i for i, k in enumerate(keys)}
    groups: dict[str, list[D.Item]] = {}
    for it in items:
        groups.setdefault(group_of(it.dataset), []).append(it)
    blocks = []  # (X, Y, mask, key indices)
    total = 0.0
    for g, its in sorted(groups.items()):
        cols = sorted({kidx[model_key(it.dataset, m)] for it in its for m in it.scores})
        cpos = {c: j for j, c in enumerate(cols)}
        y = np.zeros((len(its), len(cols)), dtype=np.float32)
        mk = np.zeros_like(y)
        for r, it in enumerate(its):
            for m, s in it.scores.items():
                j = cpos[kidx[model_key(it.dataset, m)]]
                y[r, j] = s
                mk[r, j] = 1.0
        blocks.append((_matrix(its), y, mk, np.array(cols)))
        total += float(mk.sum())
        if log:
            print(f"  {g}: {len(its)} prompts x {len(cols)} models", file=sys.stderr)
    nf, nm = N_FEATURES, len(keys)
    ws = np.zeros(nf, dtype=np.float32)
    dl = np.zeros((nf, nm), dtype=np.float32)
    b = np.zeros(nm, dtype=np.float32)
    # start biases at each model's base rate: faster, and keeps d_m for the text part
    acc = np.zeros(nm)
    for _x, y, mk, cols in blocks:
        acc[cols] = (y * mk).sum(0) / np.maximum(mk.sum(0), 1)
    b[:] = np.log(np.clip(acc, 0.02, 0.98) / (1 - np.clip(acc, 0.02, 0.98)))
    params = [ws, dl, b]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, hp.steps + 1):
        gws = hp.l2_shared * ws
        gdl = hp.l2_delta * dl
        gb = np.zeros_like(b)
        loss = 0.0
        for x, y, mk, cols in blocks:
            w = ws[:, None] + dl[:, cols]
            z = x @ w + b[cols]
            p = 1.0 / (1.0 + np.exp(-z))
            if log and step % 50 == 0:
                pc = np.clip(p, 1e-6, 1 - 1e-6)
                loss += float(-(mk * (y * np.log(pc) + (1 - y) * np.log(1 - pc))).sum())
            gz = (p - y) * mk / total
            gw = x.T @ gz
            gws += gw.sum(1)
            gdl[:, cols] += gw
            gb[cols] += gz.sum(0)
        for i, g in enumerate((gws, gdl, gb)):
            m1[i] = b1 * m1[i] + (1 - b1) * g
            m2[i] = b2 * m2[i] + (1 - b2) * g * g
            params[i] -= hp.lr * (m1[i] / (1 - b1**step)) / (np.sqrt(m2[i] / (1 - b2**step)) + eps)
        if log and step % 50 == 0:
            print(f"  step {step}: train log-loss {loss / total:.4f}", file=sys.stderr)
    # centre of each head's text term over all training prompts: the pool-level
    # prediction adds (w.x - centre) to a prior level (see routing.quality)
    xs = np.concatenate([blk[0] for blk in blocks])
    center = (xs @ (ws[:, None] + dl)).mean(0)
    return Fitted(
        keys=keys,
        shared=ws.tolist(),
        delta=dl.T.tolist(),
        bias=b.tolist(),
        train_acc=acc.tolist(),
        center=center.tolist(),
    )


def _predict(fitted: Fitted, key: str, f: dict[int, float]) -> float:
    i = fitted.keys.index(key)
    w, d = fitted.shared, fitted.delta[i]
    z = fitted.bias[i] + sum((w[j] + d[j]) * v for j, v in f.items())
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def evaluate(fitted: Fitted, items: Sequence[D.Item]) -> dict[str, dict[str, float]]:
    """Per data set: router metrics for its strong/weak pair (score = predicted
    P(strong) - P(weak)), the random and oracle baselines, and the mean per-model
    AUC of predicted success (how well difficulty is ranked)."""
    out: dict[str, dict[str, float]] = {}
    by_ds: dict[str, list[D.Item]] = {}
    for it in items:
        by_ds.setdefault(it.dataset, []).append(it)
    for ds, its in sorted(by_ds.items()):
        strong, weak = PAIRS[ds]
        ks, kw = model_key(ds, strong), model_key(ds, weak)
        rows = [it for it in its if strong in it.scores and weak in it.scores]
        feats = [request_features(it.text) for it in rows]
        ps = [_predict(fitted, ks, f) for f in feats]
        pw = [_predict(fitted, kw, f) for f in feats]
        res = router_metrics(
            [a - b for a, b in zip(ps, pw, strict=True)],
            [it.scores[strong] for it in rows],
            [it.scores[weak] for it in rows],
        )
        aucs = []
        models = sorted({m for it in its for m in it.scores})
        for m in models:
            k = model_key(ds, m)
            if k not in fitted.keys:
                continue
            r2 = [(f, it.scores[m]) for f, it in zip(feats, rows, strict=True) if m in it.scores]
            a = auc([_predict(fitted, k, f) for f, _ in r2], [y for _, y in r2])
            if not math.isnan(a):
                aucs.append(a)
        res["mean_auc"] = sum(aucs) / len(aucs) if aucs else float("nan")
        res["strong"], res["weak"] = strong, weak  # type: ignore[assignment]
        out[ds] = res
    return out


def _is_val(qid: str) -> bool:
    return int(hashlib.sha256(str(qid).encode("utf-8")).hexdigest(), 16) % 5 == 1


def tune(train: Sequence[D.Item], log: bool = False) -> Hyper:
    """Pick L2 strengths by mean APGR on a validation fold of the training split."""
    fit_rows = [it for it in train if not _is_val(it.qid)]
    val_rows = [it for it in train if _is_val(it.qid)]
    best: tuple[float, Hyper] | None = None
    for l2s, l2d in ((1e-6, 1e-6), (1e-6, 1e-5), (1e-5, 1e-5), (1e-5, 1e-4)):
        hp = Hyper(l2_shared=l2s, l2_delta=l2d)
        m = evaluate(fit(fit_rows, hp), val_rows)
        score = sum(v["apgr"] for k, v in m.items() if k != "routellm_mtbench") / (len(m) - 1)
        if log:
            print(
                f"  tune l2_shared={l2s} l2_delta={l2d}: val mean APGR {score:.4f}", file=sys.stderr
            )
        if best is None or score > best[0]:
            best = (score, hp)
    assert best is not None
    return best[1]


def _r(v: float, nd: int = 4) -> float:
    return round(float(v), nd)


def write_artifact(fitted: Fitted, path: Path, meta: dict[str, object], prune: float = 2e-4) -> int:
    """Compact JSON (gzipped when the name ends in .gz). Per-model deviations are
    stored sparse, pruned below ``prune`` (well under any feature's effect)."""
    models = {}
    for i, k in enumerate(fitted.keys):
        dl = fitted.delta[i]
        models[k] = {
            "bias": _r(fitted.bias[i]),
            "train_acc": _r(fitted.train_acc[i]),
            "center": _r(fitted.center[i]),
            "delta": {str(j): _r(v) for j, v in enumerate(dl) if abs(v) >= prune},
        }
    doc = {
        "format": "switchman-quality",
        "version": 1,
        "features_version": FEATURES_VERSION,
        "n_features": N_FEATURES,
        "hash_bits": HASH_BITS,
        "dense_names": list(DENSE_NAMES),
        **meta,
        "shared": [_r(v) for v in fitted.shared],
        "models": models,
    }
    raw = json.dumps(doc, separators=(",", ":")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        raw = gzip.compress(raw, 9, mtime=0)  # mtime=0: same bytes for same model
    path.write_bytes(raw)
    return len(raw)


def run(
    data_dir: Path,
    out: Path | None,
    hp: Hyper | None = None,
    do_tune: bool = False,
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
    log: bool = False,
) -> dict[str, object]:
    """Load, split, (tune,) fit, evaluate on the fixed eval split, write the artifact.
    ``limit`` keeps every n-th training prompt (a small, fast run for tests)."""
    t0 = time.monotonic()
    items = D.load_all(data_dir, datasets)
    train, ev, dropped = D.split(items)
    if limit:
        step = max(1, len(train) // limit)
        train = train[::step]
    if log:
        print(
            f"loaded {len(items)} prompts: {len(train)} train, {len(ev)} eval, "
            f"{dropped} train dropped as cross-data-set duplicates of eval",
            file=sys.stderr,
        )
    if do_tune:
        hp = tune(train, log)
    hp = hp or Hyper()
    fitted = fit(train, hp, log)
    metrics = evaluate(fitted, ev)
    counts: dict[str, dict[str, int]] = {}
    for name, rows in (("train", train), ("eval", ev)):
        for it in rows:
            c = counts.setdefault(it.dataset, {"train": 0, "eval": 0})
            c[name] += 1
    meta: dict[str, object] = {
        "created": time.strftime("%Y-%m-%d"),
        "datasets": SOURCES,
        "split_rule": D.SPLIT_RULE,
        "counts": counts,
        "dropped_cross_dataset_duplicates": dropped,
        "hyper": hp.__dict__,
        "pairs": PAIRS,
        "metrics": metrics,
    }
    size = write_artifact(fitted, out, meta) if out else 0
    return {
        "metrics": metrics,
        "counts": counts,
        "dropped": dropped,
        "hyper": hp.__dict__,
        "artifact": str(out) if out else None,
        "artifact_bytes": size,
        "seconds": round(time.monotonic() - t0, 1),
        "train_qids": [(it.dataset, it.qid) for it in train],
    }


def train_main(argv: list[str] | None = None) -> int:
    """``switchman train``: fit the quality predictor and write its artifact."""
    ap = argparse.ArgumentParser(prog="switchman train", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="outcome data sets (default $SWITCHMAN_DATA_SETS or ../shared/data)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="artifact path (.json[.gz])")
    ap.add_argument(
        "--tune",
        action="store_true",
        help="choose L2 strengths on a validation fold of the training split",
    )
    ap.add_argument("--json", action="store_true", help="print metrics as JSON")
    a = ap.parse_args(argv)
    data_dir = a.data_dir or D.default_data_dir()
    if not data_dir.is_dir():
        print(f"switchman train: data directory not found: {data_dir}", file=sys.stderr)
        return 2
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("switchman train: needs numpy (pip install numpy)", file=sys.stderr)
        return 2
    res = run(data_dir, a.out, do_tune=a.tune, log=not a.json)
    res.pop("train_qids")
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_table(res["metrics"]))  # type: ignore[arg-type]
        print(f"artifact: {res['artifact']} ({res['artifact_bytes']} bytes), {res['seconds']} s")
    return 0


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    lines = [
        f"{'data set':18} {'n':>5} {'APGR':>6} {'rand':>6} {'orac':>6} {'CPT50':>6} "
        f"{'rand':>6} {'CPT80':>6} {'rand':>6} {'AUC':>5}"
    ]
    for ds, m in metrics.items():
        lines.append(
            f"{ds:18} {int(m['n']):5d} {m['apgr']:6.3f} {m['random_apgr']:6.3f} "
            f"{m['oracle_apgr']:6.3f} {m['cpt50']:6.1%} {m['random_cpt50']:6.1%} "
            f"{m['cpt80']:6.1%} {m['random_cpt80']:6.1%} {m['mean_auc']:5.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(train_main())
