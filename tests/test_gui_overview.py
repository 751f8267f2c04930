"""Overview and Sessions pages follow live traffic (stats stream + rollups)."""

from __future__ import annotations

from typing import Any

from switchman_gui.app import MainWindow
from tests.support.gui import send_messages, settle, wait_for, window  # noqa: F401
from tests.support.running import RunningDaemon


def test_charts_update_when_traffic_flows(window: MainWindow, admin_daemon: RunningDaemon,  # noqa: F811
                                          qtbot: Any) -> None:
    page = window.page("Overview")
    settle(qtbot, window)
    wait_for(qtbot, lambda: page.totals is not None)  # the stream's snapshot arrived
    assert page.totals.requests == 0 and page.first_run.isVisible()
    assert page.req_chart.values == {}

    send_messages(admin_daemon, 2, model="sim-claude-cheap")
    send_messages(admin_daemon, 1, session="other", model="sim-gpt-mid")
    wait_for(qtbot, lambda: page.c_reqs.value.text() == "3")
    assert not page.first_run.isVisible()
    assert page.req_chart.values == {"sim-claude-cheap": 2.0, "sim-gpt-mid": 1.0}
    assert all(v > 0 for v in page.model_spend_chart.values.values())
    assert page.decisions.count() == 3
    # the rollup charts are re-read after the stream reports traffic
    spend = page.spend_chart.series["Spend"]
    wait_for(qtbot, lambda: spend.count() > 1 and spend.at(spend.count() - 1).y() > 0)
    assert page.cache_chart.point_count() >= 1

    for label in ("7 days", "30 days"):
        page.set_range(label)
        settle(qtbot, window)
        wait_for(qtbot, lambda: spend.count() > 1 and spend.at(spend.count() - 1).y() > 0)


def test_sessions_table_and_detail(window: MainWindow, admin_daemon: RunningDaemon,  # noqa: F811
                                   qtbot: Any) -> None:
    send_messages(admin_daemon, 3, session="sess-a")
    page = window.page("Sessions")
    window.go(1)
    wait_for(qtbot, lambda: page.table.rowCount() == 1)
    assert page.table.item(0, 0).text() == "sess-a"
    assert page.table.item(0, 3).text() == "3"
    wait_for(qtbot, lambda: page.decisions.topLevelItemCount() == 3)
    first = page.decisions.topLevelItem(0)
    assert "→ sim-claude-cheap" in first.text(1)
    assert first.childCount() >= 1  # the decision's reasons
    assert page.timeline.point_count() == 6  # spend + baseline, one point per request
