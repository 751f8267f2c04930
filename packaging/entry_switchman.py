"""Frozen entry point for the `switchman` executable (daemon and CLI).

This executable carries no Qt (see pyinstaller.spec): `switchman up` and
`switchman console` hand over to the `switchman-console` executable next to it.
"""

import os
import subprocess
import sys
from pathlib import Path

from switchman_daemon.cli import main

args = sys.argv[1:]
if getattr(sys, "frozen", False) and args[:1] in (["up"], ["console"]):
    name = "switchman-console.exe" if os.name == "nt" else "switchman-console"
    console = Path(sys.executable).resolve().parent / name
    if console.exists():
        if os.name == "nt":
            raise SystemExit(subprocess.call([str(console), *args]))
        os.execv(str(console), [str(console), *args])
raise SystemExit(main(args))
