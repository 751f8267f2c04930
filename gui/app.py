"""The console's main window and entry point (``switchman console`` / ``switchman up``
/ ``python -m switchman_gui``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from switchman_gui import theme
from switchman_gui.connection import CONNECTED, STARTING, Connection
from switchman_gui.pages.agents import AgentsPage
from switchman_gui.pages.budgets import BudgetsPage
from switchman_gui.pages.daemon import DaemonPage
from switchman_gui.pages.models import ModelsPage
from switchman_gui.pages.overview import OverviewPage
from switchman_gui.pages.providers import ProvidersPage
from switchman_gui.pages.routing import RoutingPage
from switchman_gui.pages.sessions import SessionsPage
from switchman_gui.tray import Tray, app_icon
from switchman_gui.widgets import Page

PAGES: list[tuple[str, type[Page]]] = [
    ("Overview", OverviewPage), ("Sessions", SessionsPage), ("Providers", ProvidersPage),
    ("Models", ModelsPage), ("Routing", RoutingPage), ("Budgets", BudgetsPage),
    ("Agents", AgentsPage), ("Daemon", DaemonPage),
]
_DOT = {CONNECTED: "#20a464", STARTING: "#e6a700"}


class Banner(QFrame):
    """A dismissable message strip above the pages (errors stay until closed)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(10, 4, 4, 4)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QPushButton("✕")
        close.setFlat(True)
        close.setFixedWidth(28)
        close.setToolTip("Dismiss (Esc)")
        close.setAccessibleName("Dismiss message")
        close.clicked.connect(self.hide)
        lay.addWidget(self.label, 1)
        lay.addWidget(close)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def show_message(self, text: str, level: str) -> None:
        color = "#e0454b" if level == "error" else "#2f7ef6"
        self.setStyleSheet(f"QFrame#banner {{ background: {color}22; "
                           f"border: 1px solid {color}; }}")
        self.label.setText(text)
        self.show()
        if level == "error":
            self._timer.stop()
        else:
            self._timer.start(6000)


class MainWindow(QMainWindow):
    def __init__(self, conn: Connection, *, ask_to_start: bool = True,
                 auto_start: bool = False, home: Path | None = None) -> None:
        super().__init__()
        self.conn = conn
        self.ask_to_start, self.auto_start = ask_to_start, auto_start
        self.messages: list[tuple[str, str]] = []  # (level, text), newest last
        self.setWindowTitle("Switchman")
        self.setWindowIcon(app_icon())
        self.resize(1280, 860)

        self.nav = QListWidget()
        self.nav.setObjectName("nav")
        self.nav.setAccessibleName("Pages")
        self.nav.setFixedWidth(170)
        self.stack = QStackedWidget()
        self.pages: dict[str, Page] = {}
        for i, (name, cls) in enumerate(PAGES):
            page = cls(conn, home=home) if cls is AgentsPage else cls(conn)  # type: ignore[call-arg]
            self.pages[name] = page
            self.stack.addWidget(page)
            self.nav.addItem(f"{name}")
            self.nav.item(i).setToolTip(f"{page.title} (Ctrl+{i + 1})")
            sc = QShortcut(QKeySequence(f"Ctrl+{i + 1}"), self)
            sc.activated.connect(lambda i=i: self.go(i))
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)

        self.banner = Banner()
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 6, 6, 0)
        rl.addWidget(self.banner)
        rl.addWidget(self.stack, 1)
        central = QWidget()
        cl = QHBoxLayout(central)
        cl.setContentsMargins(6, 6, 0, 0)
        cl.addWidget(self.nav)
        cl.addWidget(right, 1)
        self.setCentralWidget(central)
        self.setTabOrder(self.nav, self.stack)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.banner.hide)
        QShortcut(QKeySequence.StandardKey.Refresh, self, self.refresh_current)

        self.state_label = QLabel("")
        self.statusBar().addPermanentWidget(self.state_label)
        conn.state_changed.connect(self._state)
        conn.message.connect(self.show_message)
        conn.daemon_missing.connect(self._daemon_missing)
        self._state(conn.state, "")
        self.nav.setCurrentRow(0)
        self.tray = Tray(conn, self, self.quit)
        self._quitting = False

    def go(self, index: int) -> None:
        self.nav.setCurrentRow(index)
        self.stack.currentWidget().setFocus()
        self.stack.currentWidget().focusNextChild()

    def page(self, name: str) -> Any:
        return self.pages[name]

    def refresh_current(self) -> None:
        w = self.stack.currentWidget()
        if isinstance(w, Page):
            w.refresh()

    # -- messages ------------------------------------------------------------------

    def show_message(self, text: str, level: str) -> None:
        """Where every user-facing message ends up (status bar + banner)."""
        self.messages.append((level, text))
        del self.messages[:-50]
        self.statusBar().showMessage(text, 10000)
        self.banner.show_message(text, level)

    def _state(self, state: str, detail: str) -> None:
        color = _DOT.get(state, "#e0454b")
        self.state_label.setText(f"<span style='color:{color}'>●</span> {state}"
                                 + (f" · {detail}" if detail else ""))
        if state == CONNECTED and self.banner.isVisible() \
                and "not reachable" in self.banner.label.text():
            self.banner.hide()

    def _daemon_missing(self, message: str) -> None:
        if self.auto_start:
            self.conn.start_daemon()
            return
        if not self.ask_to_start:
            return
        box = QMessageBox(QMessageBox.Icon.Question, "Start Switchman?",
                          "No Switchman daemon is running. Start it now in the background?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setInformativeText(message)
        box.finished.connect(lambda r: self.conn.start_daemon()
                             if r == QMessageBox.StandardButton.Yes else
                             self.go(len(PAGES) - 1))
        box.open()

    # -- lifecycle ----------------------------------------------------------------

    def quit(self) -> None:
        self._quitting = True
        self.close()
        QApplication.quit()

    def closeEvent(self, e: Any) -> None:  # Qt override
        if self.tray.available and not self._quitting:
            self.hide()
            self.tray.icon.showMessage("Switchman", "The console keeps running in the tray.",
                                       app_icon(), 3000)
            e.ignore()
            return
        self.tray.icon.hide()
        self.conn.close()
        super().closeEvent(e)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="switchman console", description="Switchman console")
    p.add_argument("--data-dir", default=None, help="the daemon's data directory")
    p.add_argument("--start", action="store_true",
                   help="start the daemon without asking if it is not running")
    p.add_argument("--theme", choices=["light", "dark"], default=None,
                   help="override the OS colour scheme")
    return p


def run(data_dir: str | os.PathLike[str] | None = None, *, auto_start: bool = False,
        theme_name: str | None = None, argv: list[str] | None = None) -> int:
    """Open the console (blocks until it is closed)."""
    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("Switchman")
    app.setDesktopFileName("switchman")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    theme.install(app, theme_name)
    conn = Connection(data_dir)
    win = MainWindow(conn, auto_start=auto_start)
    win.show()
    conn.start()
    if not win.tray.available:
        app.setQuitOnLastWindowClosed(True)
    return app.exec()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.data_dir, auto_start=args.start, theme_name=args.theme)
