from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.running import RunningDaemon


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    # `switchman ...` commands run in-process call logs.setup(), which points the
    # root logger at the sys.stderr of that moment: pytest's capture file, closed
    # when the test ends. Later daemons logging to it print "Logging error".
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# admin-plane fixtures: mem_keyring, admin_daemon, client; database backends:
# backend, db_url (sqlite and postgresql), pg_url
pytest_plugins = ["tests.support.admin", "tests.support.backends"]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    """A real daemon on 127.0.0.1 with the built-in simulated providers (no delays)."""
    d = RunningDaemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()
