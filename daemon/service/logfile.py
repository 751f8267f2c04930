"""The daemon's log file when it runs as a service: rotating, under the
platform's user log directory (``~/.local/state/switchman/log`` on Linux,
``~/Library/Logs/switchman`` on macOS, ``%LOCALAPPDATA%\\switchman\\Logs`` on
Windows). Also ``tail``/``follow`` for ``switchman service logs``."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections import deque
from pathlib import Path
from typing import TextIO

import platformdirs

from .base import APP, LOG_NAME

MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 5  # at most ~30 MB of logs
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_log_file() -> Path:
    return Path(platformdirs.user_log_dir(APP, appauthor=False)) / LOG_NAME


def log_to_file(path: Path, max_bytes: int = MAX_BYTES,
                backups: int = BACKUPS) -> logging.handlers.RotatingFileHandler:
    """Send the root logger to a rotating ``path`` instead of stderr.

    Call after the normal logging setup: the file keeps that setup's formatter
    (text or JSON) and level. A service manager's stderr (journal, launchd's
    file) then only receives what is printed before this, e.g. a startup
    traceback, and is never an unrotated copy of the whole log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    fmt = next((h.formatter for h in root.handlers if h.formatter), None)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups, encoding="utf-8")
    handler.setFormatter(fmt or logging.Formatter(_TEXT))
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout):
            root.removeHandler(h)
    root.addHandler(handler)
    return handler


def tail(path: Path, lines: int = 50) -> list[str]:
    """The last ``lines`` lines of ``path`` (empty if it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n") for ln in deque(f, maxlen=lines)]
    except FileNotFoundError:
        return []


def follow(path: Path, out: TextIO, poll_s: float = 0.5,
           stop: float | None = None) -> None:
    """Print lines appended to ``path`` until interrupted (or ``stop``, a
    monotonic deadline); reopens the file when rotation replaces it."""
    f = None
    pos = 0
    try:
        while stop is None or time.monotonic() < stop:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = -1
            if f is None and size >= 0:
                f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                f.seek(0, 2)
                pos = f.tell()
            elif f is not None and 0 <= size < pos:  # rotated or truncated
                f.close()
                f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                pos = 0
            if f is not None:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                pos = f.tell()
            time.sleep(poll_s)
    finally:
        if f is not None:
            f.close()
