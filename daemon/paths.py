"""Where the daemon keeps its files, per platform (XDG on Linux, ~/Library on
macOS, %LOCALAPPDATA% on Windows), overridable with ``--data-dir`` or
``SWITCHMAN_DATA_DIR``."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import platformdirs

APP = "switchman"


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The data directory (ledger, admin token, state), created if missing."""
    raw = override or os.environ.get("SWITCHMAN_DATA_DIR")
    path = Path(raw) if raw else Path(platformdirs.user_data_dir(APP, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_file() -> Path:
    """The default user config path (may not exist)."""
    raw = os.environ.get("SWITCHMAN_CONFIG")
    if raw:
        return Path(raw)
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.toml"


def ledger_url(data: Path) -> str:
    return f"sqlite:///{(data / 'ledger.db').resolve()}"


def instance_id(data: Path) -> str:
    """This daemon's stable id (``instance-id`` in the data dir, made on first use).

    Stable across restarts so a daemon recovers (and releases budget holds of) the
    requests its previous run left open on a shared ledger, and only those.
    """
    path = data / "instance-id"
    try:
        found = path.read_text().strip()
        if found:
            return found
    except FileNotFoundError:
        pass
    new = "d" + secrets.token_hex(6)
    path.write_text(new + "\n")
    return new
