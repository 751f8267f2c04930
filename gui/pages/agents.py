"""Agent setup: the exact settings that point Claude Code, Codex CLI, Aider and
SDK apps at the daemon, and a button that writes them where the agent reads them
(with a timestamped backup). The file logic lives in ``agent_setup``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTabBar,
    QWidget,
)

from switchman_gui.connection import Connection
from switchman_gui.widgets import Page
from switchman_shared import agent_setup
from switchman_shared.admin_errors import AdminError

DEFAULT_URL = "http://127.0.0.1:8787"


class AgentsPage(Page):
    title = "Agent setup"
    hint = "Point your coding agents at Switchman. “Write settings” edits the file the agent " \
           "reads, keeps everything else in it, and saves a timestamped backup first."

    def __init__(self, conn: Connection, parent: QWidget | None = None,
                 home: Path | None = None) -> None:
        super().__init__(conn, parent)
        self.home = home or Path.home()
        self.sdk_dir = self.home
        self.proxy_url = DEFAULT_URL
        self.tabs = QTabBar()
        for title in agent_setup.AGENTS.values():
            self.tabs.addTab(title)
        self.tabs.currentChanged.connect(lambda _i: self.update_plan())
        self.body.addWidget(self.tabs)

        form = QFormLayout()
        self.url_label = QLabel(self.proxy_url)
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("team key (leave empty while the daemon is local-open)")
        self.key_edit.textChanged.connect(lambda _t: self.update_plan())
        self.path_label = QLabel("")
        self.path_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.path_label, 1)
        self.dir_btn = QPushButton("Choose folder…")
        self.dir_btn.clicked.connect(self._choose_dir)
        row.addWidget(self.dir_btn)
        form.addRow("Router URL", self.url_label)
        form.addRow("Key", self.key_edit)
        form.addRow("Settings file", row)
        self.body.addLayout(form)

        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        self.preview = QPlainTextEdit()
        self.preview.setReadOnly(True)
        self.preview.setFont(mono)
        self.preview.setAccessibleName("File after the change")
        self.body.addWidget(QLabel("The file after the change:"))
        self.body.addWidget(self.preview, 2)
        self.notes = QLabel("")
        self.notes.setWordWrap(True)
        self.notes.setObjectName("hint")
        self.body.addWidget(self.notes)
        self.snippet = QPlainTextEdit()
        self.snippet.setReadOnly(True)
        self.snippet.setFont(mono)
        self.snippet.setMaximumHeight(90)
        self.body.addWidget(QLabel("Or set it by hand in a shell:"))
        self.body.addWidget(self.snippet)

        buttons = QHBoxLayout()
        self.write_btn = QPushButton("&Write settings")
        self.write_btn.clicked.connect(self.write)
        self.copy_btn = QPushButton("Copy s&hell lines")
        self.copy_btn.clicked.connect(
            lambda: QGuiApplication.clipboard().setText(self.snippet.toPlainText()))
        self.status = QLabel("")
        buttons.addWidget(self.write_btn)
        buttons.addWidget(self.copy_btn)
        buttons.addWidget(self.status, 1)
        self.body.addLayout(buttons)
        conn.status.connect(self._status)
        conn.connected.connect(self._status)
        self.update_plan()

    @property
    def agent(self) -> str:
        return list(agent_setup.AGENTS)[self.tabs.currentIndex()]

    def _status(self, s: Any) -> None:
        if s.proxy_url and s.proxy_url != self.proxy_url:
            self.proxy_url = s.proxy_url
            self.update_plan()

    def _choose_dir(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of the SDK app", str(self.sdk_dir))
        if d:
            self.sdk_dir = Path(d)
            self.update_plan()

    def current_plan(self) -> agent_setup.Plan:
        return agent_setup.plan(self.agent, home=self.home, proxy_url=self.proxy_url,
                                api_key=self.key_edit.text().strip(), sdk_dir=self.sdk_dir)

    def update_plan(self) -> None:
        self.url_label.setText(self.proxy_url)
        self.dir_btn.setVisible(self.agent == "sdk")
        key = self.key_edit.text().strip() or agent_setup.LOCAL_KEY
        self.snippet.setPlainText(agent_setup.env_snippet(self.agent, self.proxy_url, key))
        try:
            p = self.current_plan()
        except agent_setup.SetupError as e:
            self.path_label.setText("")
            self.preview.setPlainText("")
            self.notes.setText(str(e))
            self.write_btn.setEnabled(False)
            return
        exists = "exists" if p.old is not None else "will be created"
        self.path_label.setText(f"{p.path}  ({exists})")
        self.preview.setPlainText(p.new)
        self.notes.setText(p.notes)
        self.write_btn.setEnabled(not p.up_to_date)
        self.status.setText("already set up" if p.up_to_date else "")

    def write(self) -> None:
        try:
            p = self.current_plan()
            backup = agent_setup.apply(p)
        except (agent_setup.SetupError, OSError) as e:
            self.conn.report(AdminError("failed_precondition", str(e)), "write the settings")
            return
        msg = f"Wrote {p.path}" + (f" (backup: {backup.name})" if backup else "")
        self.status.setText(msg)
        self.conn.info(msg)
        self.update_plan()
        self.status.setText(msg)
