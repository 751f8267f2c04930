"""The CLI's admin verbs: each is one call through ``AdminClient`` (the same
client the console uses); none touches daemon internals or files directly."""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from switchman_shared.proto_gen.switchman.v1 import budgets_pb2, providers_pb2

_SOURCE = {providers_pb2.KEY_SOURCE_KEYRING: "keyring", providers_pb2.KEY_SOURCE_ENV: "env",
           providers_pb2.KEY_SOURCE_NONE: "none"}


def _out(line: str = "") -> None:
    print(line, file=sys.stdout)


def _admin(fn: Callable[[AdminClient, argparse.Namespace], int | None]
           ) -> Callable[[argparse.Namespace], int]:
    """Connect, run ``fn``, and turn AdminError into a message and exit code."""
    def run(args: argparse.Namespace) -> int:
        try:
            with AdminClient.connect(args.data_dir) as client:
                return int(fn(client, args) or 0)
        except AdminError as e:
            print(f"switchman: {e.message}", file=sys.stderr)
            return 3 if e.kind == "unavailable" else 1
    return run


def cmd_status(c: AdminClient, args: argparse.Namespace) -> None:
    s = c.status()
    _out(f"switchman {s.version}  pid {s.pid}  up {s.uptime_s:.0f}s")
    _out(f"proxy      {s.proxy_url}")
    _out(f"providers  {', '.join(s.providers) or '-'}")
    _out(f"models     {s.models}")
    _out(f"sessions   {s.sessions_active} active")
    _out(f"local_open {str(s.local_open).lower()}")


def _read_key(args: argparse.Namespace) -> str:
    # never from argv: it would land in shell history and the process list
    if args.stdin or not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    return getpass.getpass(f"API key for {args.provider}: ").strip()


def cmd_keys_set(c: AdminClient, args: argparse.Namespace) -> None:
    p = c.set_key(args.provider, _read_key(args))
    _out(f"{p.name}: key stored ({p.key.masked}, fingerprint {p.key.fingerprint})")


def cmd_keys_test(c: AdminClient, args: argparse.Namespace) -> int:
    r = c.test_key(args.provider)
    _out(("ok: " if r.ok else "failed: ") + r.message)
    return 0 if r.ok else 1


def cmd_keys_rm(c: AdminClient, args: argparse.Namespace) -> None:
    c.remove_key(args.provider)
    _out(f"{args.provider}: key removed")


def cmd_keys_ls(c: AdminClient, args: argparse.Namespace) -> None:
    rows = [("PROVIDER", "KIND", "KEY", "SOURCE", "FINGERPRINT", "REF")]
    for p in c.list_providers():
        key = p.key.masked if p.key.set else ("-" if p.needs_key else "(not needed)")
        rows.append((p.name, p.kind, key, _SOURCE.get(p.key.source, "?"),
                     p.key.fingerprint or "-", p.key.ref or "-"))
    _table(rows)


def cmd_policy_show(c: AdminClient, args: argparse.Namespace) -> None:
    _print_policy(c.get_policy())


def cmd_policy_set(c: AdminClient, args: argparse.Namespace) -> None:
    _print_policy(c.set_policy(
        cost=args.cost, quality=args.quality, latency=args.latency, cascade=args.cascade,
        cascade_quality_floor=args.cascade_quality_floor,
        cascade_max_cost_ratio=args.cascade_max_cost_ratio, keepalive=args.keepalive))


def _on_off(v: str) -> bool:
    low = v.strip().lower()
    if low in ("on", "true", "yes", "1"):
        return True
    if low in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {v!r}")


def _print_policy(p: Any) -> None:
    o, cas = p.objective, p.cascade
    _out(f"objective  cost={o.cost:g} quality={o.quality:g} latency={o.latency:g}")
    _out(f"cascade    {'on' if cas.enabled else 'off'} (non-streaming; "
         f"quality_floor={cas.quality_floor:g} max_cost_ratio={cas.max_cost_ratio:g})")
    _out(f"keepalive  {'on' if p.keepalive else 'off'}")
    _out(f"honour_requested_model  {str(p.honour_requested_model).lower()}")
    for model, fl in sorted(p.fallbacks.items()):
        _out(f"fallbacks  {model} -> {', '.join(fl.models) or '(none)'}")


def cmd_models_ls(c: AdminClient, args: argparse.Namespace) -> None:
    rows = [("MODEL", "PROVIDER", "IN $/M", "OUT $/M", "CACHE R", "W 5m", "W 1h", "CONTEXT",
             "CAPS", "ENABLED")]
    for m in c.list_models(include_disabled=args.all):
        p, cap = m.prices, m.capabilities
        caps = ",".join(n for n, on in (("tools", cap.tools), ("vision", cap.vision),
                                        ("thinking", cap.thinking)) if on) or "-"
        rows.append((m.name, m.provider, f"{p.input:g}", f"{p.output:g}", f"{p.cache_read:g}",
                     f"{p.cache_write_5m:g}", f"{p.cache_write_1h:g}", str(m.context_window),
                     caps, "yes" if m.enabled else "no"))
    _table(rows)


def cmd_config_export(c: AdminClient, args: argparse.Namespace) -> None:
    text = c.export_config()
    if args.output and args.output != "-":
        Path(args.output).write_text(text, "utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_config_import(c: AdminClient, args: argparse.Namespace) -> int:
    try:
        text = Path(args.file).read_text("utf-8")
    except OSError as e:
        print(f"switchman: cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    r = c.import_config(text, dry_run=args.dry_run)
    verb = "would change" if args.dry_run else "changed"
    _out(f"{verb}: {', '.join(r.changed) or 'nothing'}")
    if r.restart_required:
        _out("restart the daemon for the daemon/sim/ledger settings to take effect")
    return 0


def cmd_stats(c: AdminClient, args: argparse.Namespace) -> None:
    from google.protobuf.json_format import MessageToDict

    snap = c.stats_snapshot()
    if args.json:
        d = MessageToDict(snap, preserving_proto_field_name=True)
        d.setdefault("budgets", [])  # present (if empty) so scripts can rely on it
        _out(json.dumps(d, indent=2))
        return
    t = snap.totals
    _out(f"requests {t.requests}  errors {t.errors}  spend ${t.spend_usd:.4f}  "
         f"baseline ${t.baseline_usd:.4f}  saved ${t.savings_usd:.4f}  "
         f"cache hits {t.cache_hit_rate:.0%}")
    for kt in snap.by_model:
        _out(f"  {kt.key}: {kt.totals.requests} req, ${kt.totals.spend_usd:.4f}")
    for st in snap.budgets:
        _out(f"  budget {_budget_line(st)}")


# ---- budgets --------------------------------------------------------------------

_SCOPE_NAME = {budgets_pb2.BUDGET_SCOPE_GLOBAL: "global",
               budgets_pb2.BUDGET_SCOPE_TEAM_KEY: "team_key",
               budgets_pb2.BUDGET_SCOPE_SESSION: "session"}
_PERIOD_NAME = {budgets_pb2.BUDGET_PERIOD_DAILY: "daily",
                budgets_pb2.BUDGET_PERIOD_WEEKLY: "weekly",
                budgets_pb2.BUDGET_PERIOD_MONTHLY: "monthly",
                budgets_pb2.BUDGET_PERIOD_TOTAL: "total"}
_STATE_NAME = {budgets_pb2.BUDGET_STATE_OK: "ok",
               budgets_pb2.BUDGET_STATE_SOFT_EXCEEDED: "soft exceeded",
               budgets_pb2.BUDGET_STATE_HARD_EXCEEDED: "HARD EXCEEDED"}


def _usd(v: float) -> str:
    return f"${v:.2f}" if v else "-"


def _budget_line(st: Any) -> str:
    b = st.budget
    return (f"{b.id} {_SCOPE_NAME.get(b.scope, '?')} {b.scope_id or ''} "
            f"{_PERIOD_NAME.get(b.period, '?')}: ${st.spent_usd:.4f} of "
            f"{_usd(b.hard_usd or b.soft_usd)} ({_STATE_NAME.get(st.state, '?')})")


def cmd_budget_set(c: AdminClient, args: argparse.Namespace) -> None:
    b = c.set_budget(args.scope, args.period, subject=args.subject or "",
                     soft_usd=args.soft or 0.0, hard_usd=args.hard or 0.0,
                     timezone=args.tz or "", budget_id=args.id or "")
    who = b.scope_id or ("all traffic" if args.scope == "global" else f"each {args.scope}")
    _out(f"{b.id}: {_PERIOD_NAME[b.period]} budget for {who} (soft {_usd(b.soft_usd)}, "
         f"hard {_usd(b.hard_usd)}, {b.timezone})")


def cmd_budget_ls(c: AdminClient, args: argparse.Namespace) -> None:
    rows = [("ID", "SCOPE", "SUBJECT", "PERIOD", "TZ", "SOFT", "HARD", "SPENT", "RESERVED",
             "FORECAST", "STATE")]
    for st in c.budget_status():
        b = st.budget
        subject = b.scope_id or ("-" if b.scope == budgets_pb2.BUDGET_SCOPE_GLOBAL else "(each)")
        rows.append((b.id, _SCOPE_NAME.get(b.scope, "?"), subject,
                     _PERIOD_NAME.get(b.period, "?"), b.timezone, _usd(b.soft_usd),
                     _usd(b.hard_usd), f"${st.spent_usd:.4f}", f"${st.reserved_usd:.4f}",
                     f"${st.forecast_usd:.4f}", _STATE_NAME.get(st.state, "?")))
    if len(rows) == 1:
        _out("no budgets (add one with 'switchman budget set')")
        return
    _table(rows)


def cmd_budget_rm(c: AdminClient, args: argparse.Namespace) -> None:
    c.remove_budget(args.id)
    _out(f"{args.id}: budget removed")


# ---- team keys ------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_expiry(text: str, now: float | None = None) -> float:
    """``30d``/``12h``/``2w``/``90m`` from now, or an absolute date/time (UTC when
    naive, like ``ledger export --since``)."""
    from switchman_daemon.ledger.export import parse_since

    m = _DURATION.match(text)
    if m:
        return (time.time() if now is None else now) + float(m.group(1)) * _UNIT_S[
            m.group(2).lower()]
    return parse_since(text)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def cmd_teamkeys_issue(c: AdminClient, args: argparse.Namespace) -> int:
    try:
        expires = parse_expiry(args.expires) if args.expires else 0.0
    except ValueError as e:
        print(f"switchman: --expires: {e}", file=sys.stderr)
        return 2
    pools = [p.strip() for p in (args.pools or "").split(",") if p.strip()]
    r = c.issue_team_key(args.name, args.owner, pools, expires)
    k = r.key
    # The key alone on stdout (KEY=$(switchman teamkeys issue ...)); the rest on stderr.
    print(f"issued {k.id} '{k.name}' for {k.owner or '-'} (pools: "
          f"{', '.join(k.allowed_pools) or 'all'}; expires: {_when(k.expires_at)})",
          file=sys.stderr)
    _out(r.plaintext)
    print("store it now: the key is shown only once", file=sys.stderr)
    return 0


def cmd_teamkeys_ls(c: AdminClient, args: argparse.Namespace) -> None:
    rows = [("ID", "NAME", "OWNER", "PREFIX", "POOLS", "EXPIRES", "LAST USED", "SPEND",
             "STATUS")]
    now = time.time()
    for k in c.list_team_keys(include_revoked=args.all):
        status = "revoked" if k.revoked else (
            "expired" if k.expires_at and k.expires_at <= now else "active")
        rows.append((k.id, k.name, k.owner or "-", k.prefix + "…",
                     ",".join(k.allowed_pools) or "all", _when(k.expires_at),
                     _when(k.last_used_at), f"${k.spend_usd:.4f}", status))
    if len(rows) == 1:
        _out("no team keys (issue one with 'switchman teamkeys issue')")
        return
    _table(rows)


def cmd_teamkeys_revoke(c: AdminClient, args: argparse.Namespace) -> None:
    k = c.revoke_team_key(args.id)
    _out(f"{k.id} '{k.name}' revoked ({k.prefix}… is refused from now on)")


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        _out("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def add_admin_commands(sub: Any) -> None:
    """Add the admin verbs to the ``switchman`` subparsers."""
    def verb(parent: Any, name: str, fn: Callable[..., Any], help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help)
        p.add_argument("--data-dir", default=None, help="the daemon's data directory")
        p.set_defaults(func=_admin(fn))
        return p

    verb(sub, "status", cmd_status, "the running daemon's status")

    keys = sub.add_parser("keys", help="provider API keys (stored in the OS keyring)")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    p = verb(ks, "set", cmd_keys_set, "store or rotate a provider's key (prompted, never argv)")
    p.add_argument("provider")
    p.add_argument("--stdin", action="store_true", help="read the key from stdin")
    verb(ks, "test", cmd_keys_test, "test a provider's key with one cheap call").add_argument(
        "provider")
    verb(ks, "rm", cmd_keys_rm, "remove a provider's key from the keyring").add_argument(
        "provider")
    verb(ks, "ls", cmd_keys_ls, "providers and their key status (masked)")

    pol = sub.add_parser("policy", help="the routing objective, cascade and keep-alive")
    ps = pol.add_subparsers(dest="policy_command", required=True)
    verb(ps, "show", cmd_policy_show, "show the routing policy")
    p = verb(ps, "set", cmd_policy_set,
             "set objective weights (0..1), the cascade or cache keep-alive; unset ones stay")
    for w in ("cost", "quality", "latency"):
        p.add_argument(f"--{w}", type=float, default=None)
    p.add_argument("--cascade", type=_on_off, default=None, metavar="on|off",
                   help="non-streaming requests try the cheapest capable model first")
    p.add_argument("--cascade-quality-floor", type=float, default=None, metavar="0..1",
                   help="cheap models predicted below this quality are not tried")
    p.add_argument("--cascade-max-cost-ratio", type=float, default=None, metavar="(0..1]",
                   help="try a cheap model only if it costs at most this share of the "
                        "chosen one")
    p.add_argument("--keepalive", type=_on_off, default=None, metavar="on|off",
                   help="refresh idle sessions' prompt caches when it pays")

    mod = sub.add_parser("models", help="the model pool")
    ms = mod.add_subparsers(dest="models_command", required=True)
    verb(ms, "ls", cmd_models_ls, "models with prices and capabilities").add_argument(
        "--all", action="store_true", help="include disabled models")

    cfg = sub.add_parser("config", help="the daemon's effective config")
    cs = cfg.add_subparsers(dest="config_command", required=True)
    verb(cs, "export", cmd_config_export, "write the effective config (no secrets)"
         ).add_argument("-o", "--output", default=None, help="file (default stdout)")
    p = verb(cs, "import", cmd_config_import, "apply a TOML config to the running daemon")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="validate only")

    verb(sub, "stats", cmd_stats, "spend, savings, cache hits and budgets (snapshot)"
         ).add_argument("--json", action="store_true")

    bud = sub.add_parser("budget", help="spending budgets (soft: downgrade, hard: refuse)")
    bs = bud.add_subparsers(dest="budget_command", required=True)
    p = verb(bs, "set", cmd_budget_set, "create a budget, or replace one with --id")
    p.add_argument("--scope", required=True, choices=["global", "team_key", "session"])
    p.add_argument("--subject", default=None,
                   help="team key id or session id (omit: each key/session separately)")
    p.add_argument("--period", required=True, choices=["daily", "weekly", "monthly", "total"])
    p.add_argument("--soft", type=float, default=None, help="USD; past it, route cheaper")
    p.add_argument("--hard", type=float, default=None, help="USD; past it, refuse (429)")
    p.add_argument("--tz", default=None, help="IANA zone for period starts (default local)")
    p.add_argument("--id", default=None, help="replace this budget")
    verb(bs, "ls", cmd_budget_ls, "budgets with spend, forecast and state")
    verb(bs, "rm", cmd_budget_rm, "remove a budget").add_argument("id")

    tk = sub.add_parser("teamkeys", help="team keys that agents present to the proxy")
    ts = tk.add_subparsers(dest="teamkeys_command", required=True)
    p = verb(ts, "issue", cmd_teamkeys_issue, "issue a key (printed once, on stdout)")
    p.add_argument("--name", required=True)
    p.add_argument("--owner", required=True, help="who the key is for (shown in listings)")
    p.add_argument("--pools", default=None, help="comma-separated pools/models (default all)")
    p.add_argument("--expires", default=None, help="e.g. 30d, 12h, 2w, or a date")
    verb(ts, "ls", cmd_teamkeys_ls, "team keys with spend (never the key itself)"
         ).add_argument("--all", action="store_true", help="include revoked keys")
    verb(ts, "revoke", cmd_teamkeys_revoke, "revoke a key at once").add_argument("id")
