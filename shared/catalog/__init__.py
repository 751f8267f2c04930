"""The shipped price/model catalog (``models.json`` beside this file).

Prices live here as data, never as numbers in code; a config may override any
field per model.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict


class SimProfile(BaseModel):
    """How the built-in simulator plays a model."""

    model_config = ConfigDict(extra="forbid")
    style: str  # "anthropic" | "openai"
    ttft_ms: float = 500.0
    prefill_tok_per_s: float = 50000.0
    tok_per_s: float = 80.0


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    family: str
    display_name: str = ""
    input: float
    output: float
    cache_read: float
    cache_write_5m: float
    cache_write_1h: float
    min_cache_prefix: int = 1024
    context_window: int = 128000
    max_output: int = 8192
    tools: bool = True
    vision: bool = False
    thinking: bool = False
    quality: float = 0.5
    aliases: list[str] = []
    sim: SimProfile | None = None


@cache
def load_catalog() -> dict[str, CatalogModel]:
    """Catalog models by id (aliases included as extra keys)."""
    raw: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath("models.json").read_text("utf-8")
    )
    out: dict[str, CatalogModel] = {}
    for item in raw["models"]:
        m = CatalogModel.model_validate(item)
        out[m.id] = m
        for alias in m.aliases:
            out.setdefault(alias, m)
    return out


def catalog_version() -> str:
    raw = json.loads(resources.files(__package__).joinpath("models.json").read_text("utf-8"))
    return str(raw.get("version", "unknown"))
