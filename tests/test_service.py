"""`switchman service`: the exact files and commands per platform, with a fake
command runner (nothing is started), and the daemon's rotating log file."""

from __future__ import annotations

import logging
import plistlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

from switchman_daemon import service, setup_cli
from switchman_daemon.cli import main
from switchman_daemon.service import base, logfile, templates
from switchman_daemon.service.base import Result, ServiceEnv

CMD = ["/opt/Switch Man/switchman"]  # a space: quoting matters


class Recorder:
    """A runner that records commands and answers from a script (default: ok)."""

    def __init__(self, answers: dict[str, Result] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, cmd: Sequence[str]) -> Result:
        self.calls.append(list(cmd))
        return self.answers.get(" ".join(cmd), Result(0))


def make_env(tmp_path: Path, platform: str, runner: Recorder, **kw: object) -> ServiceEnv:
    environ = {"USERNAME": "ada", "USERDOMAIN": "LAB",
               "LOCALAPPDATA": str(tmp_path / "home" / "AppData" / "Local")}
    return ServiceEnv(platform=platform, home=tmp_path / "home", environ=environ, runner=runner,
                      command=list(CMD), console_command=["/opt/Switch Man/switchman-console"],
                      uid=501, **kw)  # type: ignore[arg-type]


def test_linux_systemd_user_unit(tmp_path: Path) -> None:
    r = Recorder()
    env = make_env(tmp_path, "linux", r, systemd=True, data_dir="/data dir")
    out = service.install(env)
    assert out.ok, out.lines
    unit = tmp_path / "home" / ".config" / "systemd" / "user" / "switchman.service"
    text = unit.read_text()
    log = tmp_path / "home" / ".local" / "state" / "switchman" / "log" / "daemon.log"
    assert (f'ExecStart="/opt/Switch Man/switchman" daemon --log-file {log} '
            '--data-dir "/data dir"\n') in text
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text
    assert r.calls == [["systemctl", "--user", "daemon-reload"],
                       ["systemctl", "--user", "is-active", "--quiet", "switchman.service"],
                       ["systemctl", "--user", "enable", "--now", "switchman.service"],
                       ["systemctl", "--user", "restart", "switchman.service"]]
    # the console's menu entry and its icons (hicolor theme)
    desktop = (tmp_path / "home" / ".local" / "share" / "applications" / "switchman.desktop")
    entry = desktop.read_text()
    assert 'Exec="/opt/Switch Man/switchman-console"\n' in entry and "Icon=switchman\n" in entry
    icons = tmp_path / "home" / ".local" / "share" / "icons" / "hicolor"
    assert sorted(p.parent.parent.name for p in icons.rglob("switchman.png")) == sorted(
        f"{s}x{s}" for s in templates.ICON_SIZES)

    r.calls.clear()
    r.answers["systemctl --user is-enabled switchman.service"] = Result(0, "enabled\n")
    r.answers["systemctl --user is-active switchman.service"] = Result(0, "active\n")
    st = service.status(env)
    assert st.ok and "✓ service: active" in st.lines

    r.calls.clear()
    assert service.uninstall(env).ok
    assert r.calls == [["systemctl", "--user", "disable", "--now", "switchman.service"],
                       ["systemctl", "--user", "daemon-reload"]]
    assert not unit.exists() and not desktop.exists() and not list(icons.rglob("*.png"))


def test_linux_without_systemd_writes_the_unit_and_explains(tmp_path: Path) -> None:
    r = Recorder()
    out = service.install(make_env(tmp_path, "linux", r, systemd=False), desktop=False)
    assert not out.ok and r.calls == []
    assert any("systemd is not running" in ln for ln in out.lines)
    assert (tmp_path / "home/.config/systemd/user/switchman.service").exists()


def test_macos_launchd_agent(tmp_path: Path) -> None:
    r = Recorder()
    env = make_env(tmp_path, "darwin", r)
    assert service.install(env).ok
    plist = tmp_path / "home" / "Library" / "LaunchAgents" / "dev.switchman.daemon.plist"
    data = plistlib.loads(plist.read_bytes())
    logs = tmp_path / "home" / "Library" / "Logs" / "switchman"
    assert data["Label"] == "dev.switchman.daemon" and data["RunAtLoad"] is True
    assert data["ProgramArguments"] == [*CMD, "daemon", "--log-file", str(logs / "daemon.log")]
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert data["StandardErrorPath"] == str(logs / "launchd.log")
    assert r.calls == [["launchctl", "bootout", "gui/501/dev.switchman.daemon"],
                       ["launchctl", "bootstrap", "gui/501", str(plist)]]
    assert not (tmp_path / "home/.local/share/applications").exists()  # Linux only

    r.answers["launchctl print gui/501/dev.switchman.daemon"] = Result(0, "\tstate = running\n")
    assert service.status(env).ok
    r.calls.clear()
    assert service.uninstall(env).ok and not plist.exists()
    assert r.calls == [["launchctl", "bootout", "gui/501/dev.switchman.daemon"]]


def test_windows_logon_task(tmp_path: Path) -> None:
    r = Recorder()
    env = make_env(tmp_path, "win32", r)
    assert service.install(env).ok
    xml = tmp_path / "home" / "AppData" / "Local" / "switchman" / "switchman-task.xml"
    raw = xml.read_bytes()
    assert raw[:2] in (b"\xff\xfe", b"\xfe\xff")  # UTF-16 with a BOM, as declared
    ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
    root = ET.fromstring(raw.decode("utf-16"))
    log = tmp_path / "home" / "AppData" / "Local" / "switchman" / "Logs" / "daemon.log"
    assert root.findtext("t:Actions/t:Exec/t:Command", namespaces=ns) == CMD[0]
    assert root.findtext("t:Actions/t:Exec/t:Arguments", namespaces=ns) == \
        subprocess.list2cmdline(["daemon", "--log-file", str(log)])
    assert root.findtext("t:Triggers/t:LogonTrigger/t:UserId", namespaces=ns) == "LAB\\ada"
    assert root.findtext("t:Principals/t:Principal/t:RunLevel", namespaces=ns) == \
        "LeastPrivilege"
    assert r.calls == [["schtasks", "/Create", "/TN", "SwitchmanDaemon", "/XML", str(xml), "/F"],
                       ["schtasks", "/End", "/TN", "SwitchmanDaemon"],
                       ["schtasks", "/Run", "/TN", "SwitchmanDaemon"]]
    r.calls.clear()
    assert service.uninstall(env).ok and not xml.exists()
    assert r.calls == [["schtasks", "/End", "/TN", "SwitchmanDaemon"],
                       ["schtasks", "/Delete", "/TN", "SwitchmanDaemon", "/F"]]


def test_cli_service_on_a_patched_platform_keeps_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    r = Recorder()
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir()
    (data / "ledger.db").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(base, "run_command", r)
    monkeypatch.setattr(setup_cli, "INSTALL_WAIT_S", 0.0)
    assert main(["service", "install", "--data-dir", str(data)]) == 1  # no daemon answers
    assert "not answering yet" in capsys.readouterr().out
    plist = home / "Library" / "LaunchAgents" / "dev.switchman.daemon.plist"
    args = plistlib.loads(plist.read_bytes())["ProgramArguments"]
    assert args[-2:] == ["--data-dir", str(data)] and "daemon" in args
    assert ["launchctl", "bootstrap", "gui/" + str(base.ServiceEnv.detect().uid),
            str(plist)] in r.calls
    assert main(["service", "uninstall"]) == 0
    assert not plist.exists() and (data / "ledger.db").read_text() == "keep me"


def test_daemon_log_file_rotates(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("X %(message)s"))
    root.handlers[:] = [stderr]
    root.setLevel(logging.INFO)
    path = tmp_path / "log" / "daemon.log"
    try:
        h = logfile.log_to_file(path, max_bytes=2000, backups=2)
        assert root.handlers == [h]  # stderr replaced, formatter kept
        for i in range(200):
            logging.getLogger("switchman.test").info("line %d %s", i, "x" * 40)
        h.flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        h.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "daemon.log", "daemon.log.1", "daemon.log.2"]
    assert logfile.tail(path, 1) == [f"X line 199 {'x' * 40}"]
    assert logfile.tail(tmp_path / "missing.log") == []
