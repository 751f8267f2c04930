"""Proxy overhead benchmark: direct vs a minimal aiohttp pass-through vs the "feature
floor" (the pass-through plus a JSON parse and one SQLite row per request) vs the daemon.

    .venv/bin/python tests/bench/bench_proxy.py            # ~4-5 min, 3 interleaved reps
    .venv/bin/python tests/bench/bench_proxy.py --quick    # ~1 min, 1 rep, fewer requests
    options: --reps N, --subjects direct,passthrough,floor,daemon, --json PATH, --strict,
             --scenarios small_c1,large_c32,...

Method (as in /work/shared/PERF-BASELINE.md): a fake upstream (fake_upstream.py)
and this load generator share CPU 0; each proxy is pinned alone to CPU 1. The
load is closed-loop: ``c`` workers on one aiohttp connector (limit=c) send
requests back to back; each scenario runs a fixed number of requests or a
maximum duration, whichever ends first, after a warm-up. Repetitions are
interleaved (scenario by scenario, subject order rotated) and summarised as the
median of per-rep medians. "Added" = subject p50 minus direct p50.

Prints Markdown tables and PASS/FAIL targets; writes raw numbers as JSON.
Exit code is 0 unless --strict and a target fails (or a subject failed to run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import signal
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
import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agent_bodies import (  # noqa: E402
    PACED_MARKER,
    anthropic_agent_turn,
    openai_agent_turn,
    openai_small,
)

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
GPT, CLAUDE = "bench-gpt", "bench-claude"
SUBJECTS = ("direct", "passthrough", "floor", "daemon")

# -- targets (daemon vs the pass-through) -------------------------------------------
ADDED_RATIO = 1.3
# Below this much extra added latency a difference is noise, not a regression:
# max(NOISE_MS, NOISE_FRAC x direct p50).
NOISE_MS, NOISE_FRAC = 0.1, 0.02
RPS_RATIO = 0.8
RSS_MAX_MIB = 150.0
NOISY = 0.10  # flag runs where other processes took >10% of the proxy's CPU


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    path: str
    body: str  # key into the bodies dict
    conc: int
    n: int  # measured requests (or max_s, whichever first)
    stream: bool
    metrics: tuple[str, ...] = ("lat",)  # which p50s the targets check: lat, ttfb


SCENARIOS = [
    Scenario("small_c1", "small c=1", OPENAI_PATH, "small", 1, 300, False),
    Scenario("small_c32", "small c=32", OPENAI_PATH, "small", 32, 2000, False),
    Scenario("small_c128", "small c=128", OPENAI_PATH, "small", 128, 2000, False),
    Scenario("stream50_c1", "stream50 c=1", OPENAI_PATH, "stream", 1, 300, True,
             ("lat", "ttfb")),
    Scenario("paced_c1", "paced stream c=1", OPENAI_PATH, "paced", 1, 40, True, ("ttfb",)),
    Scenario("paced_c32", "paced stream c=32", OPENAI_PATH, "paced", 32, 800, True, ("ttfb",)),
    Scenario("large_c1", "large 120 KB c=1", OPENAI_PATH, "large", 1, 300, False),
    Scenario("large_c32", "large 120 KB c=32", OPENAI_PATH, "large", 32, 2000, False),
    Scenario("anth_large_c1", "anthropic stream 120 KB c=1", ANTHROPIC_PATH, "anth_large",
             1, 300, True),
    Scenario("anth_large_c32", "anthropic stream 120 KB c=32", ANTHROPIC_PATH, "anth_large",
             32, 1500, True),
]

OPENAI_HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
ANTHROPIC_HEADERS = {"content-type": "application/json", "x-api-key": "sk-ant-bench",
                     "anthropic-version": "2023-06-01"}


def make_bodies() -> dict[str, bytes]:
    small = openai_small(GPT)
    stream = {**small, "stream": True, "stream_options": {"include_usage": True}}
    paced = {**stream, "user": PACED_MARKER}
    return {
        "small": orjson.dumps(small),
        "stream": orjson.dumps(stream),
        "paced": orjson.dumps(paced),
        "large": orjson.dumps(openai_agent_turn(GPT)),
        "anth_large": orjson.dumps(anthropic_agent_turn(CLAUDE)),
    }


# -- processes ------------------------------------------------------------------------

NCPU = len(os.sched_getaffinity(0))
PIN = NCPU >= 2
LOAD_CPU, PROXY_CPU = 0, 1


def _pin_to(cpu: int):  # a preexec_fn
    def f() -> None:
        if PIN:
            os.sched_setaffinity(0, {cpu})
    return f


def pin_all_threads(pid: int, cpu: int) -> None:
    if not PIN:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime, all threads
    except (OSError, IndexError, ValueError):
        return None


def cpu_busy_s(cpu: int) -> float | None:
    """Busy seconds of one CPU since boot (all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:]]
                    return (sum(v[:8]) - v[3] - v[4]) / _TICK  # minus idle, iowait
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_ready_printer(name: str, argv: list[str], cpu: int, tmp: Path) -> tuple[Proc, int]:
    """Start a helper that prints ``READY <port>`` on stdout."""
    log = tmp / f"{name}.log"
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "wb"),  # noqa: SIM115
                         preexec_fn=_pin_to(cpu), cwd=HERE)
    assert p.stdout is not None
    line = p.stdout.readline().decode().strip()
    proc = Proc(name, p, log)
    if not line.startswith("READY "):
        proc.stop()
        raise RuntimeError(f"{name} did not start: {line!r}\n{proc.tail()}")
    return proc, int(line.split()[1])


DAEMON_TOML = """\
[providers.bench-openai]
kind = "openai-compatible"
base_url = "http://127.0.0.1:{uport}/v1"

[providers.bench-anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:{uport}"
{models}"""

MODEL_TOML = """
[models.{name}]
provider = "{provider}"
input = 1.0
output = 4.0
cache_read = 0.1
cache_write_5m = 1.0
cache_write_1h = 1.0
min_cache_prefix = 1024
context_window = 400000
max_output = 32000
tools = true
vision = true
thinking = false
quality = 0.8
"""


def switchman_argv() -> list[str]:
    exe = Path(sys.executable).parent / "switchman"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "switchman_daemon.cli"]


async def wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> str | None:
    """None when GET /healthz answers 200, else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"exited with code {proc.returncode}"
            try:
                async with s.get(base + "/healthz",
                                 timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return None
                    last = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                last = type(e).__name__
            await asyncio.sleep(0.2)
    return f"not healthy after {timeout:.0f} s ({last})"


async def start_daemon(tmp: Path, uport: int) -> tuple[Proc, int]:
    models = MODEL_TOML.format(name=GPT, provider="bench-openai") + MODEL_TOML.format(
        name=CLAUDE, provider="bench-anthropic")
    cfg = tmp / "bench.toml"
    cfg.write_text(DAEMON_TOML.format(uport=uport, models=models))
    data = tmp / "daemon-data"
    data.mkdir(exist_ok=True)
    port = free_port()
    log = tmp / "daemon.log"
    argv = [*switchman_argv(), "daemon", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data), "--config", str(cfg), "--log-level", "warning"]
    p = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                         preexec_fn=_pin_to(PROXY_CPU))
    proc = Proc("daemon", p, log)
    why = await wait_healthy(f"http://127.0.0.1:{port}", p, 30)
    if why:
        proc.stop()
        raise RuntimeError(f"daemon {why}\n{proc.tail()}")
    pin_all_threads(p.pid, PROXY_CPU)
    return proc, port


# -- load generation ---------------------------------------------------------------------


@dataclass
class Run:
    lat: list[float] = field(default_factory=list)  # seconds
    ttfb: list[float] = field(default_factory=list)
    errors: int = 0
    error_sample: str | None = None
    elapsed: float = 0.0
    cpu: float | None = None  # proxy CPU seconds over the measured part
    other_cpu: float | None = None  # CPU seconds others used on the proxy's CPU (noise)


async def _one(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str], stream: bool, run: Run) -> None:
    t0 = time.perf_counter()
    t1 = None
    try:
        async with session.post(url, data=body, headers=headers) as r:
            if stream:
                first = await r.content.readany()
                t1 = time.perf_counter()
                tail = first
                while True:
                    c = await r.content.readany()
                    if not c:
                        break
                    tail = tail[-64:] + c
                ok = r.status == 200 and (b"[DONE]" in tail or b"message_stop" in tail)
                data = tail
            else:
                data = await r.read()
                ok = r.status == 200
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as e:
        ok, status, data = False, 0, repr(e).encode()
    t2 = time.perf_counter()
    if ok:
        run.lat.append(t2 - t0)
        if t1 is not None:
            run.ttfb.append(t1 - t0)
    else:
        run.errors += 1
        if run.error_sample is None:
            run.error_sample = f"HTTP {status}: {data[:300]!r}"


async def drive(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                stream: bool, conc: int, n: int, max_s: float) -> Run:
    run = Run()
    issued = 0
    deadline = time.perf_counter() + max_s

    async def worker() -> None:
        nonlocal issued
        while issued < n and time.perf_counter() < deadline:
            issued += 1
            await _one(session, url, body, headers, stream, run)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    run.elapsed = time.perf_counter() - t
    return run


async def run_scenario(base: str, sc: Scenario, body: bytes, pid: int | None, n: int,
                       max_s: float, warm: int) -> Run:
    headers = ANTHROPIC_HEADERS if sc.path == ANTHROPIC_PATH else OPENAI_HEADERS
    conn = aiohttp.TCPConnector(limit=sc.conc)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=60)) as s:
        url = base + sc.path
        await drive(s, url, body, headers, sc.stream, sc.conc, warm, max_s)
        c0 = cpu_s(pid) if pid else None
        b0 = cpu_busy_s(PROXY_CPU) if PIN else None
        run = await drive(s, url, body, headers, sc.stream, sc.conc, n, max_s)
        c1 = cpu_s(pid) if pid else None
        b1 = cpu_busy_s(PROXY_CPU) if PIN else None
        if c0 is not None and c1 is not None:
            run.cpu = c1 - c0
        if b0 is not None and b1 is not None:
            run.other_cpu = max(0.0, (b1 - b0) - (run.cpu or 0.0))
    return run


# -- statistics ---------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p * len(s)) - 1))] * 1000.0


def summarise(run: Run) -> dict[str, Any]:
    ok = len(run.lat)
    return {
        "n": ok, "errors": run.errors, "error_sample": run.error_sample,
        "lat_p50": pct(run.lat, 0.5), "lat_p99": pct(run.lat, 0.99),
        "ttfb_p50": pct(run.ttfb, 0.5), "ttfb_p99": pct(run.ttfb, 0.99),
        "rps": ok / run.elapsed if run.elapsed else None,
        "cpu_ms_per_req": (run.cpu * 1000.0 / ok) if run.cpu is not None and ok else None,
        "elapsed_s": run.elapsed,
        # share of the proxy CPU's time taken by other processes (0 = quiet machine)
        "noise": (run.other_cpu / run.elapsed) if run.other_cpu is not None
        and run.elapsed else None,
    }


def med(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def combine(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: med([r[k] for r in reps]) for k in
                           ("lat_p50", "lat_p99", "ttfb_p50", "ttfb_p99", "rps",
                            "cpu_ms_per_req")}
    out["n"] = sum(r["n"] for r in reps)
    out["errors"] = sum(r["errors"] for r in reps)
    out["error_sample"] = next((r["error_sample"] for r in reps if r["error_sample"]), None)
    return out


# -- report --------------------------------------------------------------------------------


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def fmt_added(sub: float | None, direct: float | None, ratio: bool = True) -> str:
    if sub is None or direct is None:
        return "—"
    a = sub - direct
    s = f"{'+' if a >= 0 else '−'}{fmt_ms(abs(a))}"
    if ratio and direct > 0:
        s += f" (×{sub / direct:.1f})"
    return s


HEADLINE = [  # (column label, scenario key, metric, show ratio)
    ("small c=1", "small_c1", "lat", True),
    ("small c=32", "small_c32", "lat", True),
    ("small c=128", "small_c128", "lat", True),
    ("stream50 c=1", "stream50_c1", "lat", True),
    ("stream50 TTFB c=1", "stream50_c1", "ttfb", False),
    ("paced TTFB c=1", "paced_c1", "ttfb", False),
    ("paced TTFB c=32", "paced_c32", "ttfb", False),
    ("large 120 KB c=1", "large_c1", "lat", True),
    ("large c=32", "large_c32", "lat", True),
    ("anth stream 120 KB c=1", "anth_large_c1", "lat", True),
    ("anth stream 120 KB c=32", "anth_large_c32", "lat", True),
]
CPU_COLS = ("small_c128", "stream50_c1", "large_c32", "anth_large_c32")


def report(summary: dict[str, dict[str, dict[str, Any]]], rss: dict[str, dict[str, Any]],
           subjects: list[str], reps: int) -> tuple[str, list[dict[str, Any]]]:
    lines: list[str] = []
    w = lines.append
    d = summary.get("direct", {})

    def get(sub: str, key: str, metric: str) -> float | None:
        r = summary.get(sub, {}).get(key)
        return r.get(f"{metric}_p50") if r else None

    w(f"## Added latency over direct (p50 ms, ratio in brackets; median of {reps} rep(s))\n")
    cols = [c[0] for c in HEADLINE] + ["max rps small c=128 (×direct)",
                                       "proxy CPU ms/req (small c=128 · stream50 c=1 · "
                                       "large c=32 · anth c=32)", "RSS MiB warm → after load"]
    w("| subject | " + " | ".join(cols) + " |")
    w("|---" * (len(cols) + 1) + "|")
    d_rps = d.get("small_c128", {}).get("rps")
    for sub in subjects:
        cells = []
        for _, key, metric, ratio in HEADLINE:
            v = get(sub, key, metric)
            if sub == "direct":
                cells.append(f"{fmt_ms(v)} ms" if v is not None else "—")
            else:
                cells.append(fmt_added(v, get("direct", key, metric), ratio))
            errs = summary.get(sub, {}).get(key, {}).get("errors")
            if errs:
                cells[-1] += f" **{errs} err**"
        rps = summary.get(sub, {}).get("small_c128", {}).get("rps")
        if rps is None:
            cells.append("—")
        elif sub == "direct":
            cells.append(f"{rps:.0f} (harness ceiling)")
        else:
            cells.append(f"{rps:.0f} (×{rps / d_rps:.2f})" if d_rps else f"{rps:.0f}")
        if sub == "direct":
            cells += ["—", "—"]
        else:
            cpu = [summary.get(sub, {}).get(k, {}).get("cpu_ms_per_req") for k in CPU_COLS]
            cells.append(" · ".join(f"{c:.2f}" if c is not None else "—" for c in cpu))
            r = rss.get(sub, {})
            cells.append(f"{fmt_ms(r.get('warm'))} → {fmt_ms(r.get('after'))}")
        w(f"| {sub} | " + " | ".join(cells) + " |")

    w("\n## Absolute latency (ms): p50 / p99 (TTFB p50 / p99 for streams)\n")
    w("| scenario | " + " | ".join(subjects) + " |")
    w("|---" * (len(subjects) + 1) + "|")
    for sc in SCENARIOS:
        if not any(sc.key in summary.get(s, {}) for s in subjects):
            continue
        cells = []
        for sub in subjects:
            r = summary.get(sub, {}).get(sc.key)
            if not r:
                cells.append("—")
                continue
            c = f"{fmt_ms(r['lat_p50'])} / {fmt_ms(r['lat_p99'])}"
            if sc.stream:
                c += f" (TTFB {fmt_ms(r['ttfb_p50'])} / {fmt_ms(r['ttfb_p99'])})"
            if r["errors"]:
                c += f" **{r['errors']} err**"
            cells.append(c)
        w(f"| {sc.label} | " + " | ".join(cells) + " |")

    targets: list[dict[str, Any]] = []
    if "daemon" in subjects and "passthrough" in subjects and "direct" in subjects:
        w("\n## Targets (daemon vs aiohttp pass-through)\n")
        w(f"- added p50 ≤ {ADDED_RATIO}× the pass-through's added p50, per scenario "
          f"(noise allowance max({NOISE_MS} ms, {NOISE_FRAC:.0%} of direct p50))")
        w(f"- throughput small c=128 ≥ {RPS_RATIO}× the pass-through's; "
          f"daemon RSS after load ≤ {RSS_MAX_MIB:.0f} MiB; no failed requests\n")
        for sc in SCENARIOS:
            for metric in sc.metrics:
                dv, pv, mv = (get(s, sc.key, metric) for s in ("direct", "passthrough",
                                                                "daemon"))
                if None in (dv, pv, mv):
                    continue
                p_add, m_add = pv - dv, mv - dv
                limit = max(ADDED_RATIO * max(p_add, 0.0),
                            p_add + max(NOISE_MS, NOISE_FRAC * dv))
                ok = m_add <= limit
                name = f"{sc.label} {'TTFB ' if metric == 'ttfb' else ''}added p50"
                targets.append({"target": name, "daemon": m_add, "passthrough": p_add,
                                "limit": limit, "pass": ok})
                w(f"- {'PASS' if ok else 'FAIL'} {name}: daemon {m_add:+.2f} ms vs "
                  f"pass-through {p_add:+.2f} ms (limit {limit:+.2f})")
        p_rps = summary["passthrough"].get("small_c128", {}).get("rps")
        m_rps = summary["daemon"].get("small_c128", {}).get("rps")
        if p_rps and m_rps is not None:
            ok = m_rps >= RPS_RATIO * p_rps
            targets.append({"target": "throughput small c=128", "daemon": m_rps,
                            "passthrough": p_rps, "limit": RPS_RATIO * p_rps, "pass": ok})
            w(f"- {'PASS' if ok else 'FAIL'} throughput small c=128: daemon {m_rps:.0f} rps "
              f"= {m_rps / p_rps:.2f}× pass-through {p_rps:.0f} (min ×{RPS_RATIO})")
        after = rss.get("daemon", {}).get("after")
        if after is not None:
            ok = after <= RSS_MAX_MIB
            targets.append({"target": "daemon RSS after load", "daemon": after,
                            "limit": RSS_MAX_MIB, "pass": ok})
            w(f"- {'PASS' if ok else 'FAIL'} daemon RSS after load: {after:.0f} MiB "
              f"(max {RSS_MAX_MIB:.0f})")
        errs = sum(r.get("errors", 0) for r in summary["daemon"].values())
        targets.append({"target": "daemon failed requests", "daemon": errs, "limit": 0,
                        "pass": errs == 0})
        w(f"- {'PASS' if errs == 0 else 'FAIL'} daemon failed requests: {errs}")
        n_fail = sum(not t["pass"] for t in targets)
        w(f"\n**{len(targets) - n_fail}/{len(targets)} targets pass.**")
    for sub in subjects:
        for key, r in summary.get(sub, {}).items():
            if r.get("error_sample"):
                w(f"\nfirst error, {sub} {key}: `{r['error_sample']}`")
    return "\n".join(lines), targets


# -- main ------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    if PIN:
        os.sched_setaffinity(0, {LOAD_CPU})
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    scale = 0.4 if quick else 1.0
    max_s = 1.5 if quick else 5.0
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    scenarios = SCENARIOS
    if args.scenarios:
        want = set(args.scenarios.split(","))
        scenarios = [s for s in SCENARIOS if s.key in want]
    bodies = make_bodies()
    tmp = Path(tempfile.mkdtemp(prefix="switchman-bench-"))
    procs: list[Proc] = []
    bases: dict[str, str] = {}
    pids: dict[str, int | None] = {}
    failures: dict[str, str] = {}
    t_start = time.monotonic()
    try:
        up, uport = start_ready_printer(
            "upstream", [sys.executable, str(HERE / "fake_upstream.py")], LOAD_CPU, tmp)
        procs.append(up)
        bases["direct"], pids["direct"] = f"http://127.0.0.1:{uport}", None
        if "passthrough" in subjects:
            pt, pport = start_ready_printer(
                "passthrough", [sys.executable, str(HERE / "passthrough.py"),
                                f"http://127.0.0.1:{uport}"], PROXY_CPU, tmp)
            procs.append(pt)
            bases["passthrough"], pids["passthrough"] = f"http://127.0.0.1:{pport}", pt.pid
        if "floor" in subjects:
            fl, fport = start_ready_printer(
                "floor", [sys.executable, str(HERE / "passthrough.py"),
                          f"http://127.0.0.1:{uport}", "--floor", str(tmp / "floor.db")],
                PROXY_CPU, tmp)
            procs.append(fl)
            bases["floor"], pids["floor"] = f"http://127.0.0.1:{fport}", fl.pid
        if "daemon" in subjects:
            try:
                dm, dport = await start_daemon(tmp, uport)
                procs.append(dm)
                bases["daemon"], pids["daemon"] = f"http://127.0.0.1:{dport}", dm.pid
            except RuntimeError as e:
                failures["daemon"] = str(e)
                print(f"!! daemon unavailable: {e}", file=sys.stderr)
        subjects = [s for s in subjects if s in bases]

        # sanity + warm-up: every scenario once per subject; drop subjects that fail
        rss: dict[str, dict[str, Any]] = {}
        for sub in list(subjects):
            for sc in scenarios:
                r = await run_scenario(bases[sub], sc, bodies[sc.body], None,
                                       n=min(sc.conc * 2, 200), max_s=max_s, warm=0)
                if r.errors:
                    failures[sub] = f"{sc.key}: {r.error_sample}"
                    print(f"!! {sub} fails {sc.key}: {r.error_sample}", file=sys.stderr)
                    break
            if sub in failures:
                subjects.remove(sub)
                continue
            if pids[sub]:
                rss[sub] = {"warm": rss_mib(pids[sub])}

        runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in subjects}
        for rep in range(reps):
            for sc in scenarios:
                order = subjects[rep % len(subjects):] + subjects[:rep % len(subjects)]
                for sub in order:
                    n = max(10, int(sc.n * scale))
                    warm = min(max(sc.conc * 2, 20), n)
                    r = await run_scenario(bases[sub], sc, bodies[sc.body], pids[sub],
                                           n=n, max_s=max_s, warm=warm)
                    s = summarise(r)
                    runs[sub].setdefault(sc.key, []).append(s)
                    print(f"rep {rep + 1}/{reps} {sc.key:15s} {sub:12s} n={s['n']:5d} "
                          f"p50={fmt_ms(s['lat_p50']):>6s} p99={fmt_ms(s['lat_p99']):>6s} "
                          f"ttfb50={fmt_ms(s['ttfb_p50']):>6s} rps={s['rps'] or 0:7.0f} "
                          f"err={s['errors']} noise={(s['noise'] or 0):.0%}",
                          file=sys.stderr, flush=True)
        for sub in subjects:
            if pids[sub]:
                rss.setdefault(sub, {})["after"] = rss_mib(pids[sub])
        summary = {sub: {k: combine(v) for k, v in runs[sub].items()} for sub in subjects}
        text, targets = report(summary, rss, subjects, reps)
        wall = time.monotonic() - t_start
        print(f"# Switchman proxy benchmark ({_dt.datetime.now():%Y-%m-%d %H:%M}, "
              f"{NCPU} CPUs, pinned={PIN}, {'quick' if quick else 'full'}, {wall:.0f} s)\n")
        print(text)
        noisy = [f"{sub} {k} rep {i + 1} ({r['noise']:.0%})" for sub in subjects
                 for k, rs in runs[sub].items() for i, r in enumerate(rs)
                 if (r.get("noise") or 0) > NOISY]
        if noisy:
            print(f"\n**Noise:** other processes used > {NOISY:.0%} of CPU {PROXY_CPU} during "
                  f"{len(noisy)} run(s): " + ", ".join(noisy[:8])
                  + (" ..." if len(noisy) > 8 else "") + " — rerun on a quiet machine.")
        for sub, why in failures.items():
            print(f"\n**{sub} did not run:** {why.splitlines()[0]}")
        out = {
            "meta": {"date": _dt.datetime.now().isoformat(timespec="seconds"),
                     "python": platform.python_version(), "aiohttp": aiohttp.__version__,
                     "cpus": NCPU, "pinned": PIN, "quick": quick, "reps": reps,
                     "wall_s": wall, "body_bytes": {k: len(v) for k, v in bodies.items()}},
            "scenarios": [sc.__dict__ for sc in scenarios],
            "summary": summary, "runs": runs, "rss_mib": rss, "targets": targets,
            "failures": failures,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(f"\nraw numbers: {path}", file=sys.stderr)
        if args.strict and (failures or any(not t["pass"] for t in targets)):
            return 1
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~1 min: 1 rep, fewer requests")
    ap.add_argument("--reps", type=int, default=0, help="interleaved repetitions (default 3)")
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--scenarios", default="", help="comma-separated scenario keys")
    ap.add_argument("--json", default=str(HERE / "last-run.json"))
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the daemon's data dir/logs")
    return asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
