"""Provider API keys as the admin plane manages them: set (= rotate), test,
remove, and a status that identifies a key without revealing it.

Keys are stored via ``secrets`` in the OS keyring under the provider's
``keyring:<name>`` reference. A key is only ever an argument here: it is not
logged, returned, put in an exception message or written to the config (which
holds the reference alone).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Literal

import httpx
import keyring
import keyring.errors

from switchman_daemon import secrets
from switchman_daemon.managed_config import ConfigEditor, dump
from switchman_daemon.providers.upstream import ANTHROPIC_VERSION, Upstream
from switchman_shared.config_schema import Config, ProviderConfig

Source = Literal["keyring", "env", "none"]
_TEST_TIMEOUT_S = 15.0
_MAX_KEY_LEN = 4096


class UnknownProvider(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown provider {name!r}")


class KeyInputError(ValueError):
    """The submitted key is malformed. The message describes it, never quotes it."""


@dataclass(frozen=True, slots=True)
class KeyStatus:
    ref: str
    source: Source
    masked: str = ""
    fingerprint: str = ""

    @property
    def set(self) -> bool:
        return self.source != "none"


@dataclass(frozen=True, slots=True)
class TestResult:
    ok: bool
    message: str
    http_status: int = 0
    latency_ms: float = 0.0


def _lookup(ref: str) -> tuple[str | None, Source]:
    """The key a reference resolves to and where it came from (mirrors secrets.resolve)."""
    scheme, _, name = ref.partition(":")
    if not ref:
        return None, "none"
    if scheme == "env":
        v = os.environ.get(name)
        return (v, "env") if v else (None, "none")
    if scheme == "keyring":
        try:
            v = keyring.get_password(secrets.SERVICE, name)
        except keyring.errors.KeyringError:
            v = None
        if v:
            return v, "keyring"
        v = os.environ.get(secrets.env_fallback_name(name))
        return (v, "env") if v else (None, "none")
    raise secrets.SecretError(f"unknown key reference scheme {scheme!r}")


def status(pc: ProviderConfig) -> KeyStatus:
    value, source = _lookup(pc.key)
    if value is None:
        return KeyStatus(pc.key, "none")
    return KeyStatus(pc.key, source, secrets.mask(value), secrets.fingerprint(value))


def needs_key(pc: ProviderConfig) -> bool:
    return pc.base_url != "sim"


def _provider(config: Config, name: str) -> ProviderConfig:
    pc = config.providers.get(name)
    if pc is None:
        raise UnknownProvider(name)
    return pc


def _clean(key: str) -> str:
    key = key.strip()
    if not key:
        raise KeyInputError("the key is empty")
    if len(key) > _MAX_KEY_LEN:
        raise KeyInputError(f"the key is longer than {_MAX_KEY_LEN} characters")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise KeyInputError("the key contains whitespace or control characters")
    return key


async def set_key(editor: ConfigEditor, provider: str, key: str) -> KeyStatus:
    """Store (or replace) ``provider``'s key in the keyring. A provider without a
    keyring reference gets ``keyring:<provider>``, saved in the managed config."""
    pc = _provider(editor.config, provider)
    key = _clean(key)
    scheme, _, name = pc.key.partition(":")
    new_ref = None
    if scheme != "keyring" or not name:
        name, new_ref = provider, f"keyring:{provider}"
    # keyring backends can block (D-Bus, Keychain prompts): keep the loop free
    await asyncio.to_thread(secrets.store, name, key)
    if new_ref is not None:
        entry = {**dump_provider(pc), "key": new_ref}
        await editor.change({"providers": {provider: entry}})
        pc = _provider(editor.config, provider)
    return status(pc)


async def remove_key(editor: ConfigEditor, provider: str) -> KeyStatus:
    """Delete the keyring entry. Env-provided keys cannot be removed from here."""
    pc = _provider(editor.config, provider)
    scheme, _, name = pc.key.partition(":")
    if scheme == "keyring" and name:
        await asyncio.to_thread(secrets.remove, name)
    st = status(pc)
    if st.source == "env":
        var = name if scheme == "env" else secrets.env_fallback_name(name)
        raise secrets.SecretError(
            f"{provider}'s key comes from the environment variable {var}; "
            "unset it where the daemon is started")
    return st


def dump_provider(pc: ProviderConfig) -> dict[str, object]:
    return dump(Config(providers={"p": pc}))["providers"]["p"]


async def test_key(config: Config, upstreams: dict[str, Upstream], provider: str,
                   candidate: str | None = None) -> TestResult:
    """One cheap authenticated call: the simulator gets a 1-token request,
    Anthropic ``GET /v1/models``, OpenAI kinds ``GET {base}/models``."""
    pc = _provider(config, provider)
    up = upstreams.get(provider)
    if up is None:
        return TestResult(False, f"{provider} is not active (simulator disabled?)")
    key = _clean(candidate) if candidate is not None else _lookup(pc.key)[0]
    sim = not needs_key(pc)
    if key is None:
        if not sim:
            return TestResult(False, f"no key set for {provider}")
        key = "sim-no-key-needed"
    headers = {"content-type": "application/json"}
    headers.update(pc.headers)
    if pc.kind == "anthropic":
        headers["x-api-key"] = key
        headers["anthropic-version"] = ANTHROPIC_VERSION
    else:
        headers["authorization"] = f"Bearer {key}"
    ping = {"max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
    if sim:
        body = {**ping, "model": _first_model(config, provider)}
        method, url = "POST", up.url("anthropic" if pc.kind == "anthropic" else "chat")
    else:
        body = None
        base = up.base_url.rstrip("/")
        if pc.kind == "anthropic":
            base = base[:-3] if base.endswith("/v1") else base
            url = base + "/v1/models"
        else:
            url = base + "/models"
        method = "GET"
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=_TEST_TIMEOUT_S, trust_env=not sim) as client:
            r = await client.request(method, url, headers=headers, json=body)
    except httpx.HTTPError as e:
        # the exception's text may carry the URL but never headers
        return TestResult(False, f"cannot reach {provider} ({type(e).__name__})")
    ms = (time.perf_counter() - t0) * 1000
    # Upstream error bodies can echo part of the key, so they are not relayed.
    if 200 <= r.status_code < 300:
        return TestResult(True, f"{provider}: key accepted (HTTP {r.status_code})",
                          r.status_code, ms)
    if r.status_code in (401, 403):
        return TestResult(False, f"{provider}: key rejected (HTTP {r.status_code})",
                          r.status_code, ms)
    return TestResult(False, f"{provider}: unexpected HTTP {r.status_code}", r.status_code, ms)


def _first_model(config: Config, provider: str) -> str:
    for name, m in config.models.items():
        if m.provider == provider:
            return m.upstream_id or name
    return "test"
