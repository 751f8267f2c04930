"""Where the daemon's per-request CPU goes: py-spy samples the daemon while the
benchmark's load generator drives one or more scenarios at it.

    .venv/bin/pip install py-spy
    .venv/bin/python tests/bench/profile_daemon.py --scenarios small_c32,large_c32 \\
        [--seconds 8] [--out tests/bench/profile-daemon.txt] [--top 40]

Writes py-spy's collapsed stacks (``--out``; load it in speedscope.app or
flamegraph.pl) and prints the top functions by self and by inclusive samples.
Same setup as bench_proxy.py: fake upstream + load on CPU 0, daemon on CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_proxy as bp


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"
    name, _, loc = frame.partition(" (")
    path = loc.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{name}"


def summarise(collapsed: Path, top: int) -> str:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        k = int(n)
        total += k
        frames = [_frame_name(f) for f in stack.split(";")]
        self_c[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    out = [f"{total} samples\n", f"## top {top} by self time"]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in self_c.most_common(top)]
    out += ["", f"## top {top} by inclusive time (switchman frames)"]
    ours = [(f, n) for f, n in incl.most_common() if f.startswith(("daemon/", "shared/"))]
    out += [f"{100 * n / total:5.1f}%  {f}" for f, n in ours[:top]]
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    if bp.PIN:
        bp.os.sched_setaffinity(0, {bp.LOAD_CPU})
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    want = a.scenarios.split(",")
    scenarios = [s for s in bp.SCENARIOS if s.key in want]
    bodies = bp.make_bodies()
    tmp = Path(tempfile.mkdtemp(prefix="switchman-prof-"))
    procs: list[bp.Proc] = []
    try:
        up, uport = bp.start_ready_printer(
            "upstream", [sys.executable, str(bp.HERE / "fake_upstream.py")], bp.LOAD_CPU, tmp)
        procs.append(up)
        dm, dport = await bp.start_daemon(tmp, uport)
        procs.append(dm)
        base = f"http://127.0.0.1:{dport}"
        for sc in scenarios:  # warm up
            await bp.run_scenario(base, sc, bodies[sc.body], None, n=200, max_s=3, warm=0)
        out = Path(a.out)
        spy = subprocess.Popen([pyspy, "record", "-p", str(dm.pid), "-r", str(a.rate),
                                "-d", str(int(a.seconds * len(scenarios)) + 1), "-f", "raw",
                                "-o", str(out), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await asyncio.sleep(1.0)
        for sc in scenarios:
            r = await bp.run_scenario(base, sc, bodies[sc.body], dm.pid, n=10**9,
                                      max_s=a.seconds, warm=0)
            s = bp.summarise(r)
            print(f"{sc.key}: n={s['n']} rps={s['rps']:.0f} p50={bp.fmt_ms(s['lat_p50'])} ms "
                  f"cpu={s['cpu_ms_per_req'] or 0:.2f} ms/req errors={s['errors']}")
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not out.exists():
            print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
            return 1
        print(summarise(out, a.top))
        print(f"\ncollapsed stacks: {out}")
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="small_c32")
    ap.add_argument("--seconds", type=float, default=8.0, help="per scenario")
    ap.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default=str(bp.HERE / "profile-daemon.txt"))
    return asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
