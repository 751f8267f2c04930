"""Windows: a per-user Task Scheduler task that starts the daemon at logon,
registered from an XML definition with ``schtasks /Create /XML`` (no admin
rights needed for a LeastPrivilege task of the current user)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

from . import templates
from .base import APP, TASK_NAME, Outcome, ServiceEnv


class WindowsTask:
    def __init__(self, env: ServiceEnv) -> None:
        self.env = env

    @property
    def xml_path(self) -> Path:
        # kept after registration: `service status` shows it, uninstall removes it
        return self.env.local_appdata() / APP / "switchman-task.xml"

    def user_id(self) -> str:
        user = self.env.environ.get("USERNAME", "")
        domain = self.env.environ.get("USERDOMAIN", "")
        return f"{domain}\\{user}" if domain and user else user

    def xml_text(self) -> str:
        argv = self.env.daemon_argv()
        return templates.render(
            "windows/switchman-task.xml", task_name=TASK_NAME, user_id=escape(self.user_id()),
            command=escape(argv[0]), arguments=escape(subprocess.list2cmdline(argv[1:])),
            working_dir=escape(str(self.env.home)))

    def files(self) -> list[Path]:
        return [self.xml_path]

    def install(self, start: bool = True) -> Outcome:
        out = Outcome()
        self.xml_path.parent.mkdir(parents=True, exist_ok=True)
        self.env.log_dir().mkdir(parents=True, exist_ok=True)
        # schtasks reads the XML as UTF-16 (the encoding its declaration names)
        self.xml_path.write_text(self.xml_text(), encoding="utf-16")
        out.say(f"✓ wrote {self.xml_path}")
        r = self.env.run("schtasks", "/Create", "/TN", TASK_NAME, "/XML", str(self.xml_path),
                         "/F")
        if not r.ok:
            out.fail(f"✗ schtasks /Create failed ({r.returncode}): {r.text()}")
            return out
        out.say(f"✓ registered the logon task {TASK_NAME}")
        if start:
            # an upgrade re-runs install: end the old process so the new one starts
            self.env.run("schtasks", "/End", "/TN", TASK_NAME)
            r = self.env.run("schtasks", "/Run", "/TN", TASK_NAME)
            if r.ok:
                out.say("✓ started: the daemon now starts at every logon")
            else:
                out.fail(f"✗ schtasks /Run failed ({r.returncode}): {r.text()}")
        return out

    def uninstall(self) -> Outcome:
        out = Outcome()
        self.env.run("schtasks", "/End", "/TN", TASK_NAME)
        r = self.env.run("schtasks", "/Delete", "/TN", TASK_NAME, "/F")
        out.say(f"✓ deleted the task {TASK_NAME}" if r.ok else "· the task was not registered")
        if self.xml_path.exists():
            self.xml_path.unlink()
            out.say(f"✓ removed {self.xml_path}")
        return out

    def status(self) -> Outcome:
        out = Outcome()
        r = self.env.run("schtasks", "/Query", "/TN", TASK_NAME, "/FO", "LIST", "/V")
        if not r.ok:
            out.fail(f"✗ not installed (no task {TASK_NAME}): `switchman service install`")
            return out
        out.say(f"✓ installed: task {TASK_NAME}")
        status = next((ln.split(":", 1)[1].strip() for ln in r.stdout.splitlines()
                       if ln.strip().lower().startswith("status:")), "unknown")
        (out.say if status.lower() == "running" else out.fail)(
            f"{'✓' if status.lower() == 'running' else '✗'} task: {status}")
        return out
