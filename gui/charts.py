"""Small QtCharts building blocks shared by the pages: a time-series chart, a
category bar chart and a scatter chart, all restyled when the theme changes."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from PySide6.QtCharts import (
    QBarCategoryAxis,
    QBarSet,
    QChart,
    QChartView,
    QDateTimeAxis,
    QHorizontalBarSeries,
    QLineSeries,
    QScatterSeries,
    QValueAxis,
)
from PySide6.QtCore import QDateTime, QMargins, QPointF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import QApplication, QSizePolicy, QWidget

from switchman_gui import theme


def _pal() -> QPalette:
    return QApplication.palette()


class Chart(QChartView):
    """A chart view that follows the console's palette."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        self.chart_ = QChart()
        super().__init__(self.chart_, parent)
        self.chart_.setTitle(title)
        self.chart_.setMargins(QMargins(4, 4, 4, 4))
        self.chart_.setAnimationOptions(QChart.AnimationOption.NoAnimation)
        self.chart_.legend().setAlignment(Qt.AlignmentFlag.AlignBottom)
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        t = theme.current()
        if t is not None:
            t.changed.connect(lambda _dark: self.restyle())
        self.restyle()

    def restyle(self) -> None:
        p = _pal()
        text = p.color(QPalette.ColorRole.Text)
        grid = QColor(text)
        grid.setAlpha(40)
        c = self.chart_
        c.setBackgroundBrush(QBrush(p.color(QPalette.ColorRole.Base)))
        c.setBackgroundRoundness(6)
        c.setTitleBrush(QBrush(text))
        c.legend().setLabelColor(text)
        for axis in c.axes():
            axis.setLabelsColor(text)
            axis.setTitleBrush(QBrush(text))
            axis.setGridLineColor(grid)
            axis.setLinePenColor(grid)

    def _attach(self, axis: object, align: Qt.AlignmentFlag) -> None:
        self.chart_.addAxis(axis, align)  # type: ignore[arg-type]
        self.restyle()


class TimeChart(Chart):
    """Named line series over wall-clock time (epoch seconds)."""

    def __init__(self, title: str, names: Sequence[tuple[str, QColor]], y_label: str = "",
                 y_format: str = "%.2f", parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.x = QDateTimeAxis()
        self.x.setFormat("HH:mm")
        self.y = QValueAxis()
        self.y.setLabelFormat(y_format)
        if y_label:
            self.y.setTitleText(y_label)
        self._attach(self.x, Qt.AlignmentFlag.AlignBottom)
        self._attach(self.y, Qt.AlignmentFlag.AlignLeft)
        self.series: dict[str, QLineSeries] = {}
        for name, color in names:
            s = QLineSeries()
            s.setName(name)
            s.setPen(QPen(color, 2))
            self.chart_.addSeries(s)
            s.attachAxis(self.x)
            s.attachAxis(self.y)
            self.series[name] = s

    def set_data(self, data: dict[str, list[tuple[float, float]]], day_format: bool = False,
                 x_range: tuple[float, float] | None = None, money_axis: bool = False
                 ) -> None:
        xs: list[float] = []
        ys: list[float] = [0.0]
        for name, pts in data.items():
            self.series[name].replace([QPointF(t * 1000.0, v) for t, v in pts])
            xs += [t for t, _ in pts]
            ys += [v for _, v in pts]
        lo, hi = x_range if x_range else ((min(xs), max(xs)) if xs else (0.0, 0.0))
        if not xs and not x_range:
            return
        lo, hi, ticks, step = time_ticks(lo, hi)
        self.x.setFormat("MMM d" if step >= 86400 or (day_format and step >= 21600)
                         else ("ddd HH:mm" if day_format else "HH:mm"))
        self.x.setTickCount(ticks)
        self.x.setRange(QDateTime.fromMSecsSinceEpoch(int(lo * 1000)),
                        QDateTime.fromMSecsSinceEpoch(int(hi * 1000)))
        top, ticks = nice_axis(max(ys))
        self.y.setRange(0.0, top)
        self.y.setTickCount(ticks)
        if money_axis:
            self.y.setLabelFormat(money_format(top))

    def show_points(self, on: bool = True) -> None:
        for s in self.series.values():
            s.setPointsVisible(on)

    def point_count(self) -> int:
        return sum(s.count() for s in self.series.values())


class LineChart(Chart):
    """Named line series over a numeric x axis (e.g. a session's request number)."""

    def __init__(self, title: str, names: Sequence[tuple[str, QColor]], x_label: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.x = QValueAxis()
        self.x.setLabelFormat("%d")
        self.x.setTitleText(x_label)
        self.y = QValueAxis()
        self._attach(self.x, Qt.AlignmentFlag.AlignBottom)
        self._attach(self.y, Qt.AlignmentFlag.AlignLeft)
        self.series: dict[str, QLineSeries] = {}
        for name, color in names:
            s = QLineSeries()
            s.setName(name)
            s.setPen(QPen(color, 2))
            s.setPointsVisible(True)
            self.chart_.addSeries(s)
            s.attachAxis(self.x)
            s.attachAxis(self.y)
            self.series[name] = s

    def set_data(self, data: dict[str, list[tuple[float, float]]]) -> None:
        n = 1.0
        top = 0.0
        for name, pts in data.items():
            self.series[name].replace([QPointF(x, y) for x, y in pts])
            n = max([n, *(x for x, _ in pts)])
            top = max([top, *(y for _, y in pts)])
        top, ticks = nice_axis(top)
        self.y.setRange(0.0, top)
        self.y.setTickCount(ticks)
        self.y.setLabelFormat(money_format(top))
        if n <= 10:
            self.x.setRange(0.0, float(n))
            self.x.setTickCount(int(n) + 1)
        else:
            xtop, xticks = nice_axis(n)
            self.x.setRange(0.0, xtop)
            self.x.setTickCount(xticks)

    def point_count(self) -> int:
        return sum(s.count() for s in self.series.values())


class BarChart(Chart):
    """One value per category (e.g. per model), as horizontal bars."""

    def __init__(self, title: str, color: QColor, y_format: str = "%.0f",
                 parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.chart_.legend().setVisible(False)
        self._color, self._fmt = color, y_format
        self.bars = QHorizontalBarSeries()
        self.bars.setBarWidth(0.6)
        self.chart_.addSeries(self.bars)
        self.x = QValueAxis()  # values run along the bottom
        self.x.setLabelFormat(y_format)
        self.cats = QBarCategoryAxis()
        self._attach(self.x, Qt.AlignmentFlag.AlignBottom)
        self._attach(self.cats, Qt.AlignmentFlag.AlignLeft)
        self.bars.attachAxis(self.x)
        self.bars.attachAxis(self.cats)
        self.values: dict[str, float] = {}

    def set_values(self, values: dict[str, float], money_axis: bool = False) -> None:
        self.values = dict(values)
        self.bars.clear()
        self.cats.clear()
        cats = list(reversed(values))  # the first category on top
        bar = QBarSet("value")
        bar.setColor(self._color)
        bar.setBorderColor(self._color)
        for c in cats:
            bar.append(values[c])
        self.bars.append(bar)
        self.cats.append([short(c, 22) for c in cats] or [" "])
        top, ticks = nice_axis(max(values.values(), default=0.0), integer=not money_axis)
        self.x.setRange(0.0, top)
        self.x.setTickCount(ticks)
        if money_axis:
            self.x.setLabelFormat(money_format(top))
        self.restyle()


class ScatterChart(Chart):
    """Labelled points (e.g. models by cost and quality) with named groups."""

    def __init__(self, title: str, x_label: str, y_label: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.x = QValueAxis()
        self.x.setTitleText(x_label)
        self.x.setLabelFormat("%.3f")
        self.y = QValueAxis()
        self.y.setTitleText(y_label)
        self.y.setLabelFormat("%.2f")
        self._attach(self.x, Qt.AlignmentFlag.AlignBottom)
        self._attach(self.y, Qt.AlignmentFlag.AlignLeft)
        self.groups: dict[str, QScatterSeries | QLineSeries] = {}

    def add_group(self, name: str, color: QColor, size: float = 10.0, line: bool = False,
                  labels: bool = False) -> None:
        s: QScatterSeries | QLineSeries
        if line:
            s = QLineSeries()
            pen = QPen(color, 1.5)
            pen.setStyle(Qt.PenStyle.DashLine)
            s.setPen(pen)
        else:
            s = QScatterSeries()
            s.setMarkerSize(size)
            s.setColor(color)
            s.setBorderColor(color)
        s.setName(name)
        if labels:
            s.setPointLabelsVisible(True)
            s.setPointLabelsFormat("@label")
            s.setPointLabelsColor(_pal().color(QPalette.ColorRole.Text))
        self.chart_.addSeries(s)
        s.attachAxis(self.x)
        s.attachAxis(self.y)
        self.groups[name] = s

    def set_points(self, name: str, points: list[tuple[float, float]]) -> None:
        self.groups[name].replace([QPointF(x, y) for x, y in points])

    def fit(self, xs: list[float], ys: list[float]) -> None:
        if xs:
            top, ticks = nice_axis(max(xs) * 1.1)
            self.x.setRange(0.0, top)
            self.x.setTickCount(ticks)
            self.x.setLabelFormat(money_format(top))
        if ys:
            lo = max(0.0, math.floor((min(ys) - 0.05) * 10) / 10)
            hi = min(1.0, math.ceil((max(ys) + 0.03) * 10) / 10)
            self.y.setRange(lo, hi)
            self.y.setTickCount(round((hi - lo) * 10) + 1)


def money_format(top: float) -> str:
    """An axis label format with enough decimals for a range of 0..top dollars."""
    if top >= 4:
        return "$%.0f"
    if top >= 0.4:
        return "$%.1f"
    if top >= 0.04:
        return "$%.2f"
    if top >= 0.004:
        return "$%.3f"
    return "$%.4f"


_STEPS = (300, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
          7 * 86400)


def time_ticks(lo: float, hi: float, max_ticks: int = 8) -> tuple[float, float, int, int]:
    """An axis range aligned to a round step in local time, and its tick count."""
    if hi - lo < 600:
        lo, hi = lo - 300, hi + 300
    step = next((s for s in _STEPS if (hi - lo) / s <= max_ticks - 1), _STEPS[-1])
    off = time.localtime(lo).tm_gmtoff
    a = (lo + off) // step * step - off
    b = -((-(hi + off)) // step) * step - off
    return a, b, round((b - a) / step) + 1, step


def nice_ceiling(v: float) -> float:
    """A round axis maximum at or above ``v`` (1, 2, 2.5, 5 × 10^n)."""
    if v <= 0:
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * 10 ** exp >= v:
            return m * 10 ** exp
    return 10 ** (exp + 1)


def nice_axis(v: float, integer: bool = False) -> tuple[float, int]:
    """A round axis maximum for ``v`` and a tick count that gives round steps."""
    if integer and v <= 5:
        top = max(1, math.ceil(v))
        return float(top), top + 1
    top = nice_ceiling(v)
    mant = top / 10 ** math.floor(math.log10(top))
    ticks = {1.0: 6, 2.0: 5, 2.5: 6, 5.0: 6}.get(round(mant, 2), 6)
    return top, ticks


def short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"
