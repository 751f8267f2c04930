"""Frozen entry point for the `switchman-console` executable."""

from switchman_daemon.cli import main

raise SystemExit(main(["console"]))
