"""Console fixtures: the real MainWindow, connected over gRPC to a real daemon
(admin_daemon: simulated providers, in-memory keyring). Import the fixtures
into a test module with ``from tests.support.gui import console, window``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchman_gui import theme
from switchman_gui.app import MainWindow
from switchman_gui.connection import CONNECTED, Connection
from tests.support.running import RunningDaemon

WAIT_MS = 15000


@pytest.fixture
def window(admin_daemon: RunningDaemon, qtbot: Any, qapp: Any, tmp_path: Path
           ) -> Iterator[MainWindow]:
    theme.install(qapp, "light")
    conn = Connection(admin_daemon.daemon.data_dir)
    home = tmp_path / "home"
    home.mkdir()
    win = MainWindow(conn, ask_to_start=False, home=home)
    qtbot.addWidget(win)
    win.show()
    conn.start()
    qtbot.waitUntil(lambda: conn.state == CONNECTED, timeout=WAIT_MS)
    try:
        yield win
    finally:
        conn.close()


def settle(qtbot: Any, win: MainWindow, ms: int = 50) -> None:
    """Wait until no call is in flight (and its result delivered)."""
    qtbot.waitUntil(lambda: win.conn.worker.pending == 0, timeout=WAIT_MS)
    qtbot.wait(ms)


def wait_for(qtbot: Any, fn: Callable[[], Any], timeout: int = WAIT_MS) -> None:
    def check() -> None:
        assert fn()
    qtbot.waitUntil(check, timeout=timeout)


def send_messages(d: RunningDaemon, n: int = 2, session: str = "gui-sess",
                  model: str = "sim-claude-cheap") -> None:
    for _ in range(n):
        r = httpx.post(f"{d.url}/v1/messages", timeout=30, headers={
            "x-api-key": "local", "anthropic-version": "2023-06-01",
            "x-claude-code-session-id": session}, json={
            "model": model, "max_tokens": 16,
            "messages": [{"role": "user", "content": "hello [[sim:reply hi]]"}]})
        assert r.status_code == 200, r.text
    d.ctx.ledger.flush()
