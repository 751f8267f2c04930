"""Budgets & team keys: spending limits with their action past the limit
(downgrade to cheaper models, or block), and the team keys agents present, with
per-key spend. A new key's plaintext is shown once, in a dialog with a copy
button, and is gone when the dialog closes."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from switchman_gui.connection import Connection
from switchman_gui.errors import is_unimplemented
from switchman_gui.widgets import Note, Page, item, money, table, when
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2 as bpb
from switchman_shared.proto_gen.switchman.v1 import teamkeys_pb2 as tpb

SCOPES = {"Global": bpb.BUDGET_SCOPE_GLOBAL, "Team key": bpb.BUDGET_SCOPE_TEAM_KEY,
          "Session": bpb.BUDGET_SCOPE_SESSION}
PERIODS = {"Daily": bpb.BUDGET_PERIOD_DAILY, "Weekly": bpb.BUDGET_PERIOD_WEEKLY,
           "Monthly": bpb.BUDGET_PERIOD_MONTHLY, "Total": bpb.BUDGET_PERIOD_TOTAL}
STATES = {bpb.BUDGET_STATE_OK: "ok", bpb.BUDGET_STATE_SOFT_EXCEEDED: "past soft limit",
          bpb.BUDGET_STATE_HARD_EXCEEDED: "past hard limit"}
UNAVAILABLE_NOTE = "{} are not available from this daemon yet (its service answers " \
                   "UNIMPLEMENTED). Update the daemon to manage them here."


def _name(table_: dict[str, int], value: int) -> str:
    return next((k for k, v in table_.items() if v == value), "—")


def _actions(b: Any) -> str:
    parts = []
    if b.soft_usd:
        parts.append("downgrade past soft")
    if b.hard_usd:
        parts.append("block past hard")
    return ", ".join(parts) or "—"


def _spin() -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(0, 1_000_000)
    s.setDecimals(2)
    s.setPrefix("$")
    s.setSpecialValueText("none")
    return s


class NewKeyDialog(QDialog):
    """Shows a new team key once. Nothing else in the console ever holds it."""

    def __init__(self, key: Any, plaintext: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setWindowTitle("New team key")
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"Team key <b>{key.name}</b> for {key.owner or 'the team'}. "
                             "Copy it now: it is shown only once; the daemon keeps only "
                             "a hash."))
        row = QHBoxLayout()
        self.field = QLineEdit(plaintext)
        self.field.setReadOnly(True)
        self.field.setMinimumWidth(420)
        self.field.setAccessibleName("New team key")
        self.copy_btn = QPushButton("&Copy")
        self.copy_btn.clicked.connect(self.copy)
        row.addWidget(self.field)
        row.addWidget(self.copy_btn)
        lay.addLayout(row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        lay.addWidget(buttons)

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.field.text())
        self.copy_btn.setText("Copied")

    def done(self, r: int) -> None:
        self.field.clear()
        super().done(r)

    def closeEvent(self, e: Any) -> None:  # Qt override
        self.field.clear()
        super().closeEvent(e)


class BudgetsPage(Page):
    title = "Budgets & team keys"
    hint = "Past a soft limit the router downgrades to cheaper models; past a hard limit " \
           "it refuses requests. Team keys identify each agent or person; spend is tracked " \
           "per key."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.budget_rows: list[Any] = []
        self.keys: list[Any] = []
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self._budgets_box())
        split.addWidget(self._keys_box())
        self.body.addWidget(split, 1)

    # -- layout -----------------------------------------------------------------------

    def _budgets_box(self) -> QGroupBox:
        box = QGroupBox("Budgets")
        lay = QVBoxLayout(box)
        self.b_note = Note("No budgets yet: set a daily limit below to cap spend.")
        lay.addWidget(self.b_note)
        self.b_table = table(["Scope", "Period", "Soft", "Hard", "Past the limits", "Spent",
                              "Forecast", "State"])
        self.b_table.setAccessibleName("Budgets")
        lay.addWidget(self.b_table, 1)
        self.b_form = QWidget()
        f = QHBoxLayout(self.b_form)
        f.setContentsMargins(0, 0, 0, 0)
        self.b_scope = QComboBox()
        self.b_scope.addItems(list(SCOPES))
        self.b_scope_id = QLineEdit()
        self.b_scope_id.setPlaceholderText("team key id / session id")
        self.b_period = QComboBox()
        self.b_period.addItems(list(PERIODS))
        self.b_soft, self.b_hard = _spin(), _spin()
        self.b_set = QPushButton("Set &budget")
        self.b_set.clicked.connect(self.set_budget)
        self.b_remove = QPushButton("Remove")
        self.b_remove.clicked.connect(lambda: self.remove_budget())
        self.b_soft.setToolTip("past the soft limit the router downgrades to cheaper models")
        self.b_hard.setToolTip("past the hard limit requests are refused")
        for label, w in (("Scope", self.b_scope), ("", self.b_scope_id),
                         ("Period", self.b_period), ("Soft (downgrade)", self.b_soft),
                         ("Hard (block)", self.b_hard)):
            if label:
                f.addWidget(QLabel(label))
            f.addWidget(w)
        f.addWidget(self.b_set)
        f.addWidget(self.b_remove)
        self.b_scope.currentTextChanged.connect(
            lambda t: self.b_scope_id.setEnabled(t != "Global"))
        self.b_scope_id.setEnabled(False)
        lay.addWidget(self.b_form)
        return box

    def _keys_box(self) -> QGroupBox:
        box = QGroupBox("Team keys")
        lay = QVBoxLayout(box)
        self.k_note = Note("No team keys yet. While there are none the daemon accepts any key "
                           "from this machine (local-open); issue keys to track spend per "
                           "agent or person.")
        lay.addWidget(self.k_note)
        self.k_table = table(["Name", "Owner", "Prefix", "Created", "Last used", "Spend",
                              "Status"])
        self.k_table.setAccessibleName("Team keys")
        lay.addWidget(self.k_table, 1)
        self.k_form = QWidget()
        f = QFormLayout(self.k_form)
        f.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.k_name = QLineEdit()
        self.k_name.setPlaceholderText("name, e.g. ci-bot")
        self.k_owner = QLineEdit()
        self.k_owner.setPlaceholderText("owner (optional)")
        self.k_issue = QPushButton("&Issue key")
        self.k_issue.clicked.connect(lambda: self.issue_key())
        self.k_revoke = QPushButton("Re&voke")
        self.k_revoke.clicked.connect(lambda: self.revoke_selected())
        self.k_show_revoked = QCheckBox("show revoked")
        self.k_show_revoked.toggled.connect(lambda _c: self.load_keys())
        for w in (self.k_name, self.k_owner, self.k_issue, self.k_revoke, self.k_show_revoked):
            row.addWidget(w)
        f.addRow(row)
        lay.addWidget(self.k_form)
        return box

    # -- budgets ------------------------------------------------------------------------

    def refresh(self) -> None:
        self.load_budgets()
        self.load_keys()

    def _unavailable(self, which: str, e: BaseException) -> None:
        if not is_unimplemented(e):
            return
        if which == "budgets":
            self.b_note.setText(UNAVAILABLE_NOTE.format("Budgets"))
            self.b_note.show()
            self.b_table.hide()
            self.b_form.setEnabled(False)
        else:
            self.k_note.setText(UNAVAILABLE_NOTE.format("Team keys"))
            self.k_note.show()
            self.k_table.hide()
            self.k_form.setEnabled(False)

    def load_budgets(self) -> None:
        def fetch(c: AdminClient) -> list[Any]:
            statuses = c.call(c.budgets.GetStatus, bpb.GetBudgetStatusRequest()).statuses
            by_id = {s.budget.id: s for s in statuses}
            budgets = c.call(c.budgets.ListBudgets, bpb.ListBudgetsRequest()).budgets
            return [(b, by_id.get(b.id)) for b in budgets]

        self.conn.call(fetch, self._show_budgets, action="load budgets",
                       on_err=lambda e: self._unavailable("budgets", e))

    def _show_budgets(self, rows: list[Any]) -> None:
        self.b_form.setEnabled(True)
        self.b_table.show()
        self.budget_rows = rows
        self.b_note.setText("No budgets yet: set a daily limit below to cap spend.")
        self.b_note.setVisible(not rows)
        self.b_table.setRowCount(len(rows))
        for r, (b, st) in enumerate(rows):
            scope = _name(SCOPES, b.scope) + (f" {b.scope_id}" if b.scope_id else "")
            cells = [item(scope, b.id), item(_name(PERIODS, b.period)),
                     item(money(b.soft_usd) if b.soft_usd else "—", align_right=True),
                     item(money(b.hard_usd) if b.hard_usd else "—", align_right=True),
                     item(_actions(b)),
                     item(money(st.spent_usd) if st else "—", align_right=True),
                     item(money(st.forecast_usd) if st else "—", align_right=True),
                     item(STATES.get(st.state, "—") if st else "—")]
            for c, it in enumerate(cells):
                self.b_table.setItem(r, c, it)
        self.b_table.resizeColumnsToContents()

    def set_budget(self) -> None:
        scope = SCOPES[self.b_scope.currentText()]
        b = bpb.Budget(scope=scope, scope_id=self.b_scope_id.text().strip()
                       if scope != bpb.BUDGET_SCOPE_GLOBAL else "",
                       period=PERIODS[self.b_period.currentText()],
                       soft_usd=self.b_soft.value(), hard_usd=self.b_hard.value(),
                       action=bpb.BUDGET_ACTION_BLOCK if self.b_hard.value()
                       else bpb.BUDGET_ACTION_DOWNGRADE)
        if not (b.soft_usd or b.hard_usd):
            self.conn.info("Give a soft or a hard limit (or both).")
            return
        self.conn.call(lambda c: c.call(c.budgets.SetBudget, bpb.SetBudgetRequest(budget=b)),
                       lambda _b: (self.conn.info("Budget saved."), self.load_budgets()),
                       action="save the budget",
                       on_err=lambda e: self._unavailable("budgets", e))

    def remove_budget(self, confirm: bool = True) -> None:
        rows = self.b_table.selectionModel().selectedRows()
        if not rows:
            self.conn.info("Select a budget to remove.")
            return
        bid = self.b_table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        if confirm and QMessageBox.question(self, "Remove budget", "Remove this budget?") \
                != QMessageBox.StandardButton.Yes:
            return
        self.conn.call(lambda c: c.call(c.budgets.RemoveBudget, bpb.RemoveBudgetRequest(id=bid)),
                       lambda _r: self.load_budgets(), action="remove the budget")

    # -- team keys ------------------------------------------------------------------------

    def load_keys(self) -> None:
        include = self.k_show_revoked.isChecked()
        self.conn.call(lambda c: c.call(c.teamkeys.List, tpb.ListTeamKeysRequest(
            include_revoked=include)).keys, self._show_keys, action="load team keys",
            on_err=lambda e: self._unavailable("keys", e))

    def _show_keys(self, keys: Any) -> None:
        self.k_form.setEnabled(True)
        self.k_table.show()
        self.keys = list(keys)
        self.k_note.setVisible(not self.keys)
        self.k_table.setRowCount(len(self.keys))
        for r, k in enumerate(self.keys):
            cells = [item(k.name, k.id), item(k.owner or "—"), item(k.prefix + "…"),
                     item(when(k.created_at)), item(when(k.last_used_at)),
                     item(money(k.spend_usd), align_right=True),
                     item("revoked" if k.revoked else "active")]
            for c, it in enumerate(cells):
                self.k_table.setItem(r, c, it)
        self.k_table.resizeColumnsToContents()

    def issue_key(self, name: str | None = None, owner: str | None = None) -> None:
        name = (name if name is not None else self.k_name.text()).strip()
        owner = (owner if owner is not None else self.k_owner.text()).strip()
        if not name:
            self.conn.info("Give the new key a name.")
            return

        def issued(reply: Any) -> None:
            self.k_name.clear()
            self.k_owner.clear()
            NewKeyDialog(reply.key, reply.plaintext, self).open()
            self.load_keys()

        self.conn.call(lambda c: c.call(c.teamkeys.Issue, tpb.IssueTeamKeyRequest(
            name=name, owner=owner)), issued, action="issue a team key",
            on_err=lambda e: self._unavailable("keys", e))

    def revoke_selected(self, confirm: bool = True) -> None:
        rows = self.k_table.selectionModel().selectedRows()
        if not rows:
            self.conn.info("Select a team key to revoke.")
            return
        kid = self.k_table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        name = self.k_table.item(rows[0].row(), 0).text()
        if confirm and QMessageBox.question(
                self, "Revoke key", f"Revoke {name}? Agents using it stop working at once."
        ) != QMessageBox.StandardButton.Yes:
            return
        self.revoke(kid)

    def revoke(self, key_id: str) -> None:
        self.conn.call(lambda c: c.call(c.teamkeys.Revoke, tpb.RevokeTeamKeyRequest(id=key_id)),
                       lambda k: (self.conn.info(f"{k.name} revoked."), self.load_keys()),
                       action="revoke the team key")
