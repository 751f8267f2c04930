"""Autostart: run the daemon in the background from login on, per platform.

- Linux: a systemd user unit (``systemctl --user enable --now``), plus a
  ``.desktop`` entry and icons for the console.
- macOS: a launchd agent plist (``launchctl bootstrap gui/<uid>``).
- Windows: a per-user logon task (``schtasks /Create /XML``).

The daemon then logs to a rotating file under the platform's user log dir
(``--log-file``). Uninstalling removes only what install wrote: the data dir
(ledger, admin token, managed config), the user config file and the keyring
entries stay, so a reinstall or upgrade picks them up again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .base import Outcome, Result, Runner, ServiceEnv, run_command
from .linux import DesktopEntry, SystemdUser
from .macos import Launchd
from .windows import WindowsTask

__all__ = ["DesktopEntry", "Launchd", "Manager", "Outcome", "Result", "Runner", "ServiceEnv",
           "SystemdUser", "WindowsTask", "install", "manager", "run_command", "status",
           "uninstall"]


class Manager(Protocol):
    def files(self) -> list[Path]: ...
    def install(self, start: bool = True) -> Outcome: ...
    def uninstall(self) -> Outcome: ...
    def status(self) -> Outcome: ...


def manager(env: ServiceEnv) -> Manager:
    """The service manager for ``env.platform``."""
    if env.platform == "darwin":
        return Launchd(env)
    if env.platform == "win32":
        return WindowsTask(env)
    return SystemdUser(env)


def install(env: ServiceEnv, start: bool = True, desktop: bool = True) -> Outcome:
    out = manager(env).install(start=start)
    if desktop and env.platform == "linux":
        d = DesktopEntry(env).install()
        out.lines += d.lines
        out.ok = out.ok and d.ok
    out.say(f"  daemon log: {env.log_file()}")
    return out


def uninstall(env: ServiceEnv) -> Outcome:
    out = manager(env).uninstall()
    if env.platform == "linux":
        out.lines += DesktopEntry(env).uninstall().lines
    out.say("  kept: the ledger and state (data dir), your config file and the keys in the "
            "OS keyring; delete them by hand for a clean slate")
    return out


def status(env: ServiceEnv) -> Outcome:
    return manager(env).status()
