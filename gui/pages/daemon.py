"""Daemon: connection state and the daemon's status; start it when it is not
running, stop it, export its config. First-run guidance lives here too."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QWidget,
)

from switchman_gui.connection import CONNECTED, DISCONNECTED, Connection
from switchman_gui.widgets import Note, Page

FIELDS = ["State", "Version", "Router URL", "Process", "Uptime", "Providers", "Models",
          "Active sessions", "Client keys", "Data folder"]


def uptime(s: float) -> str:
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m} min" if h else f"{m} min {sec} s"


class DaemonPage(Page):
    title = "Daemon"
    hint = "The console manages the background daemon over its local admin socket; it " \
           "reconnects by itself when the daemon restarts."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.guide = Note("")
        self.body.addWidget(self.guide)
        form = QFormLayout()
        self.values: dict[str, QLabel] = {}
        for f in FIELDS:
            v = QLabel("—")
            v.setWordWrap(True)
            self.values[f] = v
            form.addRow(f, v)
        self.body.addLayout(form)
        row = QHBoxLayout()
        self.start_btn = QPushButton("&Start daemon")
        self.start_btn.clicked.connect(conn.start_daemon)
        self.reconnect_btn = QPushButton("Re&connect now")
        self.reconnect_btn.clicked.connect(conn.try_connect)
        self.stop_btn = QPushButton("S&top daemon")
        self.stop_btn.clicked.connect(lambda: self.stop_daemon())
        self.export_btn = QPushButton("&Export config…")
        self.export_btn.clicked.connect(self.export_config)
        self.log_btn = QPushButton("Open &log")
        self.log_btn.clicked.connect(lambda: QDesktopServices.openUrl(
            QUrl.fromLocalFile(str(conn.log_path()))))
        for b in (self.start_btn, self.reconnect_btn, self.stop_btn, self.export_btn,
                  self.log_btn):
            row.addWidget(b)
        row.addStretch(1)
        self.body.addLayout(row)
        self.body.addStretch(1)
        conn.state_changed.connect(self._state)
        conn.status.connect(self._show_status)
        conn.connected.connect(self._show_status)
        self._state(conn.state, "")

    def _state(self, state: str, detail: str) -> None:
        self.values["State"].setText(f"{state}" + (f" — {detail}" if detail else ""))
        up = state == CONNECTED
        self.start_btn.setEnabled(state == DISCONNECTED)
        self.stop_btn.setEnabled(up)
        self.export_btn.setEnabled(up)
        self.reconnect_btn.setEnabled(not up)
        if up:
            self.guide.setText("Connected. Next: add provider keys (Ctrl+3) or keep the "
                               "built-in simulator, then point an agent at the router "
                               "(Ctrl+7).")
        else:
            self.guide.setText("No daemon connected. Start one here (or run `switchman up` / "
                               "`switchman daemon` in a terminal); the console connects as "
                               "soon as it answers.")
            for f in FIELDS[1:]:
                self.values[f].setText("—")

    def _show_status(self, s: Any) -> None:
        self.values["Version"].setText(s.version)
        self.values["Router URL"].setText(s.proxy_url)
        self.values["Process"].setText(f"pid {s.pid}")
        self.values["Uptime"].setText(uptime(s.uptime_s))
        self.values["Providers"].setText(", ".join(s.providers) or "—")
        self.values["Models"].setText(str(s.models))
        self.values["Active sessions"].setText(str(s.sessions_active))
        self.values["Client keys"].setText(
            "any key accepted from this machine (local-open)" if s.local_open
            else "team keys required")
        self.values["Data folder"].setText(s.data_dir)

    def stop_daemon(self, confirm: bool = True) -> None:
        if confirm and QMessageBox.question(
                self, "Stop daemon", "Stop the daemon? Agents pointed at it stop working "
                "until it runs again.") != QMessageBox.StandardButton.Yes:
            return
        self.conn.call(lambda c: c.shutdown(), lambda _r: self.conn.info("Daemon stopping."),
                       action="stop the daemon")

    def export_config(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export config", "switchman.toml",
                                              "TOML (*.toml)")
        if not path:
            return

        def save(text: str) -> None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            self.conn.info(f"Config exported to {path} (key references only, no keys).")

        self.conn.call(lambda c: c.export_config(), save, action="export the config")
