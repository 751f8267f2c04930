"""Admin-made config changes: persisted in ``<data_dir>/managed.toml`` and
applied to the running daemon.

Layering at start: built-in defaults, the user's TOML, command-line overrides,
then managed.toml last (``with_managed``). At runtime a change is a partial
config ("delta") merged over the effective config with the same rules as the
files (``config.merge``: named entries replaced whole). Because that merge is
associative, merging the delta into the stored overlay and re-merging at the
next start yields the same config as applying it now.

Secrets never appear here: providers carry key *references* only.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import tomli_w

from switchman_daemon.config import ConfigError, merge
from switchman_daemon.models import ModelRegistry
from switchman_shared.config_schema import Config

FILE = "managed.toml"
# Sections the running daemon cannot change in place (ports, ledger URL, sim).
RESTART_SECTIONS = frozenset({"daemon", "sim", "ledger"})


def path(data_dir: Path) -> Path:
    return data_dir / FILE


def load_overlay(data_dir: Path) -> dict[str, Any]:
    """The stored overlay, or {} if there is none."""
    p = path(data_dir)
    try:
        return tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from e


def with_managed(data_dir: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` with the managed overlay merged last, for ``load_config``."""
    return merge(dict(overrides or {}), load_overlay(data_dir))


def save_overlay(data_dir: Path, overlay: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half."""
    p = path(data_dir)
    text = "# Written by the switchman daemon (admin changes). Key references only.\n"
    text += tomli_w.dumps(overlay)
    fd, tmp = tempfile.mkstemp(prefix=".managed-", suffix=".toml", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump(config: Config) -> dict[str, Any]:
    """A config as plain TOML-able data (None = unset = omitted)."""
    return config.model_dump(mode="json", exclude_none=True)


def export_toml(config: Config) -> str:
    """The effective config as TOML; keys appear only as references."""
    return "# switchman effective config (key references only)\n" + tomli_w.dumps(dump(config))


def validate(data: dict[str, Any]) -> Config:
    """A config from raw data, checked as the daemon would check it at start."""
    try:
        cfg = Config.model_validate(data)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"invalid config: {e}") from e
    try:
        ModelRegistry(cfg)  # cross-references: model -> provider, pool -> model
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


class ConfigEditor:
    """Serialises admin changes: validate, persist the overlay, apply live."""

    def __init__(self, data_dir: Path, current: Callable[[], Config],
                 apply: Callable[[Config], Awaitable[None]]) -> None:
        self.data_dir = data_dir
        self._current = current
        self._apply = apply
        self._lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self._current()

    async def change(self, delta: dict[str, Any], *, dry_run: bool = False) -> Config:
        """Merge ``delta`` over the effective config; on success persist and apply it.
        Raises ConfigError (nothing written or applied) if the result is invalid."""
        async with self._lock:
            new = validate(merge(dump(self._current()), delta))
            if dry_run:
                return new
            overlay = merge(load_overlay(self.data_dir), delta)
            await asyncio.to_thread(save_overlay, self.data_dir, overlay)
            await self._apply(new)
            return new


def changed_sections(old: Config, new: Config) -> list[str]:
    a, b = dump(old), dump(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
