"""Overview: live KPIs, spend vs baseline and cache-hit rate over time, requests
and spend by model, budget gauges and the latest routing decisions.

The live numbers come from the StatsService.Watch stream; the time charts come
from GetRollups (today hourly, 7 days hourly, 30 days daily) and are re-read,
debounced, whenever the stream reports new traffic.
"""

from __future__ import annotations

import time
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QButtonGroup,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from switchman_gui import theme
from switchman_gui.charts import BarChart, TimeChart
from switchman_gui.connection import Connection
from switchman_gui.widgets import Card, Note, Page, card_row, money, pct
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2, stats_pb2

RANGES = {  # label -> (resolution, bucket seconds, days back)
    "Today": (stats_pb2.RESOLUTION_HOUR, 3600, 0),
    "7 days": (stats_pb2.RESOLUTION_HOUR, 3600, 7),
    "30 days": (stats_pb2.RESOLUTION_DAY, 86400, 30),
}
_STATE_COLOR = {budgets_pb2.BUDGET_STATE_SOFT_EXCEEDED: theme.WARN,
                budgets_pb2.BUDGET_STATE_HARD_EXCEEDED: theme.BAD}
_PERIOD = {budgets_pb2.BUDGET_PERIOD_DAILY: "daily", budgets_pb2.BUDGET_PERIOD_WEEKLY: "weekly",
           budgets_pb2.BUDGET_PERIOD_MONTHLY: "monthly", budgets_pb2.BUDGET_PERIOD_TOTAL: "total"}


def range_start(label: str, now: float | None = None) -> float:
    now = time.time() if now is None else now
    lt = time.localtime(now)
    midnight = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
    return midnight - RANGES[label][2] * 86400


def series_from_rollups(rollups: list[Any], since: float, bucket: int, now: float
                        ) -> dict[str, list[tuple[float, float]]]:
    """Cumulative spend and baseline per bucket (gaps filled), and the cache-hit
    rate of each bucket that had traffic."""
    by_start = {int(r.bucket_start): r.totals for r in rollups}
    start = int(since) - int(since) % bucket
    spend = base = 0.0
    out: dict[str, list[tuple[float, float]]] = {"Spend": [], "Baseline": [], "Cache hits": []}
    out["Spend"].append((float(start), 0.0))
    out["Baseline"].append((float(start), 0.0))
    t = start
    while t <= now:
        tot = by_start.get(t)
        if tot is not None:
            spend += tot.spend_usd
            base += tot.baseline_usd
            if tot.requests:
                out["Cache hits"].append((t + bucket / 2, tot.cache_hit_rate * 100))
        mid = min(t + bucket, now)
        out["Spend"].append((mid, spend))
        out["Baseline"].append((mid, base))
        t += bucket
    return out


class BudgetGauges(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.lay = QVBoxLayout(self)
        self.lay.setContentsMargins(0, 0, 0, 0)
        title = QLabel("Budgets")
        title.setObjectName("cardTitle")
        self.lay.addWidget(title)
        self.empty = Note("No budgets yet. Set spending limits on the Budgets page (Ctrl+6).")
        self.lay.addWidget(self.empty)
        self.bars: dict[str, QProgressBar] = {}
        self.lay.addStretch(1)

    def update_statuses(self, statuses: dict[str, Any]) -> None:
        self.empty.setVisible(not statuses)
        for bid, st in statuses.items():
            bar = self.bars.get(bid)
            if bar is None:
                bar = QProgressBar()
                bar.setTextVisible(True)
                bar.setMinimumHeight(24)
                self.lay.insertWidget(self.lay.count() - 1, bar)
                self.bars[bid] = bar
            b = st.budget
            limit = b.hard_usd or b.soft_usd
            share = st.spent_usd / limit if limit else 0.0
            bar.setRange(0, 1000)
            bar.setValue(min(1000, int(share * 1000)))
            who = b.scope_id or "all traffic"
            bar.setFormat(f"{_PERIOD.get(b.period, '')} {who}: {money(st.spent_usd)}"
                          f" of {money(limit)} ({share * 100:.0f}%)")
            color = _STATE_COLOR.get(st.state, theme.OK)
            bar.setStyleSheet(
                "QProgressBar { border: 1px solid palette(mid); border-radius: 5px; "
                "background: palette(base); text-align: center; }"
                f"QProgressBar::chunk {{ background: {color.name()}; border-radius: 4px; }}")
        for bid in [b for b in self.bars if b not in statuses]:
            self.bars.pop(bid).deleteLater()


class OverviewPage(Page):
    title = "Overview"
    hint = "Live spend, savings against the baseline model, cache hits and budgets."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.range = "Today"
        self.by_model: dict[str, Any] = {}
        self.budgets: dict[str, Any] = {}
        self.totals: Any = None
        self.c_spend, self.c_saved = Card("Spend (24 h)"), Card("Saved vs baseline")
        self.c_cache, self.c_reqs = Card("Cache-hit rate"), Card("Requests")
        self.body.addLayout(card_row(self.c_spend, self.c_saved, self.c_cache, self.c_reqs))

        self.first_run = Note("")
        self.first_run.setVisible(False)
        self.body.addWidget(self.first_run)

        bar = QHBoxLayout()
        self.range_group = QButtonGroup(self)
        for label in RANGES:
            b = QPushButton(label)
            b.setCheckable(True)
            b.setChecked(label == self.range)
            self.range_group.addButton(b)
            bar.addWidget(b)
            b.clicked.connect(lambda _c=False, lab=label: self.set_range(lab))
        bar.addStretch(1)
        self.body.addLayout(bar)

        grid = QGridLayout()
        self.spend_chart = TimeChart("Spend and baseline (cumulative, $)",
                                     [("Spend", theme.SPEND), ("Baseline", theme.BASELINE)],
                                     y_format="$%.2f")
        self.cache_chart = TimeChart("Cache-hit rate (%)", [("Cache hits", theme.CACHE)],
                                     y_format="%.0f%%")
        self.cache_chart.chart_.legend().setVisible(False)
        self.cache_chart.show_points()
        self.req_chart = BarChart("Requests by model (24 h)", theme.ACCENT)
        self.model_spend_chart = BarChart("Spend by model (24 h, $)", theme.SAVINGS,
                                          y_format="$%.2f")
        self.gauges = BudgetGauges()
        self.decisions = QListWidget()
        self.decisions.setAccessibleName("Recent routing decisions")
        self.decisions.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.decisions.setTextElideMode(Qt.TextElideMode.ElideRight)
        dec = QWidget()
        dl = QVBoxLayout(dec)
        dl.setContentsMargins(0, 0, 0, 0)
        t = QLabel("Latest routing decisions")
        t.setObjectName("cardTitle")
        dl.addWidget(t)
        dl.addWidget(self.decisions)
        grid.addWidget(self.spend_chart, 0, 0)
        grid.addWidget(self.cache_chart, 0, 1)
        grid.addWidget(self.req_chart, 1, 0)
        grid.addWidget(self.model_spend_chart, 1, 1)
        grid.addWidget(self.gauges, 2, 0)
        grid.addWidget(dec, 2, 1)
        for r, s in ((0, 3), (1, 3), (2, 2)):
            grid.setRowStretch(r, s)
        self.body.addLayout(grid, 1)

        self._rollup_timer = QTimer(self)
        self._rollup_timer.setSingleShot(True)
        self._rollup_timer.setInterval(1500)
        self._rollup_timer.timeout.connect(self.load_rollups)

    # -- data -----------------------------------------------------------------------

    def refresh(self) -> None:
        self.load_rollups()

    def set_range(self, label: str) -> None:
        self.range = label
        for b in self.range_group.buttons():
            b.setChecked(b.text() == label)
        self.load_rollups()

    def load_rollups(self) -> None:
        label = self.range
        res, bucket, _days = RANGES[label]
        since = range_start(label)

        def fetch(c: AdminClient) -> Any:
            return c.call(c.stats.GetRollups,
                          stats_pb2.GetRollupsRequest(resolution=res, since=since))

        def show(reply: Any) -> None:
            if label != self.range:
                return
            now = time.time()
            data = series_from_rollups(list(reply.rollups), since, bucket, now)
            day = label != "Today"
            self.spend_chart.set_data({k: data[k] for k in ("Spend", "Baseline")}, day,
                                      x_range=(since, now), money_axis=True)
            self.cache_chart.set_data({"Cache hits": data["Cache hits"]}, day,
                                      x_range=(since, now))
            self.cache_chart.y.setRange(0, 100)
            self.cache_chart.y.setTickCount(5)

        self.conn.call(fetch, show, action="load the spend history")

    def on_stats(self, u: Any) -> None:
        if u.snapshot:
            self.by_model, self.budgets = {}, {}
            self.decisions.clear()
        self.totals = u.totals
        for kt in u.by_model:
            self.by_model[kt.key] = kt.totals
        for st in u.budgets:
            self.budgets[st.budget.id] = st
        t = u.totals
        self.c_spend.set(money(t.spend_usd), f"baseline {money(t.baseline_usd)}")
        saved_pct = t.savings_usd / t.baseline_usd if t.baseline_usd else 0.0
        self.c_saved.set(money(t.savings_usd), f"{pct(saved_pct)} of baseline")
        self.c_cache.set(pct(t.cache_hit_rate), f"{t.cache_read_tokens:,} cached tokens read")
        self.c_reqs.set(f"{t.requests:,}", f"{t.errors:,} errors")
        models = sorted(self.by_model.items(), key=lambda kv: -kv[1].requests)[:8]
        self.req_chart.set_values({k: float(v.requests) for k, v in models})
        self.model_spend_chart.set_values({k: v.spend_usd for k, v in models}, money_axis=True)
        self.gauges.update_statuses(self.budgets)
        for d in reversed(list(u.decisions)):
            why = d.reasons[0] if d.reasons else d.how
            text = (f"{time.strftime('%H:%M:%S', time.localtime(d.at))}  "
                    f"{d.requested_model or '?'} → {d.served_model}  {money(d.cost_usd)}"
                    f"  · {why}")
            self.decisions.insertItem(0, text)
            self.decisions.item(0).setToolTip("\n".join([text, *d.reasons[1:]]))
        while self.decisions.count() > 50:
            self.decisions.takeItem(self.decisions.count() - 1)
        self._first_run_hint(t.requests)
        if not u.snapshot:
            self._rollup_timer.start()

    def _first_run_hint(self, requests: int) -> None:
        status = self.conn.last_status
        url = status.proxy_url if status else "http://127.0.0.1:8787"
        self.first_run.setText(
            f"No requests in the last 24 hours. Point an agent at {url} — the Agent setup "
            "page (Ctrl+7) writes the settings for Claude Code, Codex, Aider and SDK apps.")
        self.first_run.setVisible(requests == 0)
