"""Routing decision latency: signals + tracker + scoring for one request in a
long (about 200K-token) Claude Code session, as the daemon runs it: the
session's previous turn has been observed, so its prefix chain is warm.

    .venv/bin/python tests/bench/bench_decision.py [--turns 160] [--n 2000]

Prints p50/p99 in microseconds for a new-task decision (the whole pool scored)
and for an in-task step (sticky), and the ratio to the 0.2 ms budget. The
request body is parsed beforehand (the proxy parses it once for everything).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from multidict import CIMultiDict

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from switchman_daemon.config import load_config
from switchman_daemon.models import ModelRegistry
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.routing.prefix import build_chain
from switchman_daemon.routing.router import Router
from switchman_daemon.routing.signals import read_signals
from tests.support.shapes import claude_code_turn


def _session(turns: int) -> tuple[dict, dict]:
    body, headers = claude_code_turn(turns=turns, target_kb=100)
    body["model"] = "default"
    # pad tool results so the session carries ~200K tokens like a late agent turn
    for m in body["messages"]:
        if m["role"] == "user" and isinstance(m["content"], list):
            for b in m["content"]:
                if b.get("type") == "tool_result":
                    b["content"] = "line of tool output for the agent\n" * 120
    return body, headers


def _percentiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[int(len(xs) * 0.99) - 1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=160)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args(argv)

    cfg = load_config(None)
    router = Router(cfg, ModelRegistry(cfg))
    body, headers = _session(args.turns)
    h = CIMultiDict(headers)
    raw = json.dumps(body).encode()
    s0 = read_signals("anthropic", body, h, len(raw), raw)
    # the previous turn was served and observed: the tracker holds its chain
    chain = build_chain("anthropic", body)
    tokens = chain.total_tokens
    first = router.choose(s0, body)
    router.observe(s0, chain, first.model, Usage(cache_write_tokens=tokens, output_tokens=500),
                   800.0, 4000.0)

    new_task = copy.deepcopy(body)
    new_task["messages"].append({"role": "assistant", "content": [{"type": "text",
                                                                   "text": "done"}]})
    new_task["messages"].append({"role": "user", "content": [{"type": "text",
                                                              "text": "next: add tests"}]})
    raw_new = json.dumps(new_task).encode()
    step = copy.deepcopy(body)  # ends in a tool_result: a step inside the task
    raw_step = raw

    def run(b: dict, r: bytes) -> list[float]:
        out = []
        for _ in range(args.n):
            t = time.perf_counter()
            s = read_signals("anthropic", b, h, len(r), r)
            router.choose(s, b)
            out.append((time.perf_counter() - t) * 1e6)
        return out

    run(new_task, raw_new)  # warm-up
    res = {"new task (pool scored)": run(new_task, raw_new),
           "in-task step (sticky)": run(step, raw_step)}
    print(f"session: {len(body['messages'])} messages, ~{tokens:,} prefix tokens "
          f"(router estimate), body {len(raw) / 1024:.0f} KiB\n")
    print("| decision | p50 µs | p99 µs | p99 vs 200 µs budget |")
    print("|---|---|---|---|")
    for name, xs in res.items():
        p50, p99 = _percentiles(xs)
        print(f"| {name} | {p50:.0f} | {p99:.0f} | {p99 / 200:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
