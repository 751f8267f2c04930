"""Workstation verbs: ``switchman setup <agent>``, ``switchman service
install|uninstall|status|logs`` and ``switchman doctor``.

``setup`` writes the settings file each agent reads (``switchman_shared.
agent_setup``, the same code as the console's Agents page) with the daemon's
URL, asked from the running daemon, else taken from the config.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from switchman_shared import agent_setup

INSTALL_WAIT_S = 15.0  # how long `service install` waits for the new daemon to answer


def _out(line: str = "") -> None:
    print(line, file=sys.stdout)


def _err(line: str) -> None:
    print(line, file=sys.stderr)


# -- setup ----------------------------------------------------------------------------------

def daemon_url(data_dir: str | None, config: str | None) -> tuple[str, str, Any]:
    """(proxy URL, where it came from, Status or None): the running daemon's
    own answer first, else the config the daemon would start with."""
    from switchman_daemon import doctor
    from switchman_daemon.config import ConfigError

    probe = doctor.probe_daemon(data_dir, timeout=3.0)
    if probe.up:
        return doctor.client_url(probe.status.proxy_url), "the running daemon", probe.status
    try:
        cfg, source = doctor.load_config(doctor.default_data_dir(data_dir), config)
        d = cfg.daemon
        return doctor.client_url(f"http://{d.host}:{d.port}"), f"{source}; daemon not running", \
            None
    except ConfigError:
        return "http://127.0.0.1:8787", "default; daemon not running", None


def _team_key(args: argparse.Namespace) -> str:
    key = args.team_key or os.environ.get("SWITCHMAN_TEAM_KEY", "")
    if key == "-":  # keeps the key out of shell history and the process list
        key = sys.stdin.readline().strip()
    return key or agent_setup.LOCAL_KEY


def cmd_setup(args: argparse.Namespace) -> int:
    home = Path.home()  # honours $HOME (tests, sandboxes)
    sdk_dir = Path(args.dir) if args.dir else None
    try:
        if args.undo:
            u = agent_setup.undo(args.agent, home=home, sdk_dir=sdk_dir)
            _out(f"removed {u.path} (it did not exist before setup)" if u.removed
                 else f"restored {u.path} from {u.backup.name}")
            return 0
        if args.url:
            url, source, status = args.url.rstrip("/"), "--url", None
        else:
            url, source, status = daemon_url(args.data_dir, args.config)
        key = _team_key(args)
        if status is not None and not status.local_open and key == agent_setup.LOCAL_KEY:
            _err("switchman: this daemon requires team keys (local_open = false): pass "
                 "--team-key (issue one with `switchman teamkeys issue`)")
            return 2
        p = agent_setup.plan(args.agent, home=home, proxy_url=url, api_key=key,
                             sdk_dir=sdk_dir, no_telemetry=args.no_telemetry)
        snippet = agent_setup.env_snippet(args.agent, url, key, no_telemetry=args.no_telemetry)
        if args.print:
            state = ("already up to date" if p.up_to_date else
                     "would be created" if p.old is None else "would change")
            _out(f"# {p.path} ({state}); router {url} ({source})")
            sys.stdout.write(p.new)
            _out(f"# {p.notes}")
            _out("# or, by hand in a shell:")
            _out(snippet)
            return 0
        if p.up_to_date:
            _out(f"{p.path} already points at {url}; nothing changed")
            return 0
        backup = agent_setup.apply(p)
        _out(f"wrote {p.path} (router {url}, from {source})")
        _out(f"backup: {backup}" if backup else "there was no file before; `--undo` removes it")
        _out(p.notes)
        if args.agent == "sdk":
            _out("shell lines for the same settings:\n" + snippet)
        elif args.agent == "codex" and key != agent_setup.LOCAL_KEY:
            _out(f"export SWITCHMAN_API_KEY={key}   # in the shell that runs codex")
        return 0
    except (agent_setup.SetupError, OSError) as e:
        _err(f"switchman: {e}")
        return 1


# -- service -------------------------------------------------------------------------------

def _env(args: argparse.Namespace) -> Any:
    from switchman_daemon.service import ServiceEnv

    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    return ServiceEnv.detect(data_dir=data_dir)


def _wait_for_daemon(data_dir: str | None, seconds: float) -> Any:
    from switchman_daemon import doctor

    deadline = time.monotonic() + seconds
    while True:
        probe = doctor.probe_daemon(data_dir, timeout=1.0)
        if probe.up or time.monotonic() > deadline:
            return probe
        time.sleep(0.5)


def cmd_service(args: argparse.Namespace) -> int:
    from switchman_daemon import doctor, service
    from switchman_daemon.service import logfile

    try:
        env = _env(args)
    except ValueError as e:
        _err(f"switchman: {e}")
        return 2
    action = args.service_command
    if action == "logs":
        path = env.log_file()
        lines = logfile.tail(path, args.lines)
        if not lines and not path.exists():
            _err(f"no log at {path} yet (the service writes it once it has started)")
            if env.platform == "linux":
                _err("startup errors are in the journal: journalctl --user -u switchman")
            if not args.follow:
                return 1
        for line in lines:
            _out(line)
        if args.follow:
            with contextlib.suppress(KeyboardInterrupt):
                logfile.follow(path, sys.stdout)
        return 0
    try:
        if action == "install":
            out = service.install(env, start=not args.no_start, desktop=not args.no_desktop)
        elif action == "uninstall":
            out = service.uninstall(env)
        else:
            out = service.status(env)
    except OSError as e:
        _err(f"switchman: {e}")
        return 1
    for line in out.lines:
        _out(line)
    if action == "install" and out.ok and not args.no_start:
        probe = _wait_for_daemon(env.data_dir, INSTALL_WAIT_S)
        _out(f"✓ daemon answering: {doctor.client_url(probe.status.proxy_url)}" if probe.up
             else "✗ the daemon is not answering yet: `switchman service logs`")
        return 0 if probe.up else 1
    if action == "status":
        probe = doctor.probe_daemon(env.data_dir, timeout=3.0)
        _out(f"✓ daemon answering: {doctor.client_url(probe.status.proxy_url)}" if probe.up
             else f"✗ daemon not answering: {probe.error}")
        return 0 if out.ok and probe.up else 1
    return 0 if out.ok else 1


# -- doctor --------------------------------------------------------------------------------

def cmd_doctor(args: argparse.Namespace) -> int:
    from switchman_daemon import doctor

    checks = doctor.run(args.data_dir, args.config)
    doctor.render(checks, sys.stdout)
    return 0 if all(c.ok for c in checks) else 1


def add_setup_commands(sub: Any) -> None:
    """Add setup, service and doctor to the ``switchman`` subparsers."""
    s = sub.add_parser("setup", help="point a coding agent at the daemon (writes its settings, "
                                     "with a backup)")
    s.add_argument("agent", choices=list(agent_setup.AGENTS))
    s.add_argument("--team-key", default=None,
                   help="the key the agent presents ('-' reads it from stdin; default "
                        "$SWITCHMAN_TEAM_KEY, else a placeholder for local-open mode)")
    s.add_argument("--print", action="store_true", help="show the settings, write nothing")
    s.add_argument("--undo", action="store_true", help="restore the newest backup")
    s.add_argument("--no-telemetry", action="store_true",
                   help="also turn off the agent's update checks, analytics and error reports")
    s.add_argument("--url", default=None, help="router URL (default: ask the daemon)")
    s.add_argument("--dir", default=None, help="sdk: folder for the .env file (default $HOME)")
    s.add_argument("--data-dir", default=None, help="the daemon's data directory")
    s.add_argument("--config", default=None, help="config file (when the daemon is not running)")
    s.set_defaults(func=cmd_setup)

    svc = sub.add_parser("service", help="start the daemon at login (systemd / launchd / "
                                         "Windows logon task)")
    ss = svc.add_subparsers(dest="service_command", required=True)
    p = ss.add_parser("install", help="install and start the autostart service")
    p.add_argument("--no-start", action="store_true", help="only start at the next login")
    p.add_argument("--no-desktop", action="store_true",
                   help="Linux: skip the console's application-menu entry")
    ss.add_parser("uninstall", help="stop and remove the service (data and keys stay)")
    ss.add_parser("status", help="is the service installed and running")
    p = ss.add_parser("logs", help="the daemon's log file")
    p.add_argument("-n", "--lines", type=int, default=50)
    p.add_argument("-f", "--follow", action="store_true")
    for p in ss.choices.values():
        p.add_argument("--data-dir", default=None, help="the daemon's data directory")
        p.set_defaults(func=cmd_service)

    d = sub.add_parser("doctor", help="check the install and say how to fix what is wrong")
    d.add_argument("--data-dir", default=None, help="the daemon's data directory")
    d.add_argument("--config", default=None)
    d.set_defaults(func=cmd_doctor)
