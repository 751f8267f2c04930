"""Deployments of one model: the same model served by several providers (its
own provider and, say, an OpenRouter route), with the model's prices and
quality.

Each cache session sticks to one deployment, so its provider-side prompt cache
stays warm, and sessions spread over deployments in proportion to their
weights: weighted rendezvous (highest-random-weight) hashing, score
``-weight / ln(u)`` with ``u`` uniform in (0, 1) from a stable hash of
(session key, deployment id). Adding or removing a deployment moves only the
sessions that must move. The other deployments, in the same per-session order,
are the first fallbacks when the chosen one fails.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Container
from dataclasses import dataclass
from hashlib import blake2b

from switchman_daemon.models import ModelInfo, ModelRegistry
from switchman_shared.config_schema import Config

_SCALE = 1.0 / 2.0**64


@dataclass(frozen=True, slots=True)
class Deployment:
    model: ModelInfo  # the model as served here (provider and upstream id of this deployment)
    weight: float
    id: bytes  # stable id hashed with the session key: b"provider/upstream_id"


def unit_hash(session: str, dep_id: bytes) -> float:
    """A stable uniform number in (0, 1) for (session, deployment); never
    Python's per-process salted ``hash()``."""
    h = blake2b(dep_id + b"\x00" + session.encode("utf-8", "surrogatepass"), digest_size=8)
    return (int.from_bytes(h.digest(), "big") + 0.5) * _SCALE


def rendezvous_order(deployments: tuple[Deployment, ...], session: str) -> list[Deployment]:
    """``deployments`` best first for ``session``: the first is the session's
    deployment, the rest its failover order. Deterministic across processes."""
    scored = sorted(
        ((-d.weight / math.log(unit_hash(session, d.id)), i) for i, d in enumerate(deployments)),
        reverse=True)
    return [deployments[i] for _, i in scored]


def build(config: Config, registry: ModelRegistry,
          providers: Container[str]) -> dict[str, tuple[Deployment, ...]]:
    """Model name -> its deployments (the model's own first), for models with
    more than one deployment whose provider is available (in ``providers``)."""
    out: dict[str, tuple[Deployment, ...]] = {}
    for name, mc in config.models.items():
        if not mc.deployments:
            continue
        base = registry.models.get(name)
        if base is None:
            continue
        deps: list[Deployment] = []
        if base.provider in providers:
            deps.append(Deployment(base, mc.weight or 1.0,
                                   f"{base.provider}/{base.upstream_id}".encode()))
        for dc in mc.deployments:
            if dc.provider not in providers:
                continue
            upstream = dc.upstream_id or base.upstream_id
            info = dataclasses.replace(base, provider=dc.provider, upstream_id=upstream)
            deps.append(Deployment(info, dc.weight, f"{dc.provider}/{upstream}".encode()))
        if len(deps) > 1 or (deps and deps[0].model is not base):
            out[name] = tuple(deps)
    return out


def label(m: ModelInfo) -> str:
    """How reasons name a deployment: the model and where it is served."""
    return f"{m.name} on {m.provider}"
