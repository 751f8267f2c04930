"""Providers page: a typed key goes to the daemon's keyring and nowhere else."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message
from PySide6.QtCore import QObject
from PySide6.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QTableWidget,
    QTextEdit,
    QWidget,
)

from switchman_gui.app import MainWindow
from tests.support.gui import settle, wait_for, window  # noqa: F401
from tests.support.memory_keyring import MemoryKeyring

SECRET = "sk-ant-api03-GUISECRET-0123456789abcdef"


def widget_texts(root: QWidget) -> list[str]:
    out: list[str] = []
    for w in [root, *root.findChildren(QWidget)]:
        out += [w.windowTitle(), w.toolTip(), w.accessibleName(), w.statusTip()]
        if isinstance(w, QLineEdit):
            out += [w.text(), w.displayText(), w.placeholderText()]
            assert not w.isUndoAvailable() or w.echoMode() != QLineEdit.EchoMode.Password
        elif isinstance(w, (QLabel, QAbstractButton)):
            out.append(w.text())
        elif isinstance(w, (QPlainTextEdit, QTextEdit)):
            out.append(w.toPlainText())
        elif isinstance(w, QComboBox):
            out += [w.itemText(i) for i in range(w.count())]
        elif isinstance(w, QTableWidget):
            out += [w.item(r, c).text() for r in range(w.rowCount())
                    for c in range(w.columnCount()) if w.item(r, c)]
    return out


def attribute_blobs(obj: Any, seen: set[int] | None = None, depth: int = 0) -> list[str]:
    """Every string reachable from the console's Python attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return []
    seen.add(id(obj))
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, bytes):
        return [obj.decode("latin-1")]
    if isinstance(obj, Message):
        return [obj.SerializeToString().decode("latin-1")]
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += attribute_blobs(k, seen, depth + 1) + attribute_blobs(v, seen, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            out += attribute_blobs(v, seen, depth + 1)
    elif hasattr(obj, "__dict__") and (isinstance(obj, QObject)
                                       or type(obj).__module__.startswith("switchman_gui")):
        out += attribute_blobs(vars(obj), seen, depth + 1)
        if isinstance(obj, QObject):
            for child in obj.children():
                out += attribute_blobs(child, seen, depth + 1)
    return out


def test_added_key_goes_to_the_keyring_and_the_console_keeps_nothing(
        window: MainWindow, mem_keyring: MemoryKeyring, qtbot: Any) -> None:  # noqa: F811
    page = window.page("Providers")
    window.go(2)
    settle(qtbot, window)
    wait_for(qtbot, lambda: page.provider.count() == 2)
    page.provider.setCurrentText("sim-anthropic")
    qtbot.keyClicks(page.key_edit, SECRET)
    assert page.key_edit.text() == SECRET and page.key_edit.displayText() != SECRET
    page.save_btn.click()
    assert page.key_edit.text() == ""  # cleared before the call even returns
    wait_for(qtbot, lambda: mem_keyring.store.get(("switchman", "sim-anthropic")) == SECRET)
    settle(qtbot, window)
    wait_for(qtbot, lambda: "cdef" in page.table.item(0, 3).text())
    row = [page.table.item(0, c).text() for c in range(page.table.columnCount())]
    assert row[0] == "sim-anthropic" and row[5] == "OS keyring"
    assert len(row[4]) == 12  # fingerprint
    assert page.save_btn.text().replace("&", "") == "Rotate key"

    # rotate, and a "test before save" with a typed key: the field clears each time
    qtbot.keyClicks(page.key_edit, SECRET + "-v2")
    page.save_btn.click()
    wait_for(qtbot, lambda: mem_keyring.store[("switchman", "sim-anthropic")] == SECRET + "-v2")
    qtbot.keyClicks(page.key_edit, SECRET + "-v3")
    page.test_btn.click()
    assert page.key_edit.text() == ""
    settle(qtbot, window, 200)
    assert mem_keyring.store[("switchman", "sim-anthropic")] == SECRET + "-v2"

    attrs = attribute_blobs(window) + attribute_blobs(window.conn)
    assert any("sim-anthropic" in b for b in attrs)  # the walk does reach page state
    blobs = widget_texts(window) + attrs
    blobs += [m for _lvl, m in window.messages]
    assert blobs and not [b for b in blobs if "GUISECRET" in b]

    # remove (no confirmation dialog in the test)
    page.remove_key(confirm=False)
    wait_for(qtbot, lambda: ("switchman", "sim-anthropic") not in mem_keyring.store)
    wait_for(qtbot, lambda: page.table.item(0, 3).text() != row[3])
