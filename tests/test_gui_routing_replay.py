"""Routing page: the what-if over recorded traffic (ReplayPreview) is drawn on
its chart, follows the slider, and says so when there is no traffic."""

from __future__ import annotations

from typing import Any

from switchman_gui.app import MainWindow
from switchman_gui.pages.routing import REPLAY_SWEEP
from tests.support.gui import settle, wait_for, window  # noqa: F401
from tests.support.running import RunningDaemon
from tests.test_replay_preview import agent_traffic


def test_routing_page_draws_the_recorded_traffic_what_if(
        window: MainWindow, admin_daemon: RunningDaemon, qtbot: Any) -> None:  # noqa: F811
    page = window.page("Routing")
    window.go(list(window.pages).index("Routing"))
    settle(qtbot, window)
    groups = page.replay_chart.groups
    wait_for(qtbot, lambda: "no recorded traffic in the last 7 days" in page.replay_note.text())
    assert groups["what-if points"].count() == 0

    agent_traffic(admin_daemon, sessions=1, turns=6)
    admin_daemon.ledger_rows()
    page.replay_days.setCurrentIndex(2)  # 30 days: a new replay (debounced)
    wait_for(qtbot, lambda: groups["what-if points"].count() == 1 + len(REPLAY_SWEEP))
    assert groups["slider position"].count() == 1
    assert groups["recorded (actual)"].count() == 1
    assert groups["always-strongest"].count() == 1
    assert groups["objectives swept"].count() >= 1
    assert "6 requests replayed" in page.replay_note.text()
    assert "predicted" in page.replay_note.text()
    rec = groups["recorded (actual)"].at(0)
    rows = admin_daemon.ledger_rows()
    assert abs(rec.x() - sum(r["cost_usd"] for r in rows)) < 1e-9
    assert page.replay_summary.count() >= 3

    # moving a slider replays again with the slider's objective first
    page.sliders["cost"].setValue(100)
    page.sliders["quality"].setValue(0)
    wait_for(qtbot, lambda: page.replay_reply is not None
             and page.replay_reply.points[0].objective.cost == 1.0
             and page.replay_reply.points[0].objective.quality == 0.0)
    mine = page.replay_reply.points[0]
    mark = groups["slider position"].at(0)
    assert (mark.x(), mark.y()) == (mine.cost_usd, mine.quality)
