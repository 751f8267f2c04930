"""What every platform's service installer needs: the command runner, the
environment (platform, home, paths, the command that starts the daemon) and the
result of an action.

Everything that touches the machine goes through ``ServiceEnv``: tests build
one with a fake runner, a temporary home and any ``platform`` ("linux",
"darwin", "win32"), so the exact files and commands per platform are checked
without running them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

APP = "switchman"
SERVICE_NAME = "switchman.service"  # systemd
LAUNCHD_LABEL = "dev.switchman.daemon"
TASK_NAME = "SwitchmanDaemon"  # Windows Task Scheduler
LOG_NAME = "daemon.log"


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self) -> str:
        return (self.stdout + self.stderr).strip()


Runner = Callable[[Sequence[str]], Result]


def run_command(cmd: Sequence[str]) -> Result:
    """The real runner: run ``cmd`` (no shell), capture its output."""
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Result(127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(124, "", f"{cmd[0]}: timed out after 60 s")
    return Result(p.returncode, p.stdout or "", p.stderr or "")


@dataclass
class Outcome:
    """What an action did, line by line, and whether it fully worked."""

    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.ok = False
        self.lines.append(line)


def platform_key(platform: str) -> str:
    if platform.startswith("linux") or "bsd" in platform:
        return "linux"
    if platform == "darwin":
        return "darwin"
    if platform in ("win32", "cygwin"):
        return "win32"
    raise ValueError(f"no service support for platform {platform!r}")


def _frozen_dir() -> Path | None:
    return Path(sys.executable).resolve().parent if getattr(sys, "frozen", False) else None


def default_command(platform: str) -> list[str]:
    """argv that runs the ``switchman`` CLI from this installation.

    Frozen bundle: the ``switchman`` executable next to us. On Windows the
    console-less ``switchman-console.exe`` runs it instead (it dispatches
    ``-m switchman_daemon.cli``), so no console window opens at logon. Source
    install: this interpreter with ``-m switchman_daemon.cli`` (``pythonw`` on
    Windows for the same reason)."""
    frozen = _frozen_dir()
    if frozen is not None:
        if platform == "win32":
            gui = frozen / "switchman-console.exe"
            if gui.exists():
                return [str(gui), "-m", "switchman_daemon.cli"]
        return [str(Path(sys.executable).resolve())]
    exe = Path(sys.executable)
    if platform == "win32" and (exe.parent / "pythonw.exe").exists():
        exe = exe.parent / "pythonw.exe"
    return [str(exe), "-m", "switchman_daemon.cli"]


def default_console_command() -> list[str]:
    frozen = _frozen_dir()
    if frozen is not None:
        return [str(frozen / "switchman-console")]
    return [sys.executable, "-m", "switchman_daemon.cli", "up"]


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 (containers and WSL1 often lack it)."""
    return Path("/run/systemd/system").is_dir()


@dataclass
class ServiceEnv:
    platform: str  # "linux" | "darwin" | "win32"
    home: Path
    environ: Mapping[str, str]
    runner: Runner
    command: list[str]  # argv prefix that runs the switchman CLI
    console_command: list[str]  # argv that opens the console
    data_dir: str | None = None  # passed to the daemon as --data-dir
    config: str | None = None  # passed as --config
    uid: int = 0
    systemd: bool | None = None  # None: detect

    @classmethod
    def detect(cls, data_dir: str | None = None, runner: Runner | None = None) -> ServiceEnv:
        """The environment of this process (sys.platform, $HOME, this install)."""
        platform = platform_key(sys.platform)
        environ = dict(os.environ)
        return cls(platform=platform, home=Path.home(), environ=environ,
                   runner=runner or run_command, command=default_command(platform),
                   console_command=default_console_command(),
                   data_dir=data_dir or environ.get("SWITCHMAN_DATA_DIR") or None,
                   config=environ.get("SWITCHMAN_CONFIG") or None,
                   uid=getattr(os, "getuid", lambda: 0)())

    def has_systemd(self) -> bool:
        return systemd_running() if self.systemd is None else self.systemd

    # -- per-platform user directories (what platformdirs answers on that OS) ---------

    def _xdg(self, var: str, default: str) -> Path:
        raw = self.environ.get(var)
        return Path(raw) if raw else self.home / default

    def local_appdata(self) -> Path:
        raw = self.environ.get("LOCALAPPDATA")
        return Path(raw) if raw else self.home / "AppData" / "Local"

    def log_dir(self) -> Path:
        if self.platform == "darwin":
            return self.home / "Library" / "Logs" / APP
        if self.platform == "win32":
            return self.local_appdata() / APP / "Logs"
        return self._xdg("XDG_STATE_HOME", ".local/state") / APP / "log"

    def log_file(self) -> Path:
        return self.log_dir() / LOG_NAME

    def xdg_config(self) -> Path:
        return self._xdg("XDG_CONFIG_HOME", ".config")

    def xdg_data(self) -> Path:
        return self._xdg("XDG_DATA_HOME", ".local/share")

    def daemon_argv(self) -> list[str]:
        """The full command the service runs."""
        argv = [*self.command, "daemon", "--log-file", str(self.log_file())]
        if self.data_dir:
            argv += ["--data-dir", str(self.data_dir)]
        if self.config:
            argv += ["--config", str(self.config)]
        return argv

    def run(self, *cmd: str) -> Result:
        return self.runner(list(cmd))
