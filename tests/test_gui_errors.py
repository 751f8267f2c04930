"""Failures show as messages, never as crashes: a daemon that goes away (and
comes back), an invalid request, an unimplemented service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchman_gui import theme
from switchman_gui.app import MainWindow
from switchman_gui.connection import CONNECTED, DISCONNECTED, Connection
from switchman_gui.errors import describe
from switchman_shared.admin_errors import AdminError
from tests.support.gui import WAIT_MS, settle, wait_for, window  # noqa: F401
from tests.support.memory_keyring import MemoryKeyring
from tests.support.running import RunningDaemon


@pytest.fixture
def own_daemon(tmp_path: Path, mem_keyring: MemoryKeyring) -> Iterator[list[RunningDaemon]]:
    """A daemon the test may stop and replace; whichever runs at the end is stopped."""
    running = [RunningDaemon(tmp_path)]
    try:
        yield running
    finally:
        if running:
            running[-1].stop()


def test_daemon_going_away_is_a_message_and_the_console_reconnects(
        own_daemon: list[RunningDaemon], qtbot: Any, qapp: Any, tmp_path: Path) -> None:
    theme.install(qapp, "dark")
    d = own_daemon[0]
    conn = Connection(d.daemon.data_dir)
    win = MainWindow(conn, ask_to_start=False, home=tmp_path)
    qtbot.addWidget(win)
    win.show()
    conn.start()
    try:
        qtbot.waitUntil(lambda: conn.state == CONNECTED, timeout=WAIT_MS)
        settle(qtbot, win)
        own_daemon.pop().stop()
        wait_for(qtbot, lambda: conn.state == DISCONNECTED)
        assert conn.client is None
        errors = [m for lvl, m in win.messages if lvl == "error"]
        assert errors and "daemon is not reachable" in errors[-1]
        assert win.banner.isVisible() and "not reachable" in win.banner.label.text()
        assert "disconnected" in win.state_label.text()
        # pages keep working: a refresh while disconnected is a message too
        win.go(3)
        win.refresh_current()
        assert "not connected to the daemon" in win.messages[-1][1]

        own_daemon.append(RunningDaemon(tmp_path))  # same data dir: same socket and token
        wait_for(qtbot, lambda: conn.state == CONNECTED)
        wait_for(qtbot, lambda: win.page("Models").table.rowCount() == 6)
        assert not win.banner.isVisible()
    finally:
        conn.close()


def test_an_invalid_request_shows_the_daemons_message(window: MainWindow, qtbot: Any  # noqa: F811
                                                      ) -> None:
    page = window.page("Models")
    window.go(3)
    settle(qtbot, window)
    box = page.add_box
    box.cat_id.setCurrentText("does-not-exist")
    box.cat_name.setText("x")
    box.add_btn.click()
    wait_for(qtbot, lambda: window.messages and window.messages[-1][0] == "error")
    text = window.messages[-1][1]
    assert text.startswith("Could not add the model x: ") and "catalog" in text
    assert window.banner.isVisible() and window.statusBar().currentMessage() == text
    assert window.conn.state == CONNECTED  # an invalid request is not a lost daemon


def test_unimplemented_is_explained() -> None:
    msg = describe(AdminError("unimplemented", "Method not found!"), "load budgets")
    assert "Could not load budgets" in msg and "does not offer it yet" in msg
    assert "unexpected error" in describe(RuntimeError("boom"), "x")
