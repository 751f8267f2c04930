"""Render every console page offscreen against a real daemon with simulated
traffic, and save PNGs to assets/screenshots/.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/screenshots.py [--out DIR]

The daemon runs as a separate process (``switchman daemon`` on a temporary data
dir, simulated providers, no delays); traffic goes through the official
anthropic and openai SDKs, as agents would send it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anthropic
import openai
from PySide6.QtCore import QCoreApplication, QEventLoop
from PySide6.QtWidgets import QApplication

from switchman_gui import theme
from switchman_gui.app import PAGES, MainWindow
from switchman_gui.connection import CONNECTED, Connection
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2, teamkeys_pb2

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are a careful coding agent working in a large repository. " * 300


def start_daemon(data_dir: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "switchman_daemon.cli", "daemon", "--data-dir", str(data_dir),
           "--port", "0", "--sim-time-scale", "0", "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_daemon(data_dir: Path, timeout: float = 30) -> AdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = AdminClient.connect(data_dir, timeout=5)
            c.status()
            return c
        except AdminError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def send_traffic(url: str) -> None:
    """A few agent-like sessions: growing prefixes (cache hits), several models."""
    ant = anthropic.Anthropic(base_url=url, api_key="local", max_retries=0)
    oai = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0)
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    for s, model in enumerate(["claude-sonnet-5", "claude-opus-4-8", "sim-claude-cheap"]):
        history: list[dict[str, str]] = []
        for turn in range(4 + s):
            history.append({"role": "user", "content": f"step {turn}: [[sim:reply done {turn}]]"})
            msg = ant.messages.create(
                model=model, max_tokens=300, system=system, messages=history,
                extra_headers={"x-claude-code-session-id": f"cc-session-{s + 1}"})
            history.append({"role": "assistant", "content": msg.content[0].text})
    for s in range(2):
        msgs = [{"role": "system", "content": "Act as an expert software developer. " * 200}]
        for turn in range(3):
            msgs.append({"role": "user", "content": f"change {turn} [[sim:reply ok]]"})
            r = oai.chat.completions.create(model="gpt-4o" if s == 0 else "sim-gpt-mid",
                                            messages=msgs)  # type: ignore[arg-type]
            msgs.append({"role": "assistant", "content": r.choices[0].message.content or ""})
    oai.responses.create(model="gpt-5.5", input="[[sim:reply hi]] summarise the diff")


def admin_setup(c: AdminClient) -> None:
    """Budgets and team keys, where the daemon already serves them."""
    try:
        c.call(c.budgets.SetBudget, budgets_pb2.SetBudgetRequest(budget=budgets_pb2.Budget(
            scope=budgets_pb2.BUDGET_SCOPE_GLOBAL, period=budgets_pb2.BUDGET_PERIOD_DAILY,
            soft_usd=2.0, hard_usd=5.0, action=budgets_pb2.BUDGET_ACTION_DOWNGRADE)))
    except AdminError as e:
        print(f"budgets: {e.kind}", file=sys.stderr)
    try:
        for name, owner in (("laptop-claude", "ana"), ("ci-bot", "platform")):
            c.call(c.teamkeys.Issue, teamkeys_pb2.IssueTeamKeyRequest(name=name, owner=owner))
    except AdminError as e:
        print(f"team keys: {e.kind}", file=sys.stderr)


def settle(win: MainWindow, ms: int = 800) -> None:
    """Let queued calls finish and their results paint."""
    deadline = time.monotonic() + ms / 1000
    while time.monotonic() < deadline or win.conn.worker.pending:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)
        if time.monotonic() > deadline + 10:
            break


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="switchman-shots-") as tmp:
        data, home = Path(tmp) / "data", Path(tmp) / "home"
        home.mkdir()
        proc = start_daemon(data)
        try:
            with wait_for_daemon(data) as c:
                send_traffic(c.status().proxy_url)
            app = QApplication.instance() or QApplication(sys.argv[:1])
            assert isinstance(app, QApplication)
            for mode in ("light", "dark"):
                theme.install(app, mode)
                conn = Connection(data)
                win = MainWindow(conn, ask_to_start=False, home=home)
                win.resize(1360, 900)
                win.show()
                conn.start()
                deadline = time.monotonic() + 20
                while conn.state != CONNECTED and time.monotonic() < deadline:
                    settle(win, 100)
                if mode == "light":
                    with AdminClient.connect(data) as c:
                        admin_setup(c)
                settle(win, 2500)
                for i, (name, _cls) in enumerate(PAGES):
                    if mode == "dark" and name not in ("Overview", "Routing"):
                        continue
                    win.go(i)
                    settle(win, 1500)
                    if name == "Sessions":
                        win.page("Sessions").table.selectRow(1)
                        settle(win, 1200)
                    suffix = "-dark" if mode == "dark" else ""
                    path = out / f"{i + 1:02d}-{name.lower()}{suffix}.png"
                    win.banner.hide()
                    settle(win, 100)
                    win.grab().save(str(path))
                    print(path)
                win.tray.icon.hide()
                conn.close()
                win.deleteLater()
                settle(win, 100)
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
