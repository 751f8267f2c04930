"""The ``switchman`` command.

``switchman daemon`` runs the router in the foreground. ``switchman ledger export``
writes the request ledger as CSV or JSONL. The admin verbs (status, keys, policy,
models, config, stats, budget, teamkeys; see ``admin_cli``) talk to a running daemon only through
the gRPC admin plane.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from switchman_daemon import __version__


def _setup_logging(level: str, fmt: str = "text") -> None:
    from switchman_daemon import logs

    logs.setup(level, "json" if fmt == "json" else "text")


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    from switchman_daemon.paths import config_file

    p = config_file()
    return p if p.exists() else None


def cmd_daemon(args: argparse.Namespace) -> int:
    from switchman_daemon.app import Daemon, run_loop, serve_forever
    from switchman_daemon.config import ConfigError, load_config

    log_format = getattr(args, "log_format", None)
    _setup_logging(args.log_level, log_format or "text")
    overrides: dict = {}
    if args.sim_time_scale is not None:
        overrides["sim"] = {"time_scale": args.sim_time_scale}
    from switchman_daemon import managed_config, paths

    data_dir = paths.data_dir(Path(args.data_dir) if args.data_dir else None)
    try:
        # admin changes (managed.toml) are merged last, over file and flags
        overrides = managed_config.with_managed(data_dir, overrides)
        config = load_config(_config_path(args.config), overrides=overrides)
    except ConfigError as e:
        print(f"switchman: {e}", file=sys.stderr)
        return 2
    if log_format is None and config.daemon.log_format != "text":
        _setup_logging(args.log_level, config.daemon.log_format)  # the flag wins over config
    log_file = getattr(args, "log_file", None) or os.environ.get("SWITCHMAN_LOG_FILE")
    if log_file:  # as a service: a rotating file under the user log dir (issue #6)
        from switchman_daemon.service.logfile import log_to_file

        log_to_file(Path(log_file))
    daemon = Daemon(config, data_dir)
    try:
        run_loop(serve_forever(daemon, args.host, args.port))
    except OSError as e:
        print(f"switchman: cannot listen on {args.host}:{args.port}: {e.strerror}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_ledger_export(args: argparse.Namespace) -> int:
    from switchman_daemon import paths
    from switchman_daemon.config import ConfigError, load_config
    from switchman_daemon.ledger.export import export, parse_since

    try:
        config = load_config(_config_path(args.config))
    except ConfigError as e:
        print(f"switchman: {e}", file=sys.stderr)
        return 2
    url = config.ledger.url or paths.ledger_url(
        paths.data_dir(Path(args.data_dir) if args.data_dir else None))
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as e:
        print(f"switchman: --since: {e}", file=sys.stderr)
        return 2
    if args.output and args.output != "-":
        with open(args.output, "w", newline="", encoding="utf-8") as out:
            n = export(url, args.format, out, since=since)
    else:
        n = export(url, args.format, sys.stdout, since=since)
    print(f"exported {n} rows", file=sys.stderr)
    return 0


def _console(args: argparse.Namespace, auto_start: bool) -> int:
    # lazy: the daemon never needs Qt, and a headless install may lack it
    try:
        from switchman_gui.app import run
    except ImportError as e:
        print(f"switchman: the console needs PySide6 (pip install 'switchman[gui]'): {e}",
              file=sys.stderr)
        return 2
    return run(args.data_dir, auto_start=auto_start or args.start, theme_name=args.theme)


def cmd_console(args: argparse.Namespace) -> int:
    return _console(args, auto_start=False)


def _has_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # macOS and Windows always have a desktop session


def cmd_up(args: argparse.Namespace) -> int:
    if not _has_display():
        # a headless machine (server, container, SSH): the daemon alone, in the
        # foreground; the console can connect from a desktop later
        print("switchman: no display found; running the daemon in the foreground "
              "(the console needs a desktop session)", file=sys.stderr)
        return cmd_daemon(argparse.Namespace(
            host=None, port=None, data_dir=args.data_dir, config=None, log_level="info",
            log_format=None, sim_time_scale=None))
    return _console(args, auto_start=True)


def build_parser() -> argparse.ArgumentParser:
    from switchman_daemon.admin_cli import add_admin_commands

    p = argparse.ArgumentParser(prog="switchman", description="Cache-aware model router "
                                "for coding agents.")
    p.add_argument("--version", action="version", version=f"switchman {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("daemon", help="run the router daemon in the foreground")
    d.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    d.add_argument("--port", type=int, default=None, help="listen port (default 8787)")
    d.add_argument("--data-dir", default=None, help="ledger and state directory")
    d.add_argument("--config", default=None, help="TOML config merged over the defaults")
    d.add_argument("--log-level", default="info")
    d.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="log lines as text or as JSON objects (default: [daemon] log_format)")
    d.add_argument("--log-file", default=None,
                   help="log to this rotating file instead of stderr (env SWITCHMAN_LOG_FILE; "
                        "set by `switchman service install`)")
    d.add_argument("--sim-time-scale", type=float, default=None,
                   help="scale the simulated providers' delays (0 = instant)")
    d.set_defaults(func=cmd_daemon)

    lg = sub.add_parser("ledger", help="the request ledger")
    lsub = lg.add_subparsers(dest="ledger_command", required=True)
    ex = lsub.add_parser("export", help="export ledger rows")
    ex.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    ex.add_argument("--since", default=None, help="e.g. 2026-11-01, 24h, 7d")
    ex.add_argument("--output", "-o", default=None, help="file (default stdout)")
    ex.add_argument("--data-dir", default=None)
    ex.add_argument("--config", default=None)
    ex.set_defaults(func=cmd_ledger_export)
    sub.add_parser("train", help="train the routing quality predictor on outcome data "
                   "(switchman train --help)", add_help=False)
    add_admin_commands(sub)
    from switchman_daemon.evaluation.cli import add_eval_parser

    add_eval_parser(sub)  # switchman eval (replay harness, issue #3)
    from switchman_daemon.setup_cli import add_setup_commands

    add_setup_commands(sub)  # switchman setup / service / doctor (issue #6)

    for name, func, text in (
            ("up", cmd_up, "start the daemon if it is not running and open the console"),
            ("console", cmd_console, "open the desktop console (asks before starting the "
                                     "daemon)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--data-dir", default=None, help="the daemon's data directory")
        c.add_argument("--start", action="store_true", help=argparse.SUPPRESS)
        c.add_argument("--theme", choices=["light", "dark"], default=None,
                       help="override the OS colour scheme")
        c.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        # the trainer owns its options (numpy is needed only here)
        from switchman_daemon.training.quality_train import train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
