"""The model pool as the daemon serves it: config entries resolved against the
price catalog, plus alias and pool lookup."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from switchman_shared.catalog import CatalogModel, load_catalog
from switchman_shared.config_schema import Config


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write_5m: float
    cache_write_1h: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str  # the pool's name for it (what clients may ask for)
    upstream_id: str  # what the provider calls it
    provider: str
    prices: Prices
    min_cache_prefix: int
    context_window: int
    max_output: int
    tools: bool
    vision: bool
    thinking: bool
    quality: float
    enabled: bool = True


class UnknownModel(LookupError):
    pass


class ModelRegistry:
    """Resolves a requested model name to pool models."""

    def __init__(self, config: Config) -> None:
        catalog = load_catalog()
        self.models: dict[str, ModelInfo] = {}
        for name, mc in config.models.items():
            if mc.provider not in config.providers:
                raise ValueError(f"model {name!r}: unknown provider {mc.provider!r}")
            upstream = mc.upstream_id or name
            seen = {(mc.provider, upstream)}
            for i, dep in enumerate(mc.deployments or (), 1):
                if dep.provider not in config.providers:
                    raise ValueError(f"model {name!r}: deployment {i}: unknown provider "
                                     f"{dep.provider!r}")
                where = (dep.provider, dep.upstream_id or upstream)
                if where in seen:
                    raise ValueError(f"model {name!r}: deployment {i}: {where[1]!r} on "
                                     f"{where[0]!r} is listed twice")
                seen.add(where)
            cat: CatalogModel | None = catalog.get(mc.catalog or upstream) or catalog.get(name)

            def pick(field: str, _mc=mc, _cat=cat, _name=name):
                v = getattr(_mc, field)
                if v is not None:
                    return v
                if _cat is None:
                    raise ValueError(
                        f"model {_name!r}: {field} not set and no catalog entry to take it from"
                    )
                return getattr(_cat, field)

            self.models[name] = ModelInfo(
                name=name,
                upstream_id=upstream,
                provider=mc.provider,
                prices=Prices(
                    input=pick("input"),
                    output=pick("output"),
                    cache_read=pick("cache_read"),
                    cache_write_5m=pick("cache_write_5m"),
                    cache_write_1h=pick("cache_write_1h"),
                ),
                min_cache_prefix=pick("min_cache_prefix"),
                context_window=pick("context_window"),
                max_output=pick("max_output"),
                tools=pick("tools"),
                vision=pick("vision"),
                thinking=pick("thinking"),
                quality=pick("quality"),
                enabled=mc.enabled,
            )
        self.pools: dict[str, list[str]] = {}
        self.default_pool: str | None = None
        for pname, pc in config.pools.items():
            for m in pc.models:
                if m not in self.models:
                    raise ValueError(f"pool {pname!r}: unknown model {m!r}")
            self.pools[pname] = list(pc.models)
            if pc.default and self.default_pool is None:
                self.default_pool = pname
        if self.default_pool is None and self.pools:
            self.default_pool = next(iter(self.pools))
        self._exact_alias = {k: v for k, v in config.aliases.items() if not _is_glob(k)}
        self._glob_alias = [(k, v) for k, v in config.aliases.items() if _is_glob(k)]
        self._cache: dict[str, tuple[str, list[str]]] = {}
        for rule in [*config.routing.rules, *config.routing.semantic]:
            try:
                self.resolve(rule.route_to)
            except UnknownModel:
                raise ValueError(f"routing rule {rule.name or rule.route_to!r}: route_to "
                                 f"{rule.route_to!r} is not a model, pool or alias") from None

    def resolve(self, requested: str) -> tuple[str, list[str]]:
        """(kind, candidates) for a requested name: kind is "model" (served as
        asked, or via an alias to one model) or "pool" (router picks)."""
        hit = self._cache.get(requested)
        if hit is not None:
            return hit
        out = self._resolve(requested)
        if len(self._cache) < 4096:
            self._cache[requested] = out
        return out

    def _resolve(self, requested: str) -> tuple[str, list[str]]:
        name = requested
        for _ in range(4):  # aliases may point at aliases; bounded
            if name in self.models and self.models[name].enabled:
                return "model", [name]
            if name in self.pools:
                return "pool", [m for m in self.pools[name] if self.models[m].enabled]
            target = self._exact_alias.get(name)
            if target is None:
                for pattern, t in self._glob_alias:
                    if fnmatch.fnmatchcase(name, pattern):
                        target = t
                        break
            if target is None:
                break
            name = target
        # Providers' own ids are accepted too (e.g. "claude-sonnet-5" served by a
        # pool model whose upstream id it is).
        for m in self.models.values():
            if m.upstream_id == requested and m.enabled:
                return "model", [m.name]
        raise UnknownModel(requested)

    def visible(self) -> list[ModelInfo]:
        return [m for m in self.models.values() if m.enabled]


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")
