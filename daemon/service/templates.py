"""The service templates in ``packaging/`` and the icons in ``assets/``, found in
a source checkout or inside the PyInstaller bundle (which ships both)."""

from __future__ import annotations

import string
import sys
from pathlib import Path

ICON_SIZES = (16, 32, 48, 64, 128, 256, 512)


def _roots() -> list[Path]:
    roots = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        roots.append(Path(bundle))
    roots.append(Path(__file__).resolve().parents[2])  # daemon/service -> repository
    return roots


def find(relative: str) -> Path | None:
    for root in _roots():
        p = root / relative
        if p.exists():
            return p
    return None


def load(relative: str) -> str:
    """A template under ``packaging/``, e.g. ``systemd/switchman.service``."""
    p = find(f"packaging/{relative}")
    if p is None:
        raise FileNotFoundError(
            f"packaging/{relative} not found (looked in {', '.join(map(str, _roots()))}); "
            "reinstall Switchman from the bundle or a source checkout")
    return p.read_text("utf-8")


def render(relative: str, **values: str) -> str:
    """``load`` + ``${name}`` substitution; a missing value is an error."""
    return string.Template(load(relative)).substitute(values)


def icon_files() -> dict[int, Path]:
    """assets/icons/switchman-<size>.png that exist, by size."""
    out = {}
    for size in ICON_SIZES:
        p = find(f"assets/icons/switchman-{size}.png")
        if p is not None:
            out[size] = p
    return out
