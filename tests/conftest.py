from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.running import RunningDaemon

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
