"""``switchman eval``: replay traces (or synthetic sessions) and compare strategies."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from switchman_daemon.evaluation.tasks import DEFAULT_POOL, DEFAULT_TASK_SET, TASK_SETS


def add_eval_parser(sub: Any) -> None:
    e = sub.add_parser("eval", help="replay agent traces through the router (cost/quality)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--traces", default=None,
                     help="trace JSONL (schema: switchman_daemon.evaluation.schema)")
    src.add_argument("--synthetic", type=int, default=None, metavar="N",
                     help="N synthetic sessions (default 96: ~470 tasks, enough that "
                          "quality gaps of a few points are not task sampling)")
    src.add_argument("--convert", nargs=2, metavar=("KIND", "PATH"),
                     help="convert tracelab|tracelab-csv|aider|swe-agent|ledger data at PATH")
    e.add_argument("--sessions", type=int, default=None, help="synthetic session count")
    e.add_argument("--seed", type=int, default=7)
    e.add_argument("--tasks", choices=TASK_SETS, default=DEFAULT_TASK_SET,
                   help="synthetic tasks: held-out questions of an outcome data set with "
                        "their recorded outcomes per pool tier, or 'templates' (made-up "
                        f"tasks, assumed success curve); default {DEFAULT_TASK_SET}")
    e.add_argument("--data-dir", type=Path, default=None,
                   help="outcome data sets (default $SWITCHMAN_DATA_SETS or ../shared/data)")
    e.add_argument("--pool", default=",".join(DEFAULT_POOL),
                   help="comma-separated pool models (strong,mid,cheap)")
    e.add_argument("--objective", default=None,
                   help="cost,quality,latency weights for the router (default: config)")
    e.add_argument("--sweep", action="store_true", help="sweep objective weights (Pareto)")
    e.add_argument("--plot", default=None, help="write the Pareto PNG here (implies --sweep)")
    e.add_argument("--json", action="store_true", help="print the comparison as JSON")
    e.add_argument("--write-traces", default=None, help="also write the replayed traces (JSONL)")
    e.set_defaults(func=eval_main)


def _records(args: argparse.Namespace) -> list[Any]:
    from switchman_daemon.evaluation import converters, schema, synthetic

    if args.traces:
        return schema.read_jsonl(args.traces)
    if args.convert:
        kind, path = args.convert
        return converters.convert(kind, Path(path))
    n = args.synthetic or args.sessions or synthetic.DEFAULT_SESSIONS
    return synthetic.generate(n, args.seed, tasks=args.tasks, pool=_pool(args),
                              data_dir=args.data_dir)


def _pool(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in args.pool.split(",") if m.strip()]


def eval_main(args: argparse.Namespace) -> int:
    from switchman_daemon.evaluation import harness, report, schema

    t0 = time.monotonic()
    try:
        records = _records(args)
    except (OSError, ValueError) as e:
        print(f"switchman eval: {e}", file=sys.stderr)
        return 2
    if not records:
        print("switchman eval: no records", file=sys.stderr)
        return 2
    if args.write_traces:
        schema.write_jsonl(records, args.write_traces)
    objective = None
    if args.objective:
        try:
            c, q, lat = (float(x) for x in args.objective.split(","))
        except ValueError:
            print("switchman eval: --objective wants cost,quality,latency", file=sys.stderr)
            return 2
        objective = {"cost": c, "quality": q, "latency": lat}
    pool = _pool(args)
    out = harness.evaluate(records, pool, objective=objective,
                           sweep=bool(args.sweep or args.plot), seed=args.seed)
    if args.plot:
        out["plot"] = {"path": args.plot, "backend": report.plot(out, args.plot)}
    out["seconds"] = round(time.monotonic() - t0, 2)
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(report.markdown(out))
        if args.plot:
            print(f"\nPareto plot: {args.plot} ({out['plot']['backend']})")
    return 0
