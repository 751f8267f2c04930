"""Routing: the objective's cost / quality / latency weights as sliders that
apply live (debounced SetPolicy), the opt-in cascade and cache keep-alive as
checkboxes (SetPolicy on toggle), a what-if (PolicyService.Preview) drawn on
a cost-vs-quality Pareto chart of the pool, and a what-if over the recorded
traffic (PolicyService.ReplayPreview): what the last N days would have cost, at
what predicted quality, under the slider position and a sweep of objectives."""

from __future__ import annotations

from typing import Any

from PySide6.QtCharts import QLineSeries, QScatterSeries
from PySide6.QtCore import QPointF, Qt, QTimer
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from switchman_gui import theme
from switchman_gui.charts import ScatterChart
from switchman_gui.connection import Connection
from switchman_gui.widgets import Page, money
from switchman_shared.admin_client import AdminClient
from switchman_shared.proto_gen.switchman.v1 import models_pb2, policy_pb2

WEIGHTS = ("cost", "quality", "latency")
PRESETS = {"Cheapest": (1.0, 0.0, 0.0), "Balanced": (0.5, 0.5, 0.2),
           "Best quality": (0.0, 1.0, 0.0)}
PALETTE = ["#2f7ef6", "#20a464", "#e6a700", "#a45de0", "#e0454b", "#14a3b8", "#ff7f0e",
           "#8c564b", "#7f7f7f", "#bcbd22"]
DEBOUNCE_MS = 300
# the replay is seconds of daemon CPU on a big ledger: wait for the slider to rest
REPLAY_DEBOUNCE_MS = 700
ASSUMED_OUTPUT = 1000
REPLAY_DAYS = (1, 7, 30)
# objectives replayed besides the slider's: cost-led to quality-led
REPLAY_SWEEP = ((1.0, 0.0, 0.0), (1.0, 0.3, 0.1), (0.5, 0.7, 0.1), (0.3, 1.0, 0.05),
                (0.15, 1.0, 0.0), (0.0, 1.0, 0.0))
# the opt-in routing features: SetPolicy field -> (label, tooltip, action for errors)
OPTIONS = {
    "cascade": (
        "Cascade: try the cheapest capable model first (non-streaming requests)",
        "Non-streaming requests go to the cheapest capable model first; an empty, truncated "
        "or refusing answer is withheld and the router's choice answers instead.\n"
        "Saves money when cheap answers usually pass; an escalation pays for both calls and "
        "takes longer. Streamed requests are never cascaded.",
        "the cascade"),
    "keepalive": (
        "Cache keep-alive: refresh idle sessions' prompt caches when it pays",
        "Just before an idle session's prompt cache expires, a one-token request keeps it "
        "warm, only when the chance the session comes back makes the expected saving beat "
        "the refresh.\nEach refresh is a billed request (in the ledger and the budgets); "
        "off, nothing is kept.",
        "cache keep-alive"),
}


def request_cost(m: Any, input_tokens: int, output_tokens: int = ASSUMED_OUTPUT) -> float:
    """Uncached list-price cost of one request on model ``m`` (USD)."""
    return (input_tokens * m.prices.input + output_tokens * m.prices.output) / 1e6


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both lower cost and higher quality."""
    front: list[tuple[float, float]] = []
    best_q = -1.0
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best_q:
            front.append((x, y))
            best_q = y
    return front


class RoutingPage(Page):
    title = "Routing"
    hint = "Weights apply to the live router as you move them. The chart shows the pool by " \
           "cost (one request of the size below, list price) and quality; the ring marks " \
           "what the router would pick now, the diamonds what the presets would pick."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.models: list[Any] = []
        self.sliders: dict[str, QSlider] = {}
        self.value_labels: dict[str, QLabel] = {}
        self._applying = False
        top = QHBoxLayout()

        weights = QGridLayout()
        for r, name in enumerate(WEIGHTS):
            s = QSlider(Qt.Orientation.Horizontal)
            s.setRange(0, 100)
            s.setPageStep(10)
            s.setAccessibleName(f"{name} weight")
            s.valueChanged.connect(self._slider_moved)
            lab = QLabel(f"&{name.capitalize()}")
            lab.setBuddy(s)
            val = QLabel("0.00")
            val.setMinimumWidth(36)
            weights.addWidget(lab, r, 0)
            weights.addWidget(s, r, 1)
            weights.addWidget(val, r, 2)
            self.sliders[name], self.value_labels[name] = s, val
        self.applied = QLabel("")
        self.applied.setObjectName("hint")
        weights.addWidget(self.applied, 3, 1)
        left = QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.addLayout(weights)
        left.addWidget(self._build_options())
        wbox = QWidget()
        wbox.setLayout(left)
        top.addWidget(wbox, 3)

        form = QFormLayout()
        self.req_model = QComboBox()
        self.req_model.setEditable(True)
        self.req_model.addItems(["default", "claude-sonnet-5", "gpt-5.5"])
        self.req_tokens = QSpinBox()
        self.req_tokens.setRange(0, 2_000_000)
        self.req_tokens.setSingleStep(1000)
        self.req_tokens.setValue(20_000)
        self.req_tools = QCheckBox("uses tools")
        self.req_tools.setChecked(True)
        self.req_images = QCheckBox("has images")
        form.addRow("What-if: requested model", self.req_model)
        form.addRow("Input tokens", self.req_tokens)
        form.addRow("", self.req_tools)
        form.addRow("", self.req_images)
        fbox = QWidget()
        fbox.setLayout(form)
        top.addWidget(fbox, 2)
        self.body.addLayout(top)

        lower = QHBoxLayout()
        self.chart = ScatterChart("Pool: cost per request vs quality", "cost per request ($)",
                                  "quality")
        self.chart.chart_.legend().setAlignment(Qt.AlignmentFlag.AlignRight)
        self.frontier = QLineSeries()
        pen = QPen(QColor("#9aa4b2"), 1.5)
        pen.setStyle(Qt.PenStyle.DashLine)
        self.frontier.setPen(pen)
        self.frontier.setName("Pareto frontier")
        self._add_series(self.frontier)
        self.model_series: dict[str, QScatterSeries] = {}
        self.presets = QScatterSeries()
        self.presets.setName("presets")
        self.presets.setMarkerShape(QScatterSeries.MarkerShape.MarkerShapeRotatedRectangle)
        self.presets.setMarkerSize(18)
        self.presets.setColor(QColor(0, 0, 0, 0))
        self.presets.setBorderColor(theme.WARN)
        self.presets.setPen(QPen(theme.WARN, 2))
        self._add_series(self.presets)
        self.chosen = QScatterSeries()
        self.chosen.setName("router's pick")
        self.chosen.setMarkerSize(26)
        self.chosen.setColor(QColor(0, 0, 0, 0))
        self.chosen.setPen(QPen(theme.BAD, 3))
        self._add_series(self.chosen)
        lower.addWidget(self.chart, 3)
        side = QVBoxLayout()
        self.pick = QLabel("—")
        self.pick.setObjectName("cardValue")
        self.pick.setWordWrap(True)
        side.addWidget(QLabel("The router would pick"))
        side.addWidget(self.pick)
        self.reasons = QListWidget()
        self.reasons.setAccessibleName("Reasons")
        self.reasons.setWordWrap(True)
        side.addWidget(self.reasons, 1)
        sw = QWidget()
        sw.setLayout(side)
        lower.addWidget(sw, 2)
        self.body.addLayout(lower, 1)
        self.body.addLayout(self._build_replay(), 1)

        self._apply_timer = QTimer(self)
        self._apply_timer.setSingleShot(True)
        self._apply_timer.setInterval(DEBOUNCE_MS)
        self._apply_timer.timeout.connect(self.apply_objective)
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(DEBOUNCE_MS)
        self._preview_timer.timeout.connect(self.preview)
        for sig in (self.req_model.currentTextChanged, self.req_tokens.valueChanged,
                    self.req_tools.toggled, self.req_images.toggled):
            sig.connect(lambda *_: self._preview_timer.start())
        self._replay_timer = QTimer(self)
        self._replay_timer.setSingleShot(True)
        self._replay_timer.setInterval(REPLAY_DEBOUNCE_MS)
        self._replay_timer.timeout.connect(self.replay)
        self.replay_days.currentIndexChanged.connect(lambda *_: self._replay_timer.start())

    def _build_options(self) -> QGroupBox:
        box = QGroupBox("Options")
        col = QVBoxLayout(box)
        self.options: dict[str, QCheckBox] = {}
        self._option_pending: set[str] = set()
        for name, (label, tip, _action) in OPTIONS.items():
            cb = QCheckBox(label)
            cb.setToolTip(tip)
            cb.setAccessibleName(label.split(":")[0])
            cb.setEnabled(False)  # until the daemon's policy is known
            # clicked, not toggled: only the user's change is sent, not a refresh's
            cb.clicked.connect(lambda on, n=name: self.apply_option(n, on))
            col.addWidget(cb)
            self.options[name] = cb
        return box

    def _build_replay(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.replay_chart = ScatterChart("Recorded traffic replayed: total cost vs quality",
                                         "total cost ($)", "quality (predicted)")
        self.replay_chart.chart_.legend().setAlignment(Qt.AlignmentFlag.AlignRight)
        rc = self.replay_chart
        rc.add_group("objectives swept", QColor("#9aa4b2"), line=True)
        rc.add_group("what-if points", QColor("#2f7ef6"), size=9)
        rc.add_group("always-strongest", QColor("#a45de0"), size=12)
        rc.add_group("recorded (actual)", QColor("#20a464"), size=14)
        rc.add_group("slider position", QColor(0, 0, 0, 0), size=24)
        mark = rc.groups["slider position"]
        assert isinstance(mark, QScatterSeries)
        mark.setPen(QPen(theme.BAD, 3))
        rec = rc.groups["recorded (actual)"]
        assert isinstance(rec, QScatterSeries)
        rec.setMarkerShape(QScatterSeries.MarkerShape.MarkerShapeRotatedRectangle)
        row.addWidget(rc, 3)
        side = QVBoxLayout()
        pick = QHBoxLayout()
        self.replay_days = QComboBox()
        self.replay_days.addItems([f"{d} day{'s' if d > 1 else ''}" for d in REPLAY_DAYS])
        self.replay_days.setCurrentIndex(REPLAY_DAYS.index(7))
        self.replay_days.setAccessibleName("Recorded traffic window")
        lab = QLabel("Recorded traffic: &last")
        lab.setBuddy(self.replay_days)
        pick.addWidget(lab)
        pick.addWidget(self.replay_days)
        pick.addStretch(1)
        side.addLayout(pick)
        self.replay_note = QLabel("")
        self.replay_note.setObjectName("hint")
        self.replay_note.setWordWrap(True)
        side.addWidget(self.replay_note)
        self.replay_summary = QListWidget()
        self.replay_summary.setAccessibleName("Recorded traffic what-if")
        self.replay_summary.setWordWrap(True)
        side.addWidget(self.replay_summary, 1)
        sw = QWidget()
        sw.setLayout(side)
        row.addWidget(sw, 2)
        self._replay_seq = 0
        self.replay_reply: Any = None
        return row

    def _add_series(self, s: Any) -> None:
        self.chart.chart_.addSeries(s)
        s.attachAxis(self.chart.x)
        s.attachAxis(self.chart.y)

    # -- objective --------------------------------------------------------------------

    def objective(self) -> tuple[float, float, float]:
        c, q, lat = (self.sliders[n].value() / 100 for n in WEIGHTS)
        return c, q, lat

    def _slider_moved(self, _v: int) -> None:
        for n in WEIGHTS:
            self.value_labels[n].setText(f"{self.sliders[n].value() / 100:.2f}")
        if self._applying:
            return
        self.applied.setText("applying…")
        self._apply_timer.start()
        self._preview_timer.start()
        self._replay_timer.start()

    def _set_sliders(self, obj: Any) -> None:
        self._applying = True
        try:
            for n in WEIGHTS:
                self.sliders[n].setValue(round(getattr(obj, n) * 100))
        finally:
            self._applying = False

    def apply_objective(self) -> None:
        c, q, lat = self.objective()
        req = policy_pb2.SetPolicyRequest(
            policy=policy_pb2.Policy(objective=policy_pb2.Objective(cost=c, quality=q,
                                                                    latency=lat)))
        req.update_mask.paths.append("objective")

        def done(p: Any) -> None:
            o = p.objective
            self.applied.setText(f"live: cost {o.cost:.2f} · quality {o.quality:.2f} · "
                                 f"latency {o.latency:.2f}")

        self.conn.call(lambda cl: cl.call(cl.policy.SetPolicy, req), done,
                       action="change the routing objective",
                       on_err=lambda _e: self.applied.setText("not applied"))

    # -- options: cascade, cache keep-alive ------------------------------------------

    def _set_options(self, policy: Any) -> None:
        """Show the daemon's state (a box whose change is on its way keeps the user's)."""
        states = {"cascade": policy.cascade.enabled, "keepalive": policy.keepalive}
        for name, cb in self.options.items():
            if name not in self._option_pending:
                cb.setChecked(states[name])
                cb.setEnabled(True)

    def apply_option(self, name: str, on: bool) -> None:
        """SetPolicy with this one field; on failure the box goes back as it was."""
        cb = self.options[name]
        cb.setEnabled(False)  # one change at a time
        self._option_pending.add(name)
        kwargs: dict[str, bool] = {name: on}

        def done(policy: Any) -> None:
            self._option_pending.discard(name)
            self._set_options(policy)

        def failed(_e: Any) -> None:
            self._option_pending.discard(name)
            cb.setChecked(not on)
            cb.setEnabled(True)

        self.conn.call(lambda c: c.set_policy(**kwargs), done,
                       action=f"turn {OPTIONS[name][2]} {'on' if on else 'off'}",
                       on_err=failed)

    # -- data -----------------------------------------------------------------------

    def refresh(self) -> None:
        def fetch(c: AdminClient) -> tuple[Any, list[Any], Any]:
            pools = c.call(c.models.ListPools, models_pb2.ListPoolsRequest())
            return c.get_policy(), c.list_models(), pools

        self.conn.call(fetch, self._show, action="load the routing policy")

    def _show(self, result: tuple[Any, list[Any], Any]) -> None:
        policy, self.models, pools = result
        self._set_options(policy)
        if not self._apply_timer.isActive():
            self._set_sliders(policy.objective)
            o = policy.objective
            self.applied.setText(f"live: cost {o.cost:.2f} · quality {o.quality:.2f} · "
                                 f"latency {o.latency:.2f}")
        names = ["default", *sorted(p.name for p in pools.pools if p.name != "default"),
                 *sorted(pools.aliases)[:6], *[m.name for m in self.models]]
        cur = self.req_model.currentText()
        self.req_model.blockSignals(True)
        self.req_model.clear()
        self.req_model.addItems(list(dict.fromkeys(names)))
        self.req_model.setCurrentText(cur or "default")
        self.req_model.blockSignals(False)
        self._draw_pool()
        self.preview()
        self.replay()

    def _point(self, name: str) -> tuple[float, float] | None:
        m = next((m for m in self.models if m.name == name), None)
        if m is None:
            return None
        return request_cost(m, self.req_tokens.value()), m.quality

    def _draw_pool(self) -> None:
        for s in self.model_series.values():
            self.chart.chart_.removeSeries(s)
        self.model_series.clear()
        pts = []
        for i, m in enumerate(self.models):
            s = QScatterSeries()
            s.setName(m.name)
            s.setMarkerSize(12)
            color = QColor(PALETTE[i % len(PALETTE)])
            s.setColor(color)
            s.setBorderColor(color)
            p = self._point(m.name)
            assert p is not None
            s.append(QPointF(*p))
            pts.append(p)
            self._add_series(s)
            self.model_series[m.name] = s
        self.frontier.replace([QPointF(x, y) for x, y in pareto_front(pts)])
        self.chart.fit([p[0] for p in pts], [p[1] for p in pts])
        self.chart.restyle()
        # the overlays stay on top
        for s in (self.presets, self.chosen):
            self.chart.chart_.removeSeries(s)
            self._add_series(s)
        self.chart.chart_.legend().markers(self.presets)[0].setVisible(False)

    def preview(self) -> None:
        if not self.models:
            return
        model = self.req_model.currentText() or "default"
        base = dict(requested_model=model, input_tokens=self.req_tokens.value(),
                    has_tools=self.req_tools.isChecked(), has_images=self.req_images.isChecked())
        objectives = {"now": self.objective(), **PRESETS}

        def fetch(c: AdminClient) -> dict[str, Any]:
            out = {}
            for label, (co, q, lat) in objectives.items():
                req = policy_pb2.PreviewRequest(**base, objective=policy_pb2.Objective(
                    cost=co, quality=q, latency=lat))
                out[label] = c.call(c.policy.Preview, req)
            return out

        self.conn.call(fetch, self._show_preview, action="preview the routing choice")

    def _show_preview(self, replies: dict[str, Any]) -> None:
        self._draw_pool()
        now = replies["now"]
        p = self._point(now.model)
        self.chosen.replace([QPointF(*p)] if p else [])
        cost = f" · {money(p[0])} per request" if p else ""
        self.pick.setText(f"{now.model}{cost}")
        self.reasons.clear()
        self.reasons.addItem(f"how: {now.how}")
        self.reasons.addItems(list(now.reasons))
        if now.fallbacks:
            self.reasons.addItem("fallbacks: " + ", ".join(now.fallbacks))
        self.reasons.addItem("")
        preset_pts = []
        for label in PRESETS:
            r = replies[label]
            self.reasons.addItem(f"what-if {label.lower()}: {r.model}")
            pp = self._point(r.model)
            if pp:
                preset_pts.append(QPointF(*pp))
        self.presets.replace(preset_pts)

    # -- what-if over the recorded traffic ---------------------------------------------

    def days(self) -> int:
        return REPLAY_DAYS[max(self.replay_days.currentIndex(), 0)]

    def replay(self) -> None:
        """ReplayPreview for the slider position (sent first) and the sweep."""
        self._replay_seq += 1
        seq, days = self._replay_seq, self.days()
        objectives = [self.objective(), *REPLAY_SWEEP]
        self.replay_note.setText(f"replaying the last {days} day{'s' if days > 1 else ''}…")

        def done(reply: Any) -> None:
            if seq == self._replay_seq:  # a slower, older reply must not win
                self._show_replay(reply)

        def failed(_e: Any) -> None:
            if seq == self._replay_seq:
                self.replay_note.setText("the recorded-traffic what-if is not available")

        self.conn.call(lambda c: c.replay_preview(days=days, objectives=objectives), done,
                       action="replay the recorded traffic", on_err=failed)

    def _show_replay(self, r: Any) -> None:
        self.replay_reply = r
        rc = self.replay_chart
        self.replay_summary.clear()
        if not r.points:
            for name in rc.groups:
                rc.set_points(name, [])
            self.replay_note.setText(r.note or "nothing to replay")
            return
        mine, swept = r.points[0], list(r.points)
        pts = [(p.cost_usd, p.quality) for p in swept]
        rc.set_points("what-if points", pts)
        rc.set_points("objectives swept", pareto_front(pts))
        rc.set_points("slider position", [(mine.cost_usd, mine.quality)])
        extra = [p for p in (r.recorded, r.strongest) if p.requests]
        rc.set_points("recorded (actual)",
                      [(r.recorded.cost_usd, r.recorded.quality)] if r.recorded.requests else [])
        rc.set_points("always-strongest",
                      [(r.strongest.cost_usd, r.strongest.quality)] if r.strongest.requests
                      else [])
        rc.fit([x for x, _ in pts] + [p.cost_usd for p in extra],
               [y for _, y in pts] + [p.quality for p in extra])
        rc.restyle()
        n = r.recorded.requests
        self.replay_note.setText(
            r.note or f"{n} request{'s' if n != 1 else ''} replayed; quality is "
            f"{mine.quality_source or 'predicted'}, not measured")
        self.replay_summary.addItem(
            f"at the slider: {money(mine.cost_usd)} · quality {mine.quality:.2f} · "
            f"cache hits {mine.cache_hit_rate:.0%}")
        self.replay_summary.addItem(
            f"recorded: {money(r.recorded.cost_usd)} · quality {r.recorded.quality:.2f} · "
            f"cache hits {r.recorded.cache_hit_rate:.0%}")
        self.replay_summary.addItem(
            f"always-strongest: {money(r.strongest.cost_usd)} · "
            f"quality {r.strongest.quality:.2f}")
        if r.recorded.baseline_cost_usd:
            self.replay_summary.addItem(
                f"recorded baseline (ledger): {money(r.recorded.baseline_cost_usd)}")
