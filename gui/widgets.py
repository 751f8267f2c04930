"""Shared bits of the pages: the Page base class, KPI cards, empty-state notes,
and number formatting."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from switchman_gui.connection import Connection


class Page(QWidget):
    """One console page. Subclasses fill ``self.body`` and override the hooks."""

    title = ""
    hint = ""

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.conn = conn
        outer = QVBoxLayout(self)
        outer.setContentsMargins(16, 12, 16, 12)
        outer.setSpacing(10)
        head = QLabel(self.title)
        head.setObjectName("pageTitle")
        outer.addWidget(head)
        if self.hint:
            h = QLabel(self.hint)
            h.setObjectName("hint")
            h.setWordWrap(True)
            outer.addWidget(h)
        self.body = QVBoxLayout()
        self.body.setSpacing(10)
        outer.addLayout(self.body, 1)
        conn.connected.connect(lambda _s: self.refresh())
        conn.stats.connect(self.on_stats)

    def refresh(self) -> None:
        """Reload everything from the daemon (on connect and when shown)."""

    def on_stats(self, update: Any) -> None:
        """A StatsUpdate from the live stream."""

    def showEvent(self, event: Any) -> None:  # Qt override
        super().showEvent(event)
        if self.conn.client is not None:
            self.refresh()


class Card(QFrame):
    """A KPI: a small title over a big value."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("card")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 8, 12, 8)
        self.title = QLabel(title)
        self.title.setObjectName("cardTitle")
        self.value = QLabel("—")
        self.value.setObjectName("cardValue")
        self.sub = QLabel("")
        self.sub.setObjectName("hint")
        for w in (self.title, self.value, self.sub):
            lay.addWidget(w)

    def set(self, value: str, sub: str = "") -> None:
        self.value.setText(value)
        self.sub.setText(sub)


def card_row(*cards: Card) -> QHBoxLayout:
    row = QHBoxLayout()
    for c in cards:
        row.addWidget(c)
    return row


class Note(QLabel):
    """An empty-state / guidance note."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setObjectName("hint")
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setMinimumHeight(40)


def table(headers: list[str], parent: QWidget | None = None) -> QTableWidget:
    t = QTableWidget(0, len(headers), parent)
    t.setHorizontalHeaderLabels(headers)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    t.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
    t.setAlternatingRowColors(True)
    t.verticalHeader().setVisible(False)
    t.horizontalHeader().setStretchLastSection(True)
    t.setTabKeyNavigation(False)  # Tab leaves the table; arrows move inside it
    return t


def item(text: str, data: Any = None, align_right: bool = False) -> QTableWidgetItem:
    it = QTableWidgetItem(text)
    if data is not None:
        it.setData(Qt.ItemDataRole.UserRole, data)
    if align_right:
        it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return it


def money(v: float) -> str:
    if v == 0:
        return "$0.00"
    if abs(v) < 0.01:
        return f"${v:.4f}"
    return f"${v:,.2f}"


def pct(v: float) -> str:
    return f"{v * 100:.0f}%"


def when(ts: float) -> str:
    if not ts:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def tokens(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1000:
        return f"{n / 1000:.0f}k"
    return f"{n:.0f}"
