"""Frozen entry point for the `switchman` executable (daemon and CLI)."""

from switchman_daemon.cli import main

raise SystemExit(main())
