"""The app icon and the system-tray icon (today's spend, quick open, quit)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QRectF, Qt, QTimer
from PySide6.QtGui import QAction, QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon, QWidget

from switchman_gui.connection import Connection
from switchman_gui.widgets import money
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import stats_pb2

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def app_icon() -> QIcon:
    """assets/icon.svg (a source checkout), else the same mark drawn in code."""
    for name in ("icon.svg", "icon.png"):
        if (ASSETS / name).exists():
            icon = QIcon(str(ASSETS / name))
            if not icon.isNull():
                return icon
    pm = QPixmap(64, 64)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setBrush(QColor("#2f7ef6"))
    p.setPen(Qt.PenStyle.NoPen)
    p.drawRoundedRect(QRectF(2, 2, 60, 60), 14, 14)
    p.setPen(QPen(QColor("white"), 5, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    p.drawLine(12, 32, 50, 32)
    p.drawLine(28, 32, 48, 16)
    p.drawLine(28, 32, 48, 48)
    p.end()
    return QIcon(pm)


def today_start(now: float | None = None) -> float:
    lt = time.localtime(time.time() if now is None else now)
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))


class Tray(QObject):
    """Tray icon whose tooltip and menu show today's spend."""

    def __init__(self, conn: Connection, window: QWidget, quit_fn: Any) -> None:
        super().__init__(window)
        self.conn, self.window = conn, window
        self.today_usd: float | None = None
        self.icon = QSystemTrayIcon(app_icon(), self)
        menu = QMenu(window)
        self.spend_action = QAction("Today: —", menu)
        self.spend_action.setEnabled(False)
        open_action = QAction("Open console", menu)
        open_action.triggered.connect(self.show_window)
        quit_action = QAction("Quit console", menu)
        quit_action.triggered.connect(quit_fn)
        menu.addAction(self.spend_action)
        menu.addSeparator()
        menu.addAction(open_action)
        menu.addAction(quit_action)
        self.menu = menu
        self.icon.setContextMenu(menu)
        self.icon.activated.connect(self._activated)
        self.icon.setToolTip("Switchman")
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(3000)
        self._timer.timeout.connect(self.refresh)
        conn.connected.connect(lambda _s: self.refresh())
        conn.stats.connect(lambda _u: self._timer.start() if not self._timer.isActive()
                           else None)
        conn.disconnected.connect(lambda _m: self._set_text("daemon not connected"))
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.icon.show()

    @property
    def available(self) -> bool:
        return self.icon.isVisible()

    def refresh(self) -> None:
        since = today_start()

        def fetch(c: AdminClient) -> float:
            r = c.call(c.stats.GetRollups, stats_pb2.GetRollupsRequest(
                resolution=stats_pb2.RESOLUTION_HOUR, since=since))
            return sum(x.totals.spend_usd for x in r.rollups)

        def show(v: float) -> None:
            self.today_usd = v
            self._set_text(f"today {money(v)}")

        self.conn.call(fetch, show, quiet=True)

    def _set_text(self, text: str) -> None:
        self.spend_action.setText(text[:1].upper() + text[1:])
        self.icon.setToolTip(f"Switchman — {text}")

    def show_window(self) -> None:
        self.window.showNormal()
        self.window.raise_()
        self.window.activateWindow()

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger,
                      QSystemTrayIcon.ActivationReason.DoubleClick):
            self.show_window()
