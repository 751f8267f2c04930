"""Loads the daemon's configuration: built-in defaults merged with the user's TOML."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from switchman_shared.config_schema import Config


class ConfigError(Exception):
    """The config file is unreadable or invalid; the message says where."""


def _defaults() -> dict[str, Any]:
    text = resources.files("switchman_shared.defaults").joinpath("default.toml").read_text()
    return tomllib.loads(text)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; named entries (providers, models, pools) are
    replaced whole, so a user's model definition never inherits stray fields."""
    out = dict(base)
    for key, value in over.items():
        if key in ("providers", "models", "pools", "aliases") and isinstance(value, dict):
            merged = dict(out.get(key, {}))
            merged.update(value)
            out[key] = merged
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: Path | None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then ``path`` (if given and present), then ``overrides``."""
    data = _defaults()
    if path is not None:
        try:
            user = tomllib.loads(Path(path).read_text("utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e
        if user.get("replace_defaults"):
            user.pop("replace_defaults")
            data = {"sim": data.get("sim", {})}
        data = merge(data, user)
    if overrides:
        data = merge(data, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid config:\n{e}") from e
