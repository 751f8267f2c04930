"""Prometheus metrics for the proxy port (``GET /metrics``).

Hand-written text exposition (format 0.0.4) rather than prometheus_client: the
daemon is single-threaded on its event loop, so the hot path is a few plain
dict increments with no locks, and all formatting happens at scrape time. The
client library would add a dependency plus a lock per sample for nothing.

Labels only ever take bounded values: client formats, configured model/pool
names, HTTP status codes and error kinds. The client-chosen requested model is
never a label (unbounded cardinality).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp import web

from switchman_daemon import __version__
from switchman_daemon.errors import kind_for_status

if TYPE_CHECKING:
    from switchman_daemon.proxy.flow import Flow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NS = "switchman_"

# Seconds. Errors and cached short turns answer in milliseconds; long agent
# turns stream for minutes.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                                      5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFB_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                   10.0, 30.0, 60.0)

_TOKEN_KINDS = ("input", "cache_read", "cache_write", "output")


class _Hist:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; last = +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True))


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


def error_kind(flow: Flow) -> str | None:
    """The error kind a closed flow counts as, or None (success, client gone)."""
    if flow.status in ("ok", "cancelled"):
        return None
    st = flow.http_status
    if st is None:
        return "internal"
    if st == 200:  # broke after the first byte reached the client
        return "stream_interrupted"
    return kind_for_status(st).value


class Metrics:
    """Addon: counts flows at open/close; ``render()`` formats on scrape."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.in_flight = 0
        self.requests: dict[tuple[str, str, str], int] = {}
        self.errors: dict[str, int] = {}
        self.tokens: dict[str, list[int]] = {}  # model -> [input, cache_read, write, out]
        self.spend: dict[str, float] = {}
        self.baseline_usd = 0.0
        self.latency: dict[str, _Hist] = {}
        self.ttfb: dict[str, _Hist] = {}

    # ---- Addon protocol (event loop, hot path: dict updates only) -------------------

    def flow_opened(self, flow: Flow) -> None:
        self.in_flight += 1

    def flow_closed(self, flow: Flow) -> None:
        self.in_flight -= 1
        d = flow.decision
        model = flow.served_model or (d.model.name if d else None) or "none"
        status = "cancelled" if flow.status == "cancelled" and flow.http_status is None \
            else str(flow.http_status or 0)
        key = (flow.client_format, model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        kind = error_kind(flow)
        if kind is not None:
            self.errors[kind] = self.errors.get(kind, 0) + 1
        u = flow.usage
        t = self.tokens.get(model)
        if t is None:
            t = self.tokens[model] = [0, 0, 0, 0]
        t[0] += u.input_tokens
        t[1] += u.cache_read_tokens
        t[2] += u.cache_write_tokens + u.cache_write_1h_tokens
        t[3] += u.output_tokens
        self.spend[model] = self.spend.get(model, 0.0) + flow.cost_usd
        base = flow.notes.get("baseline_cost_usd")
        self.baseline_usd += flow.cost_usd if base is None else base
        if flow.latency_ms is not None:
            h = self.latency.get(model)
            if h is None:
                h = self.latency[model] = _Hist(LATENCY_BUCKETS)
            h.observe(flow.latency_ms / 1000.0)
        if flow.ttfb_ms is not None:
            h = self.ttfb.get(model)
            if h is None:
                h = self.ttfb[model] = _Hist(TTFB_BUCKETS)
            h.observe(flow.ttfb_ms / 1000.0)

    def rejected(self, client_format: str, status: int, kind: str) -> None:
        """A request refused before it became a flow (auth, shape, browser origin)."""
        key = (client_format, "none", str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # ---- scrape ---------------------------------------------------------------------

    def render(self) -> bytes:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> str:
            full = _NS + name
            out.append(f"# HELP {full} {help_}")
            out.append(f"# TYPE {full} {kind}")
            return full

        n = family("build_info", "gauge", "Switchman version (always 1).")
        out.append(f'{n}{{version="{_esc(__version__)}"}} 1')
        n = family("start_time_seconds", "gauge", "Daemon start, Unix time.")
        out.append(f"{n} {_num(self.started_at)}")
        n = family("requests_in_flight", "gauge", "Proxied requests being served now.")
        out.append(f"{n} {self.in_flight}")

        n = family("requests_total", "counter",
                   "Requests by client API format, served model and HTTP status.")
        names = ("client_format", "served_model", "status")
        for key, v in sorted(self.requests.items()):
            out.append(f"{n}{{{_labels(names, key)}}} {v}")
        n = family("errors_total", "counter", "Failed requests by error kind.")
        for kind, v in sorted(self.errors.items()):
            out.append(f'{n}{{kind="{_esc(kind)}"}} {v}')
        n = family("tokens_total", "counter", "Tokens by served model and kind.")
        for model, t in sorted(self.tokens.items()):
            for kind, v in zip(_TOKEN_KINDS, t, strict=True):
                out.append(f'{n}{{model="{_esc(model)}",kind="{kind}"}} {v}')
        n = family("spend_usd_total", "counter", "Spend in USD by served model.")
        for model, v in sorted(self.spend.items()):
            out.append(f'{n}{{model="{_esc(model)}"}} {_num(v)}')
        n = family("baseline_usd_total", "counter",
                   "What the same requests would have cost on the baseline model, USD.")
        out.append(f"{n} {_num(self.baseline_usd)}")
        n = family("cache_hit_ratio", "gauge",
                   "Share of prompt tokens read from the provider cache, by model.")
        for model, t in sorted(self.tokens.items()):
            prompt = t[0] + t[1] + t[2]
            out.append(f'{n}{{model="{_esc(model)}"}} {_num(t[1] / prompt if prompt else 0.0)}')
        self._hist(out, family("request_latency_seconds", "histogram",
                               "Request latency, first byte in to last byte out."), self.latency)
        self._hist(out, family("ttfb_seconds", "histogram",
                               "Time to the first response byte."), self.ttfb)
        out.append("")
        return "\n".join(out).encode()

    @staticmethod
    def _hist(out: list[str], name: str, hists: dict[str, _Hist]) -> None:
        for model, h in sorted(hists.items()):
            m = _esc(model)
            acc = 0
            edges: Iterable[float] = (*h.buckets, float("inf"))
            for le, c in zip(edges, h.counts, strict=True):
                acc += c
                out.append(f'{name}_bucket{{served_model="{m}",le="{_num(le)}"}} {acc}')
            out.append(f'{name}_sum{{served_model="{m}"}} {_num(h.sum)}')
            out.append(f'{name}_count{{served_model="{m}"}} {h.count}')


METRICS: web.AppKey[Metrics] = web.AppKey("switchman_metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: no team key needed (it holds no secrets and no bodies);
    the browser guard still applies, like on every route."""
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE})
