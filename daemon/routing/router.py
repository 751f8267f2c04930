"""The routing seam: signals -> candidates -> score -> choice, with reasons.

This first router serves the requested model (or the model an alias names) and,
for pool names, scores the pool on the configured objective with capability
constraints. The cache-aware engine (issue #3) replaces ``score``; the flow
around it (fallbacks, explanation, budgets as constraints) stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from switchman_daemon.models import ModelInfo, ModelRegistry, UnknownModel
from switchman_daemon.routing.signals import Signals
from switchman_shared.config_schema import Config


@dataclass(slots=True)
class Decision:
    model: ModelInfo
    fallbacks: list[ModelInfo]
    how: str  # "requested" | "alias" | "pool"
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model.name,
            "how": self.how,
            "fallbacks": [m.name for m in self.fallbacks],
            "reasons": self.reasons,
        }


class NoCandidate(Exception):
    pass


class Router:
    def __init__(self, config: Config, registry: ModelRegistry) -> None:
        self.config = config
        self.registry = registry
        self._fallback_cache: dict[tuple[str, bool, bool, int], list[ModelInfo]] = {}

    def _capable(self, m: ModelInfo, s: Signals) -> bool:
        if s.has_tools and not m.tools:
            return False
        if s.has_images and not m.vision:
            return False
        return s.approx_input_tokens <= m.context_window

    def _score(self, m: ModelInfo, s: Signals, max_price: float) -> float:
        obj = self.config.routing.objective
        price = (m.prices.input + m.prices.output / 4) / max_price if max_price else 0.0
        return obj.quality * m.quality - obj.cost * price

    def choose(self, s: Signals) -> Decision:
        """Pick a model for ``s``; raises UnknownModel / NoCandidate."""
        kind, names = self.registry.resolve(s.requested_model)
        models = [self.registry.models[n] for n in names]
        if kind == "model":
            chosen = models[0]
            how = "requested" if chosen.name == s.requested_model else "alias"
            reasons = [
                f"{s.requested_model} served as {chosen.name}"
                if how == "alias"
                else f"{chosen.name} requested"
            ]
        else:
            capable = [m for m in models if self._capable(m, s)]
            if not capable:
                raise NoCandidate(
                    f"no model in pool {s.requested_model!r} can serve this request "
                    f"(tools={s.has_tools}, images={s.has_images}, "
                    f"~{s.approx_input_tokens} tokens)"
                )
            max_price = max(m.prices.input + m.prices.output / 4 for m in capable)
            capable.sort(key=lambda m: self._score(m, s, max_price), reverse=True)
            chosen = capable[0]
            how = "pool"
            reasons = [f"best objective score in pool {s.requested_model}"]
        return Decision(chosen, self._fallbacks(chosen, s), how, reasons)

    def _fallbacks(self, chosen: ModelInfo, s: Signals) -> list[ModelInfo]:
        """Configured fallbacks, else pool peers closest in quality (same
        provider family first), used when the choice is rate-limited or down."""
        # size bucket: context-window constraints only bite on large prompts
        key = (chosen.name, s.has_tools, s.has_images, s.approx_input_tokens >> 12)
        hit = self._fallback_cache.get(key)
        if hit is None:
            hit = self._fallback_cache[key] = self._compute_fallbacks(chosen, s)
        return list(hit)

    def _compute_fallbacks(self, chosen: ModelInfo, s: Signals) -> list[ModelInfo]:
        reg = self.registry
        configured = self.config.routing.fallbacks.get(chosen.name)
        if configured is not None:
            return [reg.models[n] for n in configured if n in reg.models and n != chosen.name]
        pool = reg.pools.get(reg.default_pool or "", [])
        peers = [
            reg.models[n]
            for n in pool
            if n != chosen.name and reg.models[n].enabled and self._capable(reg.models[n], s)
        ]
        chosen_kind = self.config.providers[chosen.provider].kind
        peers.sort(
            key=lambda m: (
                self.config.providers[m.provider].kind != chosen_kind,
                abs(m.quality - chosen.quality),
            )
        )
        return peers[:2]


__all__ = ["Decision", "NoCandidate", "Router", "UnknownModel"]
