"""Markdown table, target checks and the cost-quality Pareto plot (PNG).

The plot uses matplotlib when installed (``pip install switchman[eval]``);
otherwise a tiny stdlib PNG writer draws the same points and lines.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path
from typing import Any


def markdown(out: dict[str, Any]) -> str:
    res = out["results"]
    strong = next(r for r in res if r["name"] == "always-strongest")
    lines = [
        "| strategy | cost $ | vs strongest | quality | quality vs strongest (± SE) | cache-hit | "
        "latency p50 / p95 (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res:
        lines.append(
            f"| {r['name']} | {r['cost']:.2f} | {100 * (r['cost'] / strong['cost'] - 1):+.1f}% "
            f"| {r['quality']:.4f} | {100 * r['quality'] / strong['quality']:.1f}%{_se(r, strong)} "
            f"| {100 * r['cache_hit']:.1f}% | {r['latency_p50'] / 1000:.1f} / "
            f"{r['latency_p95'] / 1000:.1f} |")
    tr = out["traces"]
    head = (f"{tr['sessions']} sessions, {tr['calls']} calls ({tr['calls_per_session']}/session), "
            f"{tr['tasks']} tasks, {tr['prompt_tokens_per_call']:,} prompt tokens/call, "
            f"{tr['output_tokens_per_call']} output tokens/call; pool {', '.join(out['pool'])}; "
            f"objective {out['objective']}; quality = {out['quality_source']}.")
    tk = out.get("tasks") or {}
    if tk.get("tiers"):
        head += " Tiers: " + ", ".join(f"{p} = {k.split('/', 1)[-1]}"
                                        for p, k in tk["tiers"].items()) + "."
    notes = [f"{r['name']}: {k['refreshes']} keep-alive refreshes (${k['cost']:.2f}, "
             f"included); {k['kept_warm']} returns found the cache warm thanks to them; "
             f"{k['declined']} declined by the expected-value gate"
             for r in res if (k := r.get("keepalive"))]
    checks = ["", *notes, "", "Targets:"]
    for c in out["targets"]:
        extra = ", ".join(f"{k}={v}" for k, v in c.items() if k not in ("target", "pass"))
        checks.append(f"- {'PASS' if c['pass'] else 'FAIL'}: {c['target']} ({extra})")
    return "\n".join([head, "", *lines, *checks])


def _se(r: dict[str, Any], strong: dict[str, Any]) -> str:
    se = r.get("quality_se")
    return f" ± {100 * se / strong['quality']:.1f}" if se is not None and strong["quality"] else ""


def plot(out: dict[str, Any], path: str | Path) -> str:
    """Cost (relative to always-strongest) vs quality; returns the backend used."""
    res = {r["name"]: r for r in out["results"]}
    base = res["always-strongest"]["cost"] or 1.0
    series: dict[str, list[tuple[float, float]]] = {}
    for name, pts in (out.get("sweep") or {}).items():
        series[name] = sorted((p["cost"] / base, p["quality"]) for p in pts)
    points = {n: (r["cost"] / base, r["quality"]) for n, r in res.items()}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _png_plot(series, points, Path(path))
        return "stdlib"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{name} sweep")
    # single runs: a marker each, named in the legend (labels on the points collide)
    marks = "sDv^P*XhpH"
    for k, (name, (x, y)) in enumerate(points.items()):
        ax.scatter([x], [y], marker=marks[k % len(marks)], s=36, zorder=3, edgecolors="black",
                   linewidths=0.5, label=name)
    ax.set_xlabel("cost relative to always-strongest")
    ax.set_ylabel("mean task quality (recorded outcome)" if out.get("quality_source", "")
                  .startswith("recorded") else "mean task success probability")
    ax.set_title("Switchman eval: cost-quality Pareto")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _png_plot(series: dict[str, list[tuple[float, float]]],
              points: dict[str, tuple[float, float]], path: Path) -> None:
    """A bare line/point plot as an RGB PNG, stdlib only (no axes labels)."""
    w, h, pad = 640, 400, 30
    img = bytearray(b"\xff" * (w * h * 3))
    allp = [p for s in series.values() for p in s] + list(points.values())
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)

    def xy(p: tuple[float, float]) -> tuple[int, int]:
        x = pad + int((p[0] - x0) / ((x1 - x0) or 1) * (w - 2 * pad))
        y = h - pad - int((p[1] - y0) / ((y1 - y0) or 1) * (h - 2 * pad))
        return x, y

    def dot(x: int, y: int, c: tuple[int, int, int], r: int = 1) -> None:
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                if 0 <= x + dx < w and 0 <= y + dy < h:
                    i = ((y + dy) * w + x + dx) * 3
                    img[i:i + 3] = bytes(c)

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    for k, pts in enumerate(series.values()):
        c = colours[k % len(colours)]
        for a, b in itertools.pairwise(pts):
            (ax, ay), (bx, by) = xy(a), xy(b)
            n = max(abs(bx - ax), abs(by - ay), 1)
            for s in range(n + 1):
                dot(ax + (bx - ax) * s // n, ay + (by - ay) * s // n, c, 0)
    for p in points.values():
        dot(*xy(p), (0, 0, 0), 3)
    raw = b"".join(b"\x00" + bytes(img[y * w * 3:(y + 1) * w * 3]) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0,
                                                                        0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
