"""Providers & keys: which upstreams the daemon knows, their keys (masked, with
fingerprint; the key itself lives only in the OS keyring, via the daemon) and
their health from a cheap real test call.

A typed key goes straight from the password field into one SetKey/TestKey
request: the field is cleared before the call starts and no widget or
attribute of the console keeps it.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QWidget,
)

from switchman_gui.connection import Connection
from switchman_gui.widgets import Note, Page, item, table
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import providers_pb2

HEADERS = ["Provider", "Kind", "Base URL", "Key", "Fingerprint", "Source", "Health"]
_SOURCE = {providers_pb2.KEY_SOURCE_KEYRING: "OS keyring", providers_pb2.KEY_SOURCE_ENV:
           "environment", providers_pb2.KEY_SOURCE_NONE: "—"}


class ProvidersPage(Page):
    title = "Providers & keys"
    hint = "Keys are sent once to the daemon, which stores them in your OS keyring. The " \
           "console never keeps or shows a key: only a masked form and a fingerprint."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.providers: list[Any] = []
        self.health: dict[str, str] = {}
        self.table = table(HEADERS)
        self.table.setAccessibleName("Providers")
        self.table.itemSelectionChanged.connect(self._selected)
        self.body.addWidget(self.table, 1)
        self.empty = Note("No providers configured.")
        self.empty.setVisible(False)
        self.body.addWidget(self.empty)

        form = QFormLayout()
        self.provider = QComboBox()
        self.provider.setAccessibleName("Provider")
        self.key_edit = QLineEdit()
        self.key_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.key_edit.setPlaceholderText("paste an API key; it goes to the OS keyring")
        self.key_edit.setAccessibleName("API key")
        self.key_edit.returnPressed.connect(self.save_key)
        form.addRow("&Provider", self.provider)
        form.addRow("API &key", self.key_edit)
        self.body.addLayout(form)

        row = QHBoxLayout()
        self.save_btn = QPushButton("&Save key")
        self.test_btn = QPushButton("&Test")
        self.test_all_btn = QPushButton("Test &all")
        self.remove_btn = QPushButton("&Remove key")
        self.save_btn.clicked.connect(self.save_key)
        self.test_btn.clicked.connect(self.test_key)
        self.test_all_btn.clicked.connect(self.test_all)
        self.remove_btn.clicked.connect(lambda: self.remove_key())
        for b in (self.save_btn, self.test_btn, self.test_all_btn, self.remove_btn):
            row.addWidget(b)
        row.addStretch(1)
        self.body.addLayout(row)
        self.provider.currentTextChanged.connect(self._provider_changed)

    # -- data -----------------------------------------------------------------------

    def refresh(self) -> None:
        self.conn.call(lambda c: c.list_providers(), self._show, action="list providers")

    def _show(self, providers: list[Any]) -> None:
        self.providers = providers
        self.empty.setVisible(not providers)
        current = self.provider.currentText()
        self.provider.blockSignals(True)
        self.provider.clear()
        self.provider.addItems([p.name for p in providers])
        if current:
            self.provider.setCurrentText(current)
        self.provider.blockSignals(False)
        self.table.setRowCount(len(providers))
        for r, p in enumerate(providers):
            key = p.key.masked if p.key.set else ("not set" if p.needs_key else "not needed")
            health = self.health.get(p.name) or ("simulator" if p.simulated else "not tested")
            for c, it in enumerate([item(p.name, p.name), item(p.kind),
                                    item("built-in simulator" if p.simulated else p.base_url),
                                    item(key), item(p.key.fingerprint or "—"),
                                    item(_SOURCE.get(p.key.source, "—")), item(health)]):
                self.table.setItem(r, c, it)
        self.table.resizeColumnsToContents()
        self._provider_changed(self.provider.currentText())

    def _selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.provider.setCurrentText(self.table.item(rows[0].row(), 0).text())

    def _provider_changed(self, name: str) -> None:
        p = next((p for p in self.providers if p.name == name), None)
        has_key = bool(p and p.key.set)
        self.save_btn.setText("Rotate &key" if has_key else "&Save key")
        self.remove_btn.setEnabled(has_key and p is not None
                                   and p.key.source == providers_pb2.KEY_SOURCE_KEYRING)

    def _take_key(self) -> str:
        """The typed key, with the field already cleared."""
        key = self.key_edit.text().strip()
        self.key_edit.clear()
        return key

    # -- actions --------------------------------------------------------------------

    def save_key(self) -> None:
        name = self.provider.currentText()
        key = self._take_key()
        if not name or not key:
            self.conn.info("Choose a provider and paste its key first.")
            return

        def stored(p: Any) -> None:
            self.conn.info(f"{p.name}: key stored in the OS keyring ({p.key.masked}, "
                           f"fingerprint {p.key.fingerprint}).")
            self.health.pop(p.name, None)
            self.refresh()

        self.conn.call(lambda c, k=key: c.set_key(name, k), stored, action=f"store the key "
                       f"for {name}")
        del key

    def test_key(self) -> None:
        name = self.provider.currentText()
        if not name:
            return
        key = self._take_key()
        req = providers_pb2.TestKeyRequest(provider=name)
        if key:
            req.key = key  # "test before save": the daemon does not store it
        del key
        self.health[name] = "testing…"
        self._show(self.providers)
        self.conn.call(lambda c: c.call(c.providers.TestKey, req),
                       lambda r: self._tested(name, r), action=f"test {name}",
                       on_err=lambda _e: self._tested(name, None))

    def test_all(self) -> None:
        for p in self.providers:
            self.health[p.name] = "testing…"
            self.conn.call(lambda c, n=p.name: c.test_key(n),
                           lambda r, n=p.name: self._tested(n, r), action=f"test {p.name}",
                           on_err=lambda _e, n=p.name: self._tested(n, None))
        self._show(self.providers)

    def _tested(self, name: str, r: Any) -> None:
        if r is None:
            self.health[name] = "test failed"
        elif r.ok:
            self.health[name] = f"ok · {r.latency_ms:.0f} ms"
        else:
            self.health[name] = f"failed: {r.message}"
            self.conn.report(AdminError("failed_precondition", r.message),
                             f"use the key for {name}")
        self._show(self.providers)

    def remove_key(self, confirm: bool = True) -> None:
        name = self.provider.currentText()
        if not name:
            return
        if confirm and QMessageBox.question(
                self, "Remove key", f"Remove the key for {name} from the OS keyring?"
        ) != QMessageBox.StandardButton.Yes:
            return
        self.conn.call(lambda c: c.remove_key(name),
                       lambda _p: (self.conn.info(f"{name}: key removed."), self.refresh()),
                       action=f"remove the key for {name}")

    def keyPressEvent(self, e: Any) -> None:  # Qt override
        if e.key() == Qt.Key.Key_Delete and self.table.hasFocus():
            self.remove_key()
            return
        super().keyPressEvent(e)
