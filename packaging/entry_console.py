"""Frozen entry point for the `switchman-console` executable.

- no arguments, or console options: open the console (`switchman console`);
- `up ...` / `console ...`: those verbs;
- `-m switchman_daemon.cli ARGS`: the CLI itself. The console starts a daemon
  as `sys.executable -m switchman_daemon.cli daemon` (gui/connection.py), and
  the Windows logon task runs the daemon through this windowless executable.
"""

import sys

from switchman_daemon.cli import main

args = sys.argv[1:]
if args[:2] == ["-m", "switchman_daemon.cli"]:
    args = args[2:]
elif args[:1] not in (["up"], ["console"]):
    args = ["console", *args]
raise SystemExit(main(args))
