"""Where a running daemon's admin endpoint and token are, read from its data dir.

The daemon writes ``admin.json`` ({transport, address, pid}) and ``admin.token``
into its data directory. The default directory is computed exactly as
``switchman_daemon.paths.data_dir`` does (duplicated: shared must not import
the daemon).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from switchman_shared.admin_errors import UNAVAILABLE, AdminError

APP = "switchman"
ENDPOINT_FILE = "admin.json"
TOKEN_FILE = "admin.token"
SOCKET_FILE = "admin.sock"


def default_data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The daemon's data dir: ``override``, else $SWITCHMAN_DATA_DIR, else per-OS default."""
    raw = override or os.environ.get("SWITCHMAN_DATA_DIR")
    return Path(raw) if raw else Path(platformdirs.user_data_dir(APP, appauthor=False))


@dataclass(frozen=True, slots=True)
class Endpoint:
    transport: str  # "unix" | "tcp"
    address: str  # a gRPC target: "unix:/path/admin.sock" or "127.0.0.1:PORT"
    token: str
    pid: int | None = None


def discover(data_dir: str | os.PathLike[str] | None = None) -> Endpoint:
    """The endpoint of the daemon using ``data_dir``; AdminError(unavailable) if none."""
    d = default_data_dir(data_dir)
    try:
        info = json.loads((d / ENDPOINT_FILE).read_text("utf-8"))
        token = (d / TOKEN_FILE).read_text("utf-8").strip()
    except FileNotFoundError:
        raise AdminError(UNAVAILABLE, f"no running switchman daemon found in {d} "
                         "(start one with `switchman daemon`)") from None
    except (OSError, ValueError) as e:
        raise AdminError(UNAVAILABLE, f"cannot read the daemon's admin files in {d}: {e}") \
            from None
    return Endpoint(transport=str(info.get("transport", "")), address=str(info["address"]),
                    token=token, pid=info.get("pid"))
