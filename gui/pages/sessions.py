"""Sessions: every agent session with its spend, savings and cache hits; for the
selected one, a spend timeline and each request's routing decision with reasons."""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QSplitter, QTreeWidget, QTreeWidgetItem, QWidget

from switchman_gui import theme
from switchman_gui.charts import LineChart
from switchman_gui.connection import Connection
from switchman_gui.widgets import Note, Page, item, money, pct, table, tokens, when
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import ledger_pb2

HEADERS = ["Session", "Client", "Started", "Turns", "Spend", "Saved", "Cache hits", "Models"]


class SessionsPage(Page):
    title = "Sessions"
    hint = "One row per agent session. Select a session to see its spend over time and why " \
           "each request went to the model it did."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.sessions: list[Any] = []
        self.current = ""
        self.table = table(HEADERS)
        self.table.setAccessibleName("Sessions")
        self.table.itemSelectionChanged.connect(self._selected)
        self.empty = Note("No sessions yet. Sessions appear as soon as an agent sends requests "
                          "through the daemon.")
        self.body.addWidget(self.empty)

        self.timeline = LineChart("Session spend (cumulative)",
                                  [("Spend", theme.SPEND), ("Baseline", theme.BASELINE)],
                                  "request #")
        self.decisions = QTreeWidget()
        self.decisions.setAccessibleName("Routing decisions")
        self.decisions.setHeaderLabels(["Time", "Requested → served", "How", "Cost",
                                        "Cache read", "Status"])
        self.decisions.setColumnWidth(0, 90)
        self.decisions.setColumnWidth(1, 280)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.timeline)
        lower.addWidget(self.decisions)
        lower.setSizes([400, 500])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(lower)
        split.setSizes([260, 340])
        self.body.addWidget(split, 1)
        self._reload = QTimer(self)
        self._reload.setSingleShot(True)
        self._reload.setInterval(2000)
        self._reload.timeout.connect(self.refresh)

    def refresh(self) -> None:
        def fetch(c: AdminClient) -> Any:
            return c.call(c.ledger.ListSessions, ledger_pb2.ListSessionsRequest(page_size=200))

        self.conn.call(fetch, self._show, action="list sessions")

    def on_stats(self, u: Any) -> None:
        if not u.snapshot and u.by_session and self.isVisible():
            self._reload.start()

    def _show(self, reply: Any) -> None:
        self.sessions = list(reply.sessions)
        self.empty.setVisible(not self.sessions)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.sessions))
        for r, s in enumerate(self.sessions):
            cells = [item(s.session_id, s.session_id), item(s.client or "—"),
                     item(when(s.started_at)), item(str(s.turns), align_right=True),
                     item(money(s.spend_usd), align_right=True),
                     item(money(s.savings_usd), align_right=True),
                     item(pct(s.cache_hit_rate), align_right=True),
                     item(", ".join(s.models))]
            for col, it in enumerate(cells):
                self.table.setItem(r, col, it)
        self.table.resizeColumnsToContents()
        if self.sessions and not self.current:
            self.table.selectRow(0)
        elif self.current:
            for r, s in enumerate(self.sessions):
                if s.session_id == self.current:
                    self.table.selectRow(r)
                    self.load_session(self.current)

    def _selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        sid = self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        if sid != self.current:
            self.current = sid
            self.load_session(sid)

    def load_session(self, session_id: str) -> None:
        def fetch(c: AdminClient) -> Any:
            return c.call(c.ledger.GetSession, ledger_pb2.GetSessionRequest(
                session_id=session_id))

        self.conn.call(fetch, self._show_detail, action="load the session")

    def _show_detail(self, detail: Any) -> None:
        if detail.session.session_id != self.current:
            return
        spend = base = 0.0
        pts_s: list[tuple[float, float]] = []
        pts_b: list[tuple[float, float]] = []
        self.decisions.clear()
        for n, r in enumerate(detail.timeline, start=1):
            spend += r.cost_usd
            base += r.baseline_cost_usd or r.cost_usd
            pts_s.append((n, spend))
            pts_b.append((n, base))
            d = r.decision
            top = QTreeWidgetItem([
                time.strftime("%H:%M:%S", time.localtime(r.started_at)),
                f"{r.requested_model or '?'} → {r.served_model or d.model}",
                d.how or "—", money(r.cost_usd), tokens(r.cache_read_tokens),
                r.status + (f" ({r.error})" if r.error else "")])
            lines = [*d.reasons, *(["fallbacks: " + ", ".join(d.fallbacks)]
                                   if d.fallbacks else [])]
            self.decisions.addTopLevelItem(top)
            for line in lines:
                child = QTreeWidgetItem(top, [line])
                child.setFirstColumnSpanned(True)
                child.setToolTip(0, line)
        self.timeline.set_data({"Spend": pts_s, "Baseline": pts_b})
        for i in range(self.decisions.topLevelItemCount()):
            top = self.decisions.topLevelItem(i)
            for col in range(self.decisions.columnCount()):
                top.setToolTip(col, top.text(col))
        if self.decisions.topLevelItemCount():
            self.decisions.expandItem(self.decisions.topLevelItem(
                self.decisions.topLevelItemCount() - 1))
        for col in range(1, self.decisions.columnCount()):
            self.decisions.resizeColumnToContents(col)
