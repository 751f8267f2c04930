"""The daemon's TOML configuration, as pydantic models.

The daemon loads ``defaults/default.toml`` (the built-in simulated providers and
their pool) and merges the user's file over it. Both the daemon and the console
import these types; nothing here imports either.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ProviderKind = Literal["anthropic", "openai", "openai-compatible"]


class DaemonSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8787
    max_body_mb: float = 32.0
    # Seconds to wait for an upstream's first byte and between streamed chunks.
    upstream_connect_timeout_s: float = 10.0
    upstream_read_timeout_s: float = 600.0
    # Retries of 429/529/5xx before the first byte reaches the client, then fallback.
    max_retries: int = 2
    retry_max_wait_s: float = 4.0
    # Without team keys, any client credential is accepted (loopback only).
    local_open: bool = True
    strip_attribution_header: bool = True
    # Browser origins (scheme://host[:port]) allowed to call the proxy. Any other
    # request carrying Origin/Referer is refused: a web page must not be able to
    # drive a loopback API with the user's budget.
    allowed_origins: list[str] = Field(default_factory=list)
    # PEM certificate chain and private key: serve HTTPS directly (else put a
    # TLS-terminating reverse proxy in front when binding beyond loopback).
    tls_cert: str = ""
    tls_key: str = ""
    # "text" (human) or "json" (one object per line, with request ids).
    log_format: Literal["text", "json"] = "text"


class SimSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    # Multiplies every simulated delay; 0 turns pacing off (tests), 1 is realistic.
    time_scale: float = 1.0
    # Fixed port for the simulator's loopback server (0 = pick a free one).
    port: int = 0


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: ProviderKind
    # "sim" means the built-in simulator the daemon starts on loopback.
    base_url: str
    # Where the provider key lives: "keyring:<name>", "env:<VAR>", or "" (none needed).
    key: str = ""
    # Extra headers sent upstream on every request (never secrets; use ``key``).
    headers: dict[str, str] = Field(default_factory=dict)
    # Wire formats this upstream speaks; defaults by kind.
    formats: list[Literal["anthropic", "chat", "responses"]] | None = None
    max_connections: int = 256
    # Requests in flight to this provider at once (a stream holds its slot to
    # the end); unset = unlimited. At the limit a request goes to its next
    # candidate on another provider, else waits up to [routing] queue_timeout_s.
    max_concurrency: int | None = Field(None, ge=1)

    def wire_formats(self) -> list[str]:
        if self.formats:
            return list(self.formats)
        return {
            "anthropic": ["anthropic"],
            "openai": ["responses", "chat"],
            "openai-compatible": ["chat"],
        }[self.kind]


class DeploymentConfig(BaseModel):
    """One more place serving a model (same weights, the model's prices and
    quality): e.g. the model's own provider plus an OpenRouter route."""

    model_config = ConfigDict(extra="forbid")
    provider: str
    # What this provider calls the model (default: the model's own upstream id).
    upstream_id: str | None = None
    # Share of cache sessions sent here, relative to the other deployments' weights.
    weight: float = Field(1.0, gt=0)


class ModelConfig(BaseModel):
    """A model in the pool. Unset prices/limits come from the catalog entry
    ``catalog`` (default: the model's upstream id, then its name)."""

    model_config = ConfigDict(extra="forbid")
    provider: str
    upstream_id: str | None = None
    catalog: str | None = None
    enabled: bool = True
    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write_5m: float | None = None
    cache_write_1h: float | None = None
    min_cache_prefix: int | None = None
    context_window: int | None = None
    max_output: int | None = None
    tools: bool | None = None
    vision: bool | None = None
    thinking: bool | None = None
    quality: float | None = None
    # Deployments: the model's own provider/upstream_id is the first (weight
    # ``weight``, default 1); ``deployments`` adds more. Each cache session
    # sticks to one of them (weighted rendezvous hashing); the others are its
    # first fallbacks.
    weight: float | None = Field(None, gt=0)
    deployments: list[DeploymentConfig] | None = None
    # Give up on an upstream whose first byte takes longer than this and fall
    # back (overrides [routing] first_byte_timeout_s for this model).
    first_byte_timeout_s: float | None = Field(None, gt=0)


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str]
    default: bool = False


class Objective(BaseModel):
    """Weights the console's sliders set; routing issue #3 consumes them."""

    model_config = ConfigDict(extra="forbid")
    cost: float = Field(0.5, ge=0, le=1)
    quality: float = Field(0.5, ge=0, le=1)
    latency: float = Field(0.2, ge=0, le=1)


class RoutingRule(BaseModel):
    """A deterministic rule applied before the scored choice: the first rule
    whose (glob) matches all hold sends the request to ``route_to`` — a model
    (pinned) or a pool (scored within it). Empty matches match anything."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    match_model: str = ""  # glob on the requested model
    match_client: str = ""  # glob on the user agent
    match_role: Literal["", "main", "subagent", "utility", "compaction"] = ""
    route_to: str


class SemanticRoute(BaseModel):
    """Tasks whose text resembles one of ``examples`` (cosine similarity of
    hashed word n-grams >= ``threshold``) go to ``route_to``."""

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    examples: list[str] = Field(min_length=1)
    route_to: str
    threshold: float = Field(0.5, gt=0, le=1)


# Refusal and hedging openers the cascade rejects a cheap answer for (searched,
# case-insensitively, in the answer's first 300 characters; curly apostrophes
# are read as straight ones). Only answers without tool calls are checked.
_NEG = r"(?:can't|cannot|can not|won't|will not|unable to|not able to)"
DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    rf"^(?:(?:i'm|i am) sorry|sorry|unfortunately),? (?:but )?i(?:'m| am)? {_NEG}",
    rf"^i(?:'m| am)? {_NEG} (?:help|assist|comply|provide|do that|fulfil|complete|answer)",
    r"\bas an ai(?: language)? model\b",
    r"^(?:i'm|i am) not (?:sure|certain)\b",
    r"^i (?:don't|do not) (?:know|have enough (?:information|context))\b",
)


class CascadeConfig(BaseModel):
    """Opt-in cascade for non-streaming requests (FrugalGPT-style): the
    cheapest eligible ranked candidate answers first; an answer failing the
    acceptance check (empty, truncated, refusal, bad tool call, upstream
    error) is withheld and the router's chosen model answers instead. Never
    for streams: a streamed answer cannot be withdrawn. The request header
    ``x-switchman-cascade: on|off`` overrides ``enabled``."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    # Cheap models whose predicted quality for the request is below this are not tried.
    quality_floor: float = Field(0.5, ge=0, le=1)
    # Try a cheap model only if its predicted cost is at most this share of the
    # chosen model's: an escalation pays both, so a small saving is not worth it.
    max_cost_ratio: float = Field(0.5, gt=0, le=1)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS))

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"refusal pattern {p!r}: {e}") from None
        return v


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    objective: Objective = Field(default_factory=Objective)
    # When the requested model is itself in a pool, serve it as asked.
    honour_requested_model: bool = True
    # Candidates tried in order when the chosen model is rate-limited or down.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    # What savings are measured against (default: the default pool's strongest model).
    baseline: str = ""
    rules: list[RoutingRule] = Field(default_factory=list)
    semantic: list[SemanticRoute] = Field(default_factory=list)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    # Cooldown: a deployment (model on one provider) failing with 429/5xx/a
    # timeout/a connection error ``cooldown_failures`` times within
    # ``cooldown_window_s`` is skipped by new requests for ``cooldown_s`` (a
    # 429/503/529 with Retry-After: for that long). 0 failures = off. A
    # cooling deployment is still tried when nothing else is left.
    cooldown_failures: int = Field(3, ge=0)
    cooldown_window_s: float = Field(60.0, gt=0)
    cooldown_s: float = Field(30.0, ge=0)
    # Latency fallback: an upstream whose first byte (headers, or a stream's
    # first event) takes longer is abandoned for the next candidate, before
    # anything reaches the client. Unset = off; per model first_byte_timeout_s.
    first_byte_timeout_s: float | None = Field(None, gt=0)
    # How long a request waits for a slot when every candidate's provider is
    # at its max_concurrency, before an overloaded error.
    queue_timeout_s: float = Field(10.0, ge=0)
    # Refresh an idle session's prompt cache just before it expires when the
    # expected saving beats the refresh (daemon/routing/keepalive.py; sent by
    # daemon/keepalive_runner.py, simulated by `switchman eval` and the replay).
    keepalive: bool = False


class LedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # SQLAlchemy URL; empty = SQLite file in the data dir.
    url: str = ""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    sim: SimSettings = Field(default_factory=SimSettings)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    pools: dict[str, PoolConfig] = Field(default_factory=dict)
    # Requested model name (glob patterns allowed) -> model or pool name.
    aliases: dict[str, str] = Field(default_factory=dict)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for name in v:
            if not name or "*" in name:
                raise ValueError(f"invalid model name {name!r}")
        return v
