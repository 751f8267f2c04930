"""Logging: text or JSON lines, request ids, and one access line per request.

Inside a proxied request every log record carries that request's id (the
``x-request-id`` the client sees) through a contextvar: aiohttp runs each
request in its own task, so the id never bleeds into another request.

The access line holds ids, models, status, timing, token counts and cost;
never a request or response body, a header value or a key.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

if TYPE_CHECKING:
    from switchman_daemon.proxy.flow import Flow

LogFormat = Literal["text", "json"]

request_id: ContextVar[str | None] = ContextVar("switchman_request_id", default=None)

access_log = logging.getLogger("switchman.access")

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attributes that are not user fields (what ``extra=`` may add)
_STD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def new_request_id() -> str:
    # not a secret, just unique (same scheme as Flow.id)
    return f"{random.getrandbits(128):032x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id (inside a
    request), exc (with a traceback), plus any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        for k, v in record.__dict__.items():
            if k not in _STD and k != "request_id" and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic text line, with ``[request id]`` when logged inside a request."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id.get()
        if rid and not getattr(record, "access", False):
            head, sep, rest = line.partition(": ")
            return f"{head} [{rid[:12]}]{sep}{rest}" if sep else line
        return line


def setup(level: str = "info", fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger for the daemon (replaces earlier handlers)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler], force=True)
    # APScheduler narrates every job run at INFO; keep the daemon log readable
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _clip(s: str | None, n: int = 120) -> str:
    return "-" if not s else s if len(s) <= n else s[:n] + "…"


def log_access(rid: str, client_format: str, requested: str | None, served: str | None,
               status: int | str, latency_ms: float, *, ttfb_ms: float | None = None,
               tokens: tuple[int, int, int, int] = (0, 0, 0, 0), cost_usd: float = 0.0,
               outcome: str = "") -> None:
    """Emit the INFO access line (skipped cheaply when INFO is off)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    t_in, t_cr, t_cw, t_out = tokens
    req, srv = _clip(requested), served or "-"
    access_log.info(
        "%s %s %s->%s %s %.1fms tok in=%d cache_read=%d cache_write=%d out=%d $%.6f%s",
        rid, client_format, req, srv, status, latency_ms, t_in, t_cr, t_cw, t_out, cost_usd,
        f" {outcome}" if outcome else "",
        extra={"access": True, "request_id": rid, "client_format": client_format,
               "requested_model": req, "served_model": srv, "status": status,
               "latency_ms": round(latency_ms, 2),
               "ttfb_ms": round(ttfb_ms, 2) if ttfb_ms is not None else None,
               "input_tokens": t_in, "cache_read_tokens": t_cr, "cache_write_tokens": t_cw,
               "output_tokens": t_out, "cost_usd": cost_usd, "outcome": outcome})


class AccessLogAddon:
    """Writes the access line when a flow closes (on the event loop, in the
    request's own context, so the formatter sees its id)."""

    def flow_opened(self, flow: Flow) -> None:
        pass

    def flow_closed(self, flow: Flow) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        u = flow.usage
        d = flow.decision
        log_access(
            flow.id, flow.client_format, flow.signals.requested_model,
            flow.served_model or (d.model.name if d else None),
            flow.http_status if flow.http_status is not None else flow.status,
            flow.latency_ms or 0.0, ttfb_ms=flow.ttfb_ms,
            tokens=(u.input_tokens, u.cache_read_tokens,
                    u.cache_write_tokens + u.cache_write_1h_tokens, u.output_tokens),
            cost_usd=flow.cost_usd, outcome="" if flow.status == "ok" else flow.status)
