"""``switchman doctor``: is this install healthy, and how to fix what is not.

Checks: config loads, daemon reachable (admin Status), keyring usable (a
set/get/delete round trip under a throwaway name), proxy port free or served
by the daemon, agents pointed at the daemon, disk space in the data dir,
ledger integrity (``PRAGMA quick_check``). Each prints a ✓/✗ line; a ✗ comes
with the fix. Exit code 0 only when every check passes.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import shutil
import socket
import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from switchman_shared import agent_setup
from switchman_shared.admin_discovery import default_data_dir

MIN_FREE_BYTES = 500 * 1024 * 1024
_PROBE_SERVICE = "switchman-doctor"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class DaemonProbe:
    status: Any | None  # daemon_pb2.StatusReply when reachable
    error: str = ""

    @property
    def up(self) -> bool:
        return self.status is not None


def probe_daemon(data_dir: str | Path | None, timeout: float = 3.0) -> DaemonProbe:
    """The running daemon's Status over the admin plane, or why there is none."""
    from switchman_shared.admin_client import AdminClient
    from switchman_shared.admin_errors import AdminError

    try:
        with AdminClient.connect(data_dir, timeout=timeout) as c:
            return DaemonProbe(c.status())
    except AdminError as e:
        return DaemonProbe(None, e.message)


def client_url(url: str) -> str:
    """A URL clients can use: a wildcard listen address becomes loopback."""
    for wild in ("0.0.0.0", "[::]", "::"):
        url = url.replace(f"//{wild}:", "//127.0.0.1:")
    return url.rstrip("/")


def load_config(data_dir: Path, config_path: str | None) -> tuple[Any, str]:
    """The daemon's effective config as it would start here (file + managed
    overlay), and where it came from. Raises ConfigError."""
    from switchman_daemon import managed_config, paths
    from switchman_daemon.config import load_config as _load

    path = Path(config_path) if config_path else paths.config_file()
    use = path if config_path or path.exists() else None
    overrides = managed_config.with_managed(data_dir, {})
    return _load(use, overrides=overrides), str(use) if use else "built-in defaults"


def _same(a: str, b: str) -> bool:
    def norm(u: str) -> str:
        return client_url(u).replace("//localhost:", "//127.0.0.1:")
    return norm(a) == norm(b)


# -- the checks ---------------------------------------------------------------------------

def check_daemon(probe: DaemonProbe) -> Check:
    if probe.up:
        s = probe.status
        return Check("daemon reachable", True,
                     f"switchman {s.version}, pid {s.pid}, proxy {client_url(s.proxy_url)}")
    return Check("daemon reachable", False, probe.error or "not running",
                 "start it at login with `switchman service install` (or run "
                 "`switchman daemon` in a terminal); `switchman service logs` shows why a "
                 "service did not start")


def check_keyring(platform: str | None = None) -> Check:
    import keyring
    from keyring.backends import fail

    kr = keyring.get_keyring()
    name = f"{type(kr).__module__.removeprefix('keyring.backends.')}.{type(kr).__name__}"
    fix = {"darwin": "the login Keychain should work; check that it is unlocked",
           "win32": "Windows Credential Manager should work; check `keyring --list-backends`",
           }.get(platform or sys.platform,
                 "install and unlock a Secret Service (gnome-keyring, KWallet or KeePassXC) in "
                 "your desktop session; on a headless machine put provider keys in "
                 "SWITCHMAN_KEY_<NAME> environment variables of the daemon instead")
    null = getattr(getattr(keyring.backends, "null", None), "Keyring", None)
    if isinstance(kr, fail.Keyring) or (null is not None and isinstance(kr, null)):
        return Check("keyring", False, f"no usable OS keyring (backend {name})", fix)
    user, value = f"probe-{secrets.token_hex(4)}", secrets.token_hex(16)
    try:
        kr.set_password(_PROBE_SERVICE, user, value)
        got = kr.get_password(_PROBE_SERVICE, user)
        kr.delete_password(_PROBE_SERVICE, user)
    except Exception as e:  # any backend failure means keys cannot be stored
        return Check("keyring", False, f"{name}: {type(e).__name__}: {e}", fix)
    if got != value:
        return Check("keyring", False, f"{name} did not return what was stored", fix)
    return Check("keyring", True, f"{name} (set/get/delete round trip ok)")


def check_port(probe: DaemonProbe, host: str, port: int) -> Check:
    if probe.up:
        return Check("proxy port", True, f"{client_url(probe.status.proxy_url)} is the daemon")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # the daemon (aiohttp) binds with SO_REUSEADDR too; TIME_WAIT is not "taken"
        if sys.platform != "win32":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            taken = e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1))
            return Check("proxy port", False,
                         f"{host}:{port} is {'taken by another program' if taken else e}",
                         f"find it with `lsof -i :{port}` (Windows: `netstat -ano | findstr "
                         f":{port}`) and stop it, or set [daemon] port in your config")
    return Check("proxy port", True, f"{host}:{port} is free for the daemon")


def check_agents(home: Path, expected_url: str,
                 environ: Mapping[str, str] | None = None) -> Check:
    env = dict(environ) if environ is not None else None
    ours, other, none = [], [], []
    for agent in agent_setup.AGENTS:
        url = agent_setup.target_url(agent, home=home, environ=env)
        if url is None:
            none.append(agent)
        elif _same(url, expected_url):
            ours.append(agent)
        else:
            other.append(f"{agent} → {url}")
    parts = []
    if ours:
        parts.append(f"{', '.join(ours)} → {expected_url}")
    if other:
        parts.append(f"elsewhere: {'; '.join(other)}")
    if none:
        parts.append(f"not set up: {', '.join(none)}")
    redo = [a.split(" ")[0] for a in other] or none[:1] or ["claude-code"]
    return Check("agents configured", bool(ours), "; ".join(parts),
                 "" if ours else " / ".join(f"`switchman setup {a}`" for a in redo))


def check_disk(data_dir: Path, min_free: int = MIN_FREE_BYTES) -> Check:
    p = data_dir
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    detail = f"{free / 1e9:.1f} GB free for {data_dir}"
    if free < min_free:
        return Check("disk space", False, detail,
                     f"free at least {min_free // 2**20} MB there, or move the data dir "
                     "(SWITCHMAN_DATA_DIR / --data-dir); `switchman ledger export` then "
                     "[ledger] retention can shrink the ledger")
    return Check("disk space", True, detail)


def check_ledger(url: str) -> Check:
    u = sa.make_url(url)
    if u.get_backend_name() != "sqlite":
        return Check("ledger integrity", True, f"{u.get_backend_name()} ledger: not checked here")
    db = Path(u.database or "")
    if not u.database or not db.exists():
        return Check("ledger integrity", True, "no ledger yet (created at the daemon's first "
                                               "start)")
    try:
        # read-only: never create or lock the daemon's database
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=5)) as conn:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.Error as e:
        rows = [str(e)]
    if rows == ["ok"]:
        return Check("ledger integrity", True, f"{db} (quick_check ok)")
    return Check("ledger integrity", False, f"{db}: {'; '.join(rows[:3])}",
                 "stop the daemon, keep a copy of the file, then "
                 f"`sqlite3 {db} .recover | sqlite3 recovered.db` and move recovered.db in "
                 "its place")


def run(data_dir: str | Path | None = None, config_path: str | None = None,
        home: Path | None = None, environ: Mapping[str, str] | None = None,
        admin_timeout: float = 3.0) -> list[Check]:
    """Every check, in order."""
    from switchman_daemon import paths
    from switchman_daemon.config import ConfigError

    ddir = default_data_dir(data_dir)
    checks: list[Check] = []
    config = None
    try:
        config, source = load_config(ddir, config_path)
        checks.append(Check("config", True, source))
    except ConfigError as e:
        checks.append(Check("config", False, str(e), "fix the file (or move it away to run "
                                                     "on the built-in defaults)"))
    probe = probe_daemon(ddir, admin_timeout)
    checks.append(check_daemon(probe))
    checks.append(check_keyring())
    host = config.daemon.host if config else "127.0.0.1"
    port = config.daemon.port if config else 8787
    checks.append(check_port(probe, host, port))
    expected = client_url(probe.status.proxy_url) if probe.up else client_url(
        f"http://{host}:{port}")
    checks.append(check_agents(home or Path.home(), expected, environ))
    checks.append(check_disk(ddir))
    ledger_url = (config.ledger.url if config else "") or paths.ledger_url(ddir)
    checks.append(check_ledger(ledger_url))
    return checks


def _marks(out: TextIO) -> tuple[str, str]:
    try:
        "✓✗".encode(out.encoding or "utf-8")
        return "✓", "✗"
    except (UnicodeEncodeError, LookupError):
        return "OK", "XX"


def render(checks: list[Check], out: TextIO) -> None:
    good, bad = _marks(out)
    width = max(len(c.name) for c in checks)
    for c in checks:
        out.write(f"{good if c.ok else bad} {c.name.ljust(width)}  {c.detail}\n")
        if not c.ok and c.fix:
            out.write(f"  {' ' * width}  fix: {c.fix}\n")
    failed = sum(not c.ok for c in checks)
    out.write("all good\n" if not failed else f"{failed} problem(s)\n")
