"""Routing page: sliders change the daemon's live objective; the what-if preview
lands on the Pareto chart."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt

from switchman_gui.app import MainWindow
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from tests.support.gui import settle, wait_for, window  # noqa: F401
from tests.support.running import RunningDaemon


def test_dragging_a_slider_changes_the_daemons_policy(
        window: MainWindow, admin_daemon: RunningDaemon, qtbot: Any) -> None:  # noqa: F811
    page = window.page("Routing")
    qtbot.keyClick(window, Qt.Key.Key_5, Qt.KeyboardModifier.ControlModifier)
    assert window.stack.currentWidget() is page
    settle(qtbot, window)
    cost = page.sliders["cost"]
    wait_for(qtbot, lambda: cost.value() == 50)  # read from the daemon on show
    # a drag: press, move through several positions, release
    cost.setSliderDown(True)
    for v in (60, 70, 80, 90):
        cost.setSliderPosition(v)
    cost.setSliderDown(False)
    with AdminClient.connect(admin_daemon.daemon.data_dir) as c:
        wait_for(qtbot, lambda: abs(c.get_policy().objective.cost - 0.9) < 1e-9)
        o = c.get_policy().objective
        assert (o.quality, o.latency) == (0.5, 0.2)  # untouched weights stay
    assert admin_daemon.ctx.config.routing.objective.cost == 0.9
    wait_for(qtbot, lambda: "live: cost 0.90" in page.applied.text())

    # the what-if preview marks the router's pick on the chart
    wait_for(qtbot, lambda: page.chosen.count() == 1)
    assert page.pick.text().startswith("sim-")
    assert len(page.model_series) == 6 and page.frontier.count() >= 1
    assert page.presets.count() == 3


def test_keyboard_moves_a_slider_too(window: MainWindow, admin_daemon: RunningDaemon,  # noqa: F811
                                     qtbot: Any) -> None:
    page = window.page("Routing")
    window.go(4)
    settle(qtbot, window)
    lat = page.sliders["latency"]
    wait_for(qtbot, lambda: lat.value() == 20)
    lat.setFocus()
    qtbot.keyClick(lat, Qt.Key.Key_End)
    wait_for(qtbot, lambda: admin_daemon.ctx.config.routing.objective.latency == 1.0)


def test_option_checkboxes_switch_the_cascade_and_keepalive(
        window: MainWindow, admin_daemon: RunningDaemon, qtbot: Any) -> None:  # noqa: F811
    page = window.page("Routing")
    window.go(4)
    settle(qtbot, window)
    cascade, keepalive = page.options["cascade"], page.options["keepalive"]
    # the daemon's state, once known; tooltips say what each costs and saves
    wait_for(qtbot, lambda: cascade.isEnabled() and keepalive.isEnabled())
    assert not cascade.isChecked() and not keepalive.isChecked()
    assert "non-streaming" in cascade.text().lower() and "escalation" in cascade.toolTip()
    assert "billed" in keepalive.toolTip()
    before = admin_daemon.ctx.config  # a change swaps in a new config object

    qtbot.mouseClick(cascade, Qt.MouseButton.LeftButton)
    with AdminClient.connect(admin_daemon.daemon.data_dir) as c:
        wait_for(qtbot, lambda: c.get_policy().cascade.enabled)
        assert not c.get_policy().keepalive
        wait_for(qtbot, lambda: cascade.isEnabled() and cascade.isChecked())
        assert admin_daemon.ctx.config.routing.cascade.enabled
        assert before is not admin_daemon.ctx.config

        qtbot.mouseClick(keepalive, Qt.MouseButton.LeftButton)
        wait_for(qtbot, lambda: c.get_policy().keepalive)
        assert admin_daemon.daemon.keepalive.enabled

        qtbot.mouseClick(cascade, Qt.MouseButton.LeftButton)
        wait_for(qtbot, lambda: not c.get_policy().cascade.enabled)
        wait_for(qtbot, lambda: cascade.isEnabled() and not cascade.isChecked())
        assert c.get_policy().keepalive  # the other option is untouched

        # a change made elsewhere (the CLI) shows on refresh
        c.set_policy(keepalive=False, cascade=True)
        window.refresh_current()
        wait_for(qtbot, lambda: cascade.isChecked() and not keepalive.isChecked())


def test_an_option_that_cannot_be_applied_goes_back(
        window: MainWindow, admin_daemon: RunningDaemon, qtbot: Any,  # noqa: F811
        monkeypatch: Any) -> None:
    page = window.page("Routing")
    window.go(4)
    settle(qtbot, window)
    cascade = page.options["cascade"]
    wait_for(qtbot, lambda: cascade.isEnabled())

    def refuse(self: AdminClient, **kw: Any) -> Any:
        raise AdminError("invalid_argument", "refused for the test")

    monkeypatch.setattr(AdminClient, "set_policy", refuse)
    qtbot.mouseClick(cascade, Qt.MouseButton.LeftButton)
    wait_for(qtbot, lambda: window.messages and window.messages[-1][0] == "error")
    assert "Could not turn the cascade on: refused for the test" in window.messages[-1][1]
    wait_for(qtbot, lambda: cascade.isEnabled() and not cascade.isChecked())
    assert not admin_daemon.ctx.config.routing.cascade.enabled
