"""Browser protection for the proxy port.

The proxy is an HTTP API on loopback that spends the user's budget. Any web page
the user opens can send requests to 127.0.0.1, so requests that carry browser
provenance (``Origin``, ``Referer``, ``Sec-Fetch-Site``) are refused unless the
origin is listed in ``[daemon] allowed_origins``. Agents (SDKs, CLIs) send none
of these; Claude Code's ``anthropic-dangerous-direct-browser-access`` header is
an SDK opt-in flag, not browser provenance, and is ignored here.

In local-open mode the ``Host`` header must also name a loopback host: that
stops DNS rebinding, where a page on ``evil.example`` re-points its own name at
127.0.0.1 and so makes its requests same-origin (no Origin header on a GET).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from aiohttp import web

from switchman_daemon.errors import ApiError, ErrorKind

log = logging.getLogger("switchman.ingress")

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CORS_EXPOSE = "x-request-id, x-switchman-model, retry-after"


def normalise_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in lower case with default ports dropped, or None
    when ``value`` is not an http(s) URL (e.g. ``null`` from a sandboxed frame)."""
    try:
        u = urlsplit(value.strip())
        port = u.port
    except ValueError:
        return None
    scheme, host = u.scheme.lower(), (u.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BrowserGuard:
    """Decides whether a request looks like it came from a web page."""

    def __init__(self, allowed_origins: Iterable[str], *, check_host: bool) -> None:
        self.allowed: frozenset[str] = frozenset(
            o for o in (normalise_origin(a) for a in allowed_origins) if o)
        self.allowed_hosts = frozenset(urlsplit(o).hostname or "" for o in self.allowed)
        self.check_host = check_host
        self._host_verdicts: dict[str, str | None] = {}

    def check(self, headers: Mapping[str, str]) -> tuple[str | None, str | None]:
        """(allowed browser origin or None, refusal reason or None)."""
        origin = headers.get("origin")
        referer = headers.get("referer")
        site = headers.get("sec-fetch-site")
        if origin is None and referer is None and site in (None, "none", "same-origin"):
            # the common case (an agent): no browser provenance at all
            return None, self._host_problem(headers)
        claimed = origin if origin is not None else referer
        norm = normalise_origin(claimed) if claimed is not None else None
        if norm is not None and norm in self.allowed:
            return norm, None
        if claimed is None:
            return None, f"a cross-site browser request (Sec-Fetch-Site: {site})"
        what = "Origin" if origin is not None else "Referer"
        shown = (norm or claimed)[:200]
        return None, f"browser {what} {shown!r} is not in [daemon] allowed_origins"

    def _host_problem(self, headers: Mapping[str, str]) -> str | None:
        if not self.check_host:
            return None
        host = headers.get("host")
        if not host:
            return None
        try:
            return self._host_verdicts[host]
        except KeyError:
            pass
        verdict = self._host_verdict(host)
        if len(self._host_verdicts) < 256:  # bounded: Host is client-chosen
            self._host_verdicts[host] = verdict
        return verdict

    def _host_verdict(self, host: str) -> str | None:
        name = _host_name(host)
        if _is_loopback_name(name) or name in self.allowed_hosts:
            return None
        return (f"Host {host[:200]!r} is not a loopback name; in local-open mode the "
                "proxy only answers requests addressed to this machine (DNS rebinding "
                "guard). Add the origin to [daemon] allowed_origins if this is intended")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refused = Callable[[web.Request, ApiError], web.StreamResponse]

_ALLOWED_ORIGIN = web.RequestKey("switchman_allowed_origin", str)


def guarded(guard: BrowserGuard, refuse: Refused, handler: Handler) -> Handler:
    """``handler`` behind ``guard``; ``refuse`` renders the 403 in the caller's API
    format (and counts it). A wrapper per route rather than an aiohttp middleware:
    middlewares add two coroutine layers to every request (the proxy's hot path)."""

    async def guard_then(request: web.Request) -> web.StreamResponse:
        allowed, reason = guard.check(request.headers)
        if reason is not None:
            log.warning("refused %s %s: %s", request.method, request.path, reason)
            return refuse(request, ApiError(ErrorKind.permission, "request refused: " + reason))
        if allowed is not None:
            request[_ALLOWED_ORIGIN] = allowed
            if request.method == "OPTIONS":  # CORS preflight from an allowed page
                return web.Response(status=204, headers={
                    "access-control-allow-origin": allowed,
                    "access-control-allow-methods": "GET, POST, HEAD, OPTIONS",
                    "access-control-allow-headers": request.headers.get(
                        "access-control-request-headers", "*"),
                    "access-control-max-age": "600",
                    "vary": "Origin"})
        return await handler(request)

    return guard_then


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: lets an allowed page read the answer (streams
    included, whose headers are sent inside the handler)."""
    allowed = request.get(_ALLOWED_ORIGIN)
    if allowed is not None and "access-control-allow-origin" not in response.headers:
        response.headers["access-control-allow-origin"] = allowed
        response.headers["access-control-expose-headers"] = _CORS_EXPOSE
        response.headers["vary"] = "Origin"
