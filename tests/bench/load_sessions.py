"""Bounded load test (issue #7 item 4): hundreds of concurrent multi-turn
streaming sessions through the daemon to the simulated providers.

    .venv/bin/python tests/bench/load_sessions.py                 # ~1 min
    options: --sessions 1500 --concurrency 300 --turns 6 --time-scale 0.25

Loopback only; stops by itself after --sessions sessions. Three subjects run
side by side under the same load, sessions assigned round-robin:

- ``direct``: the load generator talks to a standalone simulator process;
- ``passthrough``: tests/bench/passthrough.py (the floor for a Python proxy) in
  front of the same simulator;
- ``daemon``: ``switchman daemon`` (subprocess, its own data dir) whose sim
  providers point at the same simulator.

Each session alternates Anthropic Messages and Chat Completions by index and
grows its prompt turn by turn (previous reply + a new ~1 KB user message), so
prompt caching and session tracking are exercised. Reports errors (must be 0),
the daemon's RSS sampled every second, and TTFB / total latency percentiles with
"added" = subject minus direct. Prints Markdown; exit code 1 on any error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SUBJECTS = ("direct", "passthrough", "daemon")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _serve_sim(port: int, time_scale: float) -> None:
    """Child mode: the simulator alone on ``port``."""
    from aiohttp import web

    from switchman_daemon.sim import create_sim_app

    @web.middleware
    async def any_key(request: web.Request, handler: Any) -> web.StreamResponse:
        # the sim wants a provider key like a real one; passthrough.py and a
        # non-"sim" provider send none, and no subject should pay for auth
        if "x-api-key" not in request.headers and "authorization" not in request.headers:
            request = request.clone(headers={**request.headers, "x-api-key": "load",
                                             "authorization": "Bearer load"})
        return await handler(request)

    app = create_sim_app(time_scale=time_scale)
    app.middlewares.append(any_key)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=lambda *_: None)


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Stats:
    ttfb: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SUBJECTS})
    total: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SUBJECTS})
    errors: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SUBJECTS})
    rss: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)


_FILLER = " ".join(f"token{i}" for i in range(180))  # ~1 KB per user turn


async def _turn(session: aiohttp.ClientSession, base: str, anthropic: bool,
                messages: list[dict], sid: str) -> tuple[float, float, str]:
    """One streamed turn; returns (ttfb_s, total_s, reply text)."""
    if anthropic:
        path = "/v1/messages"
        body = {"model": "sim-claude-mid", "max_tokens": 256, "stream": True,
                "messages": messages}
        headers = {"anthropic-version": "2023-06-01", "x-claude-code-session-id": sid}
        terminal = b"event: message_stop"
    else:
        path = "/v1/chat/completions"
        body = {"model": "sim-gpt-mid", "stream": True, "messages": messages}
        headers = {"x-session-id": sid}
        terminal = b"data: [DONE]"
    t0 = time.perf_counter()
    ttfb = None
    done = False
    async with session.post(base + path, json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for line in r.content:
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            if line.startswith(terminal):
                done = True
            elif b'"error"' in line[:40] or line.startswith(b"event: error"):
                raise RuntimeError(f"stream error: {line[:200]!r}")
    if not done:
        raise RuntimeError("stream ended without its terminal event")
    return ttfb or 0.0, time.perf_counter() - t0, "(reply)"


async def _session(i: int, session: aiohttp.ClientSession, bases: dict[str, str],
                   turns: int, stats: Stats) -> None:
    subject = SUBJECTS[i % len(SUBJECTS)]
    anthropic = (i // len(SUBJECTS)) % 2 == 0
    sid = f"load-{i:05d}"
    messages: list[dict] = []
    for t in range(turns):
        messages.append({"role": "user", "content": f"session {i} turn {t}: {_FILLER}"})
        try:
            ttfb, total, reply = await _turn(session, bases[subject], anthropic, messages, sid)
        except Exception as e:  # counted, never fatal: the run must finish
            stats.errors[subject].append(f"{type(e).__name__}: {e}"[:200])
            return
        stats.ttfb[subject].append(ttfb)
        stats.total[subject].append(total)
        messages.append({"role": "assistant", "content": f"reply {t} {reply}"})
        await asyncio.sleep(random.uniform(0.0, 0.05))  # an agent's think time


async def _wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.post(url + "/v1/chat/completions", json={}) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


async def _sample_rss(pid: int, stats: Stats, stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        stats.rss.append((time.monotonic() - t0, _rss_mib(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    stats.rss.append((time.monotonic() - t0, _rss_mib(pid)))


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


async def run(args: argparse.Namespace) -> int:
    sim_port, pt_port, d_port = _free_port(), _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="switchman-load-"))
    sim_url = f"http://127.0.0.1:{sim_port}"
    cfg = tmp / "load.toml"
    cfg.write_text(f"""
[sim]
enabled = false
[providers.sim-anthropic]
kind = "anthropic"
base_url = "{sim_url}"
[providers.sim-openai]
kind = "openai"
base_url = "{sim_url}/v1"
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, __file__, "--serve-sim", str(sim_port),
                          "--time-scale", str(args.time_scale)], env=env),
        subprocess.Popen([sys.executable, str(HERE / "passthrough.py"), sim_url,
                          "--port", str(pt_port)], env=env, stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "switchman_daemon.cli", "daemon",
                          "--port", str(d_port), "--data-dir", str(tmp / "data"),
                          "--config", str(cfg), "--log-level", "warning"], env=env),
    ]
    daemon_pid = procs[2].pid
    bases = {"direct": sim_url, "passthrough": f"http://127.0.0.1:{pt_port}",
             "daemon": f"http://127.0.0.1:{d_port}"}
    stats = Stats()
    try:
        for url in bases.values():
            await _wait_ready(url)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_rss(daemon_pid, stats, stop))
        conn = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        t0 = time.monotonic()
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            sem = asyncio.Semaphore(args.concurrency)

            async def bounded(i: int) -> None:
                async with sem:
                    await _session(i, session, bases, args.turns, stats)

            await asyncio.gather(*(bounded(i) for i in range(args.sessions)))
        wall = time.monotonic() - t0
        stop.set()
        await sampler
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    return _report(args, stats, wall)


def _report(args: argparse.Namespace, stats: Stats, wall: float) -> int:
    n_err = sum(len(v) for v in stats.errors.values())
    print(f"\n## Load: {args.sessions} sessions x {args.turns} streamed turns, "
          f"{args.concurrency} concurrent, sim time_scale {args.time_scale}, {wall:.1f} s\n")
    print("| subject | turns | errors | TTFB p50 ms | TTFB p99 ms | added p50 ms | "
          "added p99 ms | total p50 ms | total p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    d50, d99 = _pct(stats.ttfb["direct"], 50), _pct(stats.ttfb["direct"], 99)
    for s in SUBJECTS:
        t50, t99 = _pct(stats.ttfb[s], 50), _pct(stats.ttfb[s], 99)
        add = "—" if s == "direct" else f"{t50 - d50:+.1f}"
        add99 = "—" if s == "direct" else f"{t99 - d99:+.1f}"
        print(f"| {s} | {len(stats.ttfb[s])} | {len(stats.errors[s])} | {t50:.1f} | {t99:.1f} "
              f"| {add} | {add99} | {_pct(stats.total[s], 50):.1f} | "
              f"{_pct(stats.total[s], 99):.1f} |")
    rss = [m for _, m in stats.rss]
    if rss:
        q = max(1, len(rss) // 4)
        early = statistics.median(rss[q:2 * q] or rss)  # after warm-up
        late = statistics.median(rss[-q:])
        print(f"\nDaemon RSS MiB: start {rss[0]:.1f}, peak {max(rss):.1f}, "
              f"2nd-quarter median {early:.1f}, last-quarter median {late:.1f} "
              f"(drift {late - early:+.1f}); samples: "
              + ", ".join(f"{m:.0f}" for m in rss))
    for s, errs in stats.errors.items():
        for e in errs[:5]:
            print(f"- {s} error: {e}")
    print(f"\nRESULT: {'PASS' if n_err == 0 else 'FAIL'} ({n_err} errors)")
    return 0 if n_err == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=300)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--time-scale", type=float, default=0.25)
    ap.add_argument("--serve-sim", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sim is not None:
        _serve_sim(args.serve_sim, args.time_scale)
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
