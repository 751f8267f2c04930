"""Provider adapters: one pooled aiohttp session per provider.

aiohttp rather than httpx on this leg: PERF-BASELINE.md measures an httpx
upstream client at 5-20x the CPU per request of aiohttp's (httpcore scans every
pooled connection per request), which alone would break the data plane's
throughput target.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from switchman_daemon import secrets
from switchman_shared.config_schema import DaemonSettings, ProviderConfig

ANTHROPIC_VERSION = "2023-06-01"

# Client headers that reach an Anthropic upstream unchanged (the LLM-gateway
# protocol requires anthropic-beta and anthropic-version to be forwarded).
_ANTHROPIC_FORWARD = ("anthropic-version", "anthropic-beta", "x-claude-code-session-id")
_OPENAI_FORWARD = ("openai-beta", "openai-organization", "openai-project")

_PATHS = {
    "anthropic": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
    "chat": "/chat/completions",
    "responses": "/responses",
}


@dataclass(slots=True)
class Upstream:
    name: str
    config: ProviderConfig
    base_url: str
    session: aiohttp.ClientSession
    _key: tuple[int, float, str | None] | None = None  # (secrets generation, time, key)
    _urls: dict[str, str] | None = None

    def api_key(self) -> str | None:
        """The provider key, cached: a keyring lookup per request would cost
        milliseconds (D-Bus on Linux). Re-read when a key is stored or removed,
        and every 5 minutes for environment changes."""
        now = time.monotonic()
        k = self._key
        if k is None or k[0] != secrets.generation or now - k[1] > 300:
            key = secrets.resolve(self.config.key)
            if key is None and self.config.base_url == "sim":
                key = "sim-no-key-needed"  # the simulator wants a key, like a provider
            self._key = k = (secrets.generation, now, key)
        return k[2]

    @property
    def kind(self) -> str:
        return self.config.kind

    def formats(self) -> list[str]:
        return self.config.wire_formats()

    def url(self, endpoint: str) -> str:
        urls = self._urls
        if urls is None:
            urls = self._urls = {e: self._url(e) for e in _PATHS}
        return urls[endpoint]

    def _url(self, endpoint: str) -> str:
        base = self.base_url.rstrip("/")
        if endpoint in ("anthropic", "count_tokens") and base.endswith("/v1"):
            base = base[:-3]
        return base + _PATHS[endpoint]

    def headers(self, fmt: str, client_headers: Mapping[str, str] | None) -> dict[str, str]:
        """Upstream headers: the provider's auth plus forwarded protocol headers.
        Client credentials are never forwarded."""
        h: dict[str, str] = {"content-type": "application/json"}
        h.update(self.config.headers)
        key = self.api_key()
        if fmt in ("anthropic", "count_tokens"):
            if client_headers is not None:
                for name in _ANTHROPIC_FORWARD:
                    v = client_headers.get(name)
                    if v:
                        h[name] = v
            h.setdefault("anthropic-version", ANTHROPIC_VERSION)
            if key:
                h["x-api-key"] = key
        else:
            if client_headers is not None:
                for name in _OPENAI_FORWARD:
                    v = client_headers.get(name)
                    if v:
                        h[name] = v
            if key:
                h["authorization"] = f"Bearer {key}"
        return h

    async def post(
        self, endpoint: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        return await self.session.post(self.url(endpoint), data=body, headers=headers)


def make_session(cfg: ProviderConfig, settings: DaemonSettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=cfg.max_connections,
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.upstream_connect_timeout_s,
        sock_read=settings.upstream_read_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # the daemon sets every header itself; no default User-Agent leak
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
    )
