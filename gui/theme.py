"""Light / dark palette that follows the OS (QStyleHints.colorScheme), and the
few colours the pages share (chart series, states)."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = QColor("#2f7ef6")
SPEND = QColor("#2f7ef6")
BASELINE = QColor("#9aa4b2")
SAVINGS = QColor("#20a464")
CACHE = QColor("#a45de0")
WARN = QColor("#e6a700")
BAD = QColor("#e0454b")
OK = QColor("#20a464")


def _dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor("#1e2127"), QColor("#262a31"), QColor("#e6e8eb")
    for role, color in {
        QPalette.ColorRole.Window: window, QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base, QPalette.ColorRole.AlternateBase: QColor("#2b3038"),
        QPalette.ColorRole.ToolTipBase: window, QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.Text: text, QPalette.ColorRole.Button: QColor("#30353d"),
        QPalette.ColorRole.ButtonText: text, QPalette.ColorRole.BrightText: QColor("#ff6b6b"),
        QPalette.ColorRole.Highlight: ACCENT, QPalette.ColorRole.HighlightedText: QColor("white"),
        QPalette.ColorRole.Link: QColor("#6aa5ff"), QPalette.ColorRole.PlaceholderText:
            QColor("#8a919c"), QPalette.ColorRole.Mid: QColor("#3a3f48"),
        QPalette.ColorRole.Light: QColor("#3a3f48"), QPalette.ColorRole.Midlight:
            QColor("#343942"), QPalette.ColorRole.Dark: QColor("#16181c"),
        QPalette.ColorRole.Shadow: QColor("#0e0f12"),
    }.items():
        p.setColor(role, color)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText,
                 QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b717c"))
    return p


def _light_palette() -> QPalette:
    p = QPalette()
    for role, color in {
        QPalette.ColorRole.Window: QColor("#f4f5f7"), QPalette.ColorRole.WindowText:
            QColor("#1d2129"), QPalette.ColorRole.Base: QColor("white"),
        QPalette.ColorRole.AlternateBase: QColor("#f0f2f5"),
        QPalette.ColorRole.Text: QColor("#1d2129"), QPalette.ColorRole.Button: QColor("#fbfbfc"),
        QPalette.ColorRole.ButtonText: QColor("#1d2129"), QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: QColor("white"),
        QPalette.ColorRole.PlaceholderText: QColor("#8a919c"),
    }.items():
        p.setColor(role, color)
    return p


STYLE = """
QFrame#card { border: 1px solid palette(mid); border-radius: 8px; background: palette(base); }
QLabel#cardValue { font-size: 20px; font-weight: 600; }
QLabel#cardTitle { color: palette(placeholder-text); }
QLabel#pageTitle { font-size: 18px; font-weight: 600; }
QLabel#hint { color: palette(placeholder-text); }
QFrame#banner { border-radius: 6px; padding: 2px; }
QListWidget#nav { border: none; font-size: 14px; }
QListWidget#nav::item { padding: 8px 12px; border-radius: 6px; color: palette(text); }
QListWidget#nav::item:selected { background: palette(highlight);
                                 color: palette(highlighted-text); }
QListWidget#nav::item:hover:!selected { background: palette(alternate-base); }
QPushButton:checked { background: palette(highlight); color: palette(highlighted-text); }
"""


class Theme(QObject):
    """Applies the palette now and whenever the OS scheme changes."""

    changed = Signal(bool)  # dark?

    def __init__(self, app: QApplication, force: str | None = None) -> None:
        super().__init__(app)
        self.app = app
        self.force = force  # "light" | "dark" | None (follow the OS)
        app.setStyle("Fusion")
        QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _s: self.apply())
        self.apply()

    @property
    def dark(self) -> bool:
        if self.force:
            return self.force == "dark"
        return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark

    def apply(self) -> None:
        self.app.setPalette(_dark_palette() if self.dark else _light_palette())
        self.app.setStyleSheet(STYLE)
        self.changed.emit(self.dark)


_current: Theme | None = None


def install(app: QApplication, force: str | None = None) -> Theme:
    global _current
    _current = Theme(app, force)
    return _current


def current() -> Theme | None:
    return _current


def is_dark() -> bool:
    return bool(_current and _current.dark)
