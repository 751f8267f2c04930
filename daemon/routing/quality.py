"""Learned per-request quality estimate: P(model does well | request text).

Trained offline by ``switchman train`` (``switchman_daemon.training.quality_train``)
on router outcome data (MMLU-Pro 31 models, LLMRouter 9 models, RouteLLM GPT-4
vs Mixtral) and shipped as ``artifacts/quality-v1.json.gz``. Inference is pure
Python: a sparse dot product over ``routing.features`` output, a few µs per model.

How a pool model is scored::

    P = sigmoid(level + (w . x - centre))

* ``w`` (the *shape*: how this request moves the model's chance) is the learned
  head of the data model the pool model maps to (see ``data_model_for``), or,
  for models absent from the data (all current Claude / GPT-5 models), a blend
  of MMLU-Pro heads of models with about the same ability, where ability is
  the model's calibrated benchmark accuracy (``calibrate``) or else its
  catalog ``quality``. ``centre`` is the head's mean text term over the
  training prompts, so the text term averages ~0.
* ``level`` is ``logit(ModelInfo.quality)`` (the catalog prior or the user's
  config override) for every model, mapped or not; when quality is unset
  (<= 0) a price-tier prior is used. We deliberately do *not* use a mapped
  model's benchmark accuracy as its level: benchmark accuracies (MMLU-Pro
  ~0.2–0.7) and catalog priors live on different scales, and mixing them in one
  pool would make mapped models look systematically worse than unmapped ones.
"""

from __future__ import annotations

import gzip
import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchman_daemon.models import ModelInfo
from switchman_daemon.routing.features import FEATURES_VERSION, N_FEATURES, request_features

DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "quality-v1.json.gz"

# Catalog / provider ids that name a model in the training data but not by a
# normalised-name match. deepseek-chat is deliberately absent: the catalog's
# deepseek-chat is a later model than the May-2024 one in MMLU-Pro.
EXPLICIT_MAP: dict[str, str] = {
    "gpt-4o": "mmlu_pro/gpt-4o-2024-05-13",
    "gpt-4o-2024-05-13": "mmlu_pro/gpt-4o-2024-05-13",
    "gpt-4-1106-preview": "routellm/gpt-4-1106-preview",
    "gpt-4-turbo-preview": "routellm/gpt-4-1106-preview",
    "mixtral-8x7b-instruct": "mmlu_pro/Mixtral-8x7B-Instruct-v0.1",
}
# Lookup order when a normalised name occurs in several sources: most data first.
_SOURCE_ORDER = ("mmlu_pro", "llmrouter", "routellm")

# Price tier prior (output $/M -> quality) for models with no quality set.
# Anchored on the catalog's own pairs (Opus $25 ~0.95, Sonnet $15 ~0.88,
# GPT-4.1 $8 0.80, Haiku $5 0.72, GPT-4o-mini $0.6 0.60).
PRICE_TIERS: tuple[tuple[float, float], ...] = (
    (20.0, 0.93),
    (8.0, 0.85),
    (3.0, 0.75),
    (1.0, 0.68),
    (0.0, 0.60),
)
_BANDWIDTH = 0.04  # accuracy kernel width for blending MMLU-Pro heads
_NORM_RE = re.compile(r"[^a-z0-9]+")


def _norm(name: str) -> str:
    return _NORM_RE.sub("-", name.rsplit("/", 1)[-1].lower()).strip("-")


def _logit(p: float) -> float:
    p = min(0.995, max(0.005, p))
    return math.log(p / (1.0 - p))


def price_tier_prior(output_price: float) -> float:
    for floor, q in PRICE_TIERS:
        if output_price >= floor:
            return q
    return PRICE_TIERS[-1][1]


@dataclass(frozen=True, slots=True)
class Head:
    weights: list[float]  # dense, N_FEATURES (shared + model deviation)
    centre: float
    source: str  # data model key, or "blend:<ability>"


class QualityModel:
    """Loaded quality artifact. ``load()`` is cached per path; instances are
    read-only apart from small memo tables, so one can be shared."""

    _loaded: dict[Path, QualityModel] = {}  # noqa: RUF012 - process-wide cache

    def __init__(self, doc: dict[str, Any]) -> None:
        if doc.get("format") != "switchman-quality":
            raise ValueError("not a switchman quality artifact")
        if doc.get("features_version") != FEATURES_VERSION or doc.get("n_features") != N_FEATURES:
            raise ValueError(
                "quality artifact was trained on another feature layout; run `switchman train`"
            )
        self.meta = {k: v for k, v in doc.items() if k not in ("shared", "models")}
        shared: list[float] = doc["shared"]
        self.heads: dict[str, Head] = {}
        self.train_acc: dict[str, float] = {}
        self.bias: dict[str, float] = {}
        for key, m in doc["models"].items():
            w = list(shared)
            for j, v in m["delta"].items():
                w[int(j)] += v
            self.heads[key] = Head(w, float(m["center"]), key)
            self.train_acc[key] = float(m["train_acc"])
            self.bias[key] = float(m["bias"])
        self._by_norm: dict[str, str] = {}
        for src in reversed(_SOURCE_ORDER):  # earlier sources win
            for key in self.heads:
                if key.startswith(src + "/"):
                    self._by_norm[_norm(key.split("/", 1)[1])] = key
        self._ability: dict[str, float] = {}
        self._memo: dict[ModelInfo, tuple[Head, float]] = {}
        self._blend: dict[float, Head] = {}

    # --- loading ----------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None = None) -> QualityModel:
        p = (path or DEFAULT_ARTIFACT).resolve()
        hit = cls._loaded.get(p)
        if hit is None:
            raw = p.read_bytes()
            if p.suffix == ".gz":
                raw = gzip.decompress(raw)
            hit = cls(json.loads(raw))
            cls._loaded[p] = hit
        return hit

    # --- mapping ----------------------------------------------------------------
    def data_model_for(self, model: ModelInfo) -> str | None:
        """The training-data model a pool model is, if any: explicit table first,
        then a normalised-name match on the upstream id, then the pool name."""
        for name in (model.upstream_id, model.name):
            k = EXPLICIT_MAP.get(name.lower())
            if k in self.heads:
                return k
        for name in (model.upstream_id, model.name):
            k = self._by_norm.get(_norm(name))
            if k is not None:
                return k
        return None

    def calibrate(self, name: str, mmlu_pro_accuracy: float) -> None:
        """Place an unmapped model (pool name or upstream id) by its MMLU-Pro
        accuracy instead of its catalog quality when choosing its shape."""
        self._ability[name] = float(mmlu_pro_accuracy)
        self._memo.clear()

    def _blend_head(self, ability: float) -> Head:
        a = round(ability, 3)
        h = self._blend.get(a)
        if h is not None:
            return h
        # MMLU-Pro has 31 models spread over accuracies 0.18-0.72; an artifact
        # trained without it (tests, subsets) blends whatever heads it has
        cands = [(k, acc) for k, acc in self.train_acc.items() if k.startswith("mmlu_pro/")]
        cands = cands or list(self.train_acc.items())
        lo = min(acc for _, acc in cands)
        hi = max(acc for _, acc in cands)
        a_c = min(hi, max(lo, a))  # beyond the data: the strongest/weakest shapes
        wts = [(k, math.exp(-(((acc - a_c) / _BANDWIDTH) ** 2))) for k, acc in cands]
        tot = sum(w for _, w in wts)
        weights = [0.0] * N_FEATURES
        centre = 0.0
        for k, w in wts:
            if w / tot < 1e-3:
                continue
            hd = self.heads[k]
            s = w / tot
            centre += s * hd.centre
            for j, v in enumerate(hd.weights):
                weights[j] += s * v
        h = Head(weights, centre, f"blend:{a_c:.3f}")
        self._blend[a] = h
        return h

    def head_for(self, model: ModelInfo) -> tuple[Head, float]:
        """(shape head, level logit) for a pool model; memoised per ModelInfo."""
        hit = self._memo.get(model)
        if hit is not None:
            return hit
        q = model.quality if 0.0 < model.quality < 1.0 else price_tier_prior(model.prices.output)
        key = self.data_model_for(model)
        if key is not None:
            head = self.heads[key]
        else:
            ability = self._ability.get(model.name, self._ability.get(model.upstream_id, q))
            head = self._blend_head(ability)
        out = (head, _logit(q))
        self._memo[model] = out
        return out

    # --- prediction -------------------------------------------------------------
    def predict(self, features: dict[int, float], model: ModelInfo) -> float:
        """P(model does well on this request) in [0, 1]; ``features`` from
        ``routing.features.request_features``."""
        head, level = self.head_for(model)
        w = head.weights
        z = level + sum(map(operator.mul, map(w.__getitem__, features), features.values()))
        z -= head.centre
        if z < -30.0:
            return 0.0
        if z > 30.0:
            return 1.0
        return 1.0 / (1.0 + math.exp(-z))

    def predict_text(self, text: str, model: ModelInfo) -> float:
        return self.predict(request_features(text), model)

    def predict_data_model(self, features: dict[int, float], key: str) -> float:
        """The raw learned head (benchmark scale, own bias) of a training-data
        model, e.g. ``"mmlu_pro/gpt-4o-2024-05-13"`` — for evaluation and tests."""
        w = self.heads[key].weights
        z = self.bias[key] + sum(map(operator.mul, map(w.__getitem__, features), features.values()))
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
