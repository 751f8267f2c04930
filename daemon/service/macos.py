"""macOS: a launchd agent (``~/Library/LaunchAgents/dev.switchman.daemon.plist``)
loaded into the user's GUI domain with ``launchctl bootstrap``."""

from __future__ import annotations

import plistlib
from pathlib import Path

from . import templates
from .base import LAUNCHD_LABEL, Outcome, ServiceEnv


class Launchd:
    def __init__(self, env: ServiceEnv) -> None:
        self.env = env

    @property
    def plist_path(self) -> Path:
        return self.env.home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"

    @property
    def domain(self) -> str:
        return f"gui/{self.env.uid}"

    @property
    def target(self) -> str:
        return f"{self.domain}/{LAUNCHD_LABEL}"

    def plist_bytes(self) -> bytes:
        # plistlib does the XML escaping of paths and arguments
        data = plistlib.loads(templates.load("launchd/dev.switchman.daemon.plist").encode())
        data["ProgramArguments"] = self.env.daemon_argv()
        # stdout/stderr only catch what is printed before logging starts (tracebacks)
        early = str(self.env.log_dir() / "launchd.log")
        data["StandardOutPath"] = data["StandardErrorPath"] = early
        return plistlib.dumps(data, sort_keys=False)

    def files(self) -> list[Path]:
        return [self.plist_path]

    def install(self, start: bool = True) -> Outcome:
        out = Outcome()
        self.plist_path.parent.mkdir(parents=True, exist_ok=True)
        self.env.log_dir().mkdir(parents=True, exist_ok=True)
        self.plist_path.write_bytes(self.plist_bytes())
        out.say(f"✓ wrote {self.plist_path}")
        # a loaded older copy would keep running the old binary: unload it first
        self.env.run("launchctl", "bootout", self.target)
        if not start:
            out.say("✓ the agent loads at your next login (RunAtLoad)")
            return out
        r = self.env.run("launchctl", "bootstrap", self.domain, str(self.plist_path))
        if r.ok:
            out.say("✓ loaded and started: the daemon now starts at every login")
        else:
            out.fail(f"✗ launchctl bootstrap failed ({r.returncode}): {r.text()}")
        return out

    def uninstall(self) -> Outcome:
        out = Outcome()
        r = self.env.run("launchctl", "bootout", self.target)
        out.say("✓ unloaded (the daemon is stopped)" if r.ok else "· the agent was not loaded")
        if self.plist_path.exists():
            self.plist_path.unlink()
            out.say(f"✓ removed {self.plist_path}")
        return out

    def status(self) -> Outcome:
        out = Outcome()
        if not self.plist_path.exists():
            out.fail(f"✗ not installed ({self.plist_path} missing): `switchman service install`")
            return out
        out.say(f"✓ installed: {self.plist_path}")
        r = self.env.run("launchctl", "print", self.target)
        if not r.ok:
            out.fail("✗ not loaded: `launchctl bootstrap "
                     f"{self.domain} {self.plist_path}` or log in again")
            return out
        state = next((ln.split("=", 1)[1].strip() for ln in r.stdout.splitlines()
                      if ln.strip().startswith("state =")), "loaded")
        (out.say if state == "running" else out.fail)(
            f"{'✓' if state == 'running' else '✗'} agent: {state}")
        return out
