"""Linux: a systemd user unit for the daemon, and a .desktop entry (with icons)
for the console."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import templates
from .base import SERVICE_NAME, Outcome, ServiceEnv

_SAFE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def systemd_quote(arg: str) -> str:
    """One ExecStart word: ``%`` and ``$`` are specifiers/variables to systemd."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def desktop_quote(arg: str) -> str:
    """One Exec word per the Desktop Entry spec (quoting, then %-escaping)."""
    quoted = arg if _SAFE.match(arg) else '"' + re.sub(r'(["`$\\])', r"\\\1", arg) + '"'
    return quoted.replace("%", "%%")


class SystemdUser:
    """``~/.config/systemd/user/switchman.service`` + ``systemctl --user``."""

    def __init__(self, env: ServiceEnv) -> None:
        self.env = env

    @property
    def unit_path(self) -> Path:
        return self.env.xdg_config() / "systemd" / "user" / SERVICE_NAME

    def unit_text(self) -> str:
        return templates.render(
            "systemd/switchman.service",
            exec_start=" ".join(systemd_quote(a) for a in self.env.daemon_argv()),
            log_file=str(self.env.log_file()))

    def files(self) -> list[Path]:
        return [self.unit_path]

    def _systemctl(self, out: Outcome, *args: str, quiet: bool = False) -> bool:
        r = self.env.run("systemctl", "--user", *args)
        if not r.ok and not quiet:
            out.fail(f"✗ systemctl --user {' '.join(args)} failed ({r.returncode}): "
                     f"{r.text() or 'no output'}")
        return r.ok

    def _no_systemd(self, out: Outcome, what: str) -> None:
        out.fail(f"✗ systemd is not running on this machine (it is not PID 1), so the unit "
                 f"cannot be {what} here. Start the daemon yourself with `switchman daemon`, "
                 "or run this again on a systemd desktop session.")

    def install(self, start: bool = True) -> Outcome:
        out = Outcome()
        self.unit_path.parent.mkdir(parents=True, exist_ok=True)
        self.env.log_dir().mkdir(parents=True, exist_ok=True)
        self.unit_path.write_text(self.unit_text(), "utf-8")
        out.say(f"✓ wrote {self.unit_path}")
        if not self.env.has_systemd():
            self._no_systemd(out, "enabled or started")
            return out
        if not self._systemctl(out, "daemon-reload"):
            out.say("  (is there a user session bus? `loginctl enable-linger $USER` or log in "
                    "graphically, then `systemctl --user enable --now switchman`)")
            return out
        if not start:
            if self._systemctl(out, "enable", SERVICE_NAME):
                out.say("✓ enabled: the daemon starts at your next login")
            return out
        # an upgrade re-runs install: restart so the new binary is the one running
        was_active = self._systemctl(out, "is-active", "--quiet", SERVICE_NAME, quiet=True)
        if self._systemctl(out, "enable", "--now", SERVICE_NAME):
            if was_active:
                self._systemctl(out, "restart", SERVICE_NAME)
            out.say("✓ enabled and started: the daemon now starts at every login")
        return out

    def uninstall(self) -> Outcome:
        out = Outcome()
        if self.env.has_systemd():
            # ignore "not loaded": uninstall must work on a half-installed unit
            self._systemctl(out, "disable", "--now", SERVICE_NAME, quiet=True)
        if self.unit_path.exists():
            self.unit_path.unlink()
            out.say(f"✓ removed {self.unit_path}")
        else:
            out.say(f"· {self.unit_path} was not installed")
        if self.env.has_systemd():
            self._systemctl(out, "daemon-reload", quiet=True)
            out.say("✓ the service is stopped and disabled")
        return out

    def status(self) -> Outcome:
        out = Outcome()
        if not self.unit_path.exists():
            out.fail(f"✗ not installed ({self.unit_path} missing): `switchman service install`")
            return out
        out.say(f"✓ installed: {self.unit_path}")
        if not self.env.has_systemd():
            self._no_systemd(out, "running")
            return out
        enabled = self.env.run("systemctl", "--user", "is-enabled", SERVICE_NAME)
        active = self.env.run("systemctl", "--user", "is-active", SERVICE_NAME)
        state = active.stdout.strip() or active.text() or "unknown"
        (out.say if enabled.ok else out.fail)(
            f"{'✓' if enabled.ok else '✗'} autostart: {enabled.stdout.strip() or 'disabled'}")
        (out.say if active.ok else out.fail)(f"{'✓' if active.ok else '✗'} service: {state}")
        return out


class DesktopEntry:
    """``~/.local/share/applications/switchman.desktop`` and hicolor icons."""

    def __init__(self, env: ServiceEnv) -> None:
        self.env = env

    @property
    def path(self) -> Path:
        return self.env.xdg_data() / "applications" / "switchman.desktop"

    def icon_path(self, size: int) -> Path:
        return (self.env.xdg_data() / "icons" / "hicolor" / f"{size}x{size}" / "apps"
                / "switchman.png")

    def text(self) -> str:
        return templates.render("linux/switchman.desktop",
                                exec=" ".join(desktop_quote(a) for a in
                                              self.env.console_command),
                                icon="switchman")

    def files(self) -> list[Path]:
        return [self.path, *(self.icon_path(s) for s in templates.icon_files())]

    def install(self) -> Outcome:
        out = Outcome()
        icons = templates.icon_files()
        for size, src in icons.items():
            dst = self.icon_path(size)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        if icons:
            out.say(f"✓ icons ({', '.join(map(str, icons))} px) in "
                    f"{self.env.xdg_data() / 'icons' / 'hicolor'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.text(), "utf-8")
        out.say(f"✓ wrote {self.path} (Switchman in the application menu)")
        return out

    def uninstall(self) -> Outcome:
        out = Outcome()
        for p in (self.path, *(self.icon_path(s) for s in templates.ICON_SIZES)):
            if p.exists():
                p.unlink()
                out.say(f"✓ removed {p}")
        return out
