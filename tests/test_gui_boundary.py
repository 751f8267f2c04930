"""The console knows the daemon only over gRPC: nothing in gui/ imports
switchman_daemon, and loading the whole console does not pull it in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

GUI = Path(__file__).resolve().parent.parent / "gui"


def test_gui_source_never_imports_the_daemon() -> None:
    files = sorted(GUI.rglob("*.py"))
    assert len(files) > 10
    offenders = []
    for f in files:
        tree = ast.parse(f.read_text("utf-8"), str(f))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            offenders += [f"{f.name}: {n}" for n in names
                          if n.split(".")[0] in ("switchman_daemon", "daemon")]
    assert offenders == []


def test_loading_the_console_does_not_load_the_daemon() -> None:
    code = ("import sys, switchman_gui.app, switchman_gui.agent_setup; "
            "print(sorted(m for m in sys.modules if m.startswith('switchman_daemon')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={"QT_QPA_PLATFORM": "offscreen", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
