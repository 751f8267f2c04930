"""Provider-faithful prompt-cache tables.

A request is flattened into an ordered list of cacheable *segments* (tool
definitions, system/instruction blocks, message blocks or items).  Each
segment position gets a chained hash of everything up to it, so "same
prefix" means byte-identical canonical content up to that point, and
cumulative token counts tell how big each prefix is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .tokens import canonical_json

TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
OPENAI_TTL = 300.0
OPENAI_MIN_PREFIX = 1024
OPENAI_INCREMENT = 128
# Real Anthropic looks back ~20 blocks from each breakpoint for an earlier hit,
# which is what lets Claude Code's moving last-message breakpoint still read.
ANTHROPIC_LOOKBACK = 20
ANTHROPIC_MAX_BREAKPOINTS = 4


@dataclass(frozen=True, slots=True)
class Segment:
    """One cacheable unit; `ttl` is set when the unit carries a breakpoint."""

    tokens: int
    digest: bytes
    ttl: str | None = None


@dataclass(slots=True)
class Prefixes:
    """Chained prefix hashes and cumulative tokens for a segment list."""

    hashes: list[bytes]
    cumulative: list[int]
    ttls: list[str | None]

    @property
    def total(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0


def segment(value: Any, tokens: int, ttl: str | None = None) -> Segment:
    return Segment(tokens, hashlib.blake2b(canonical_json(value), digest_size=16).digest(), ttl)


def chain(segments: Sequence[Segment]) -> Prefixes:
    hashes: list[bytes] = []
    cumulative: list[int] = []
    h = b""
    n = 0
    for seg in segments:
        h = hashlib.blake2b(h + seg.digest, digest_size=16).digest()
        n += seg.tokens
        hashes.append(h)
        cumulative.append(n)
    return Prefixes(hashes, cumulative, [s.ttl for s in segments])


@dataclass(slots=True)
class CacheEntry:
    tokens: int
    expires_at: float
    ttl: float


@dataclass
class CacheTable:
    """Entries keyed by (model, partition, prefix hash); expiry via `clock`."""

    clock: Callable[[], float]
    entries: dict[tuple[str, str, bytes], CacheEntry] = field(default_factory=dict)
    _ops: int = 0

    def live(self, key: tuple[str, str, bytes]) -> CacheEntry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            del self.entries[key]
            return None
        return entry

    def put(self, key: tuple[str, str, bytes], tokens: int, ttl: float) -> None:
        """Create or refresh; a refresh never shortens a longer-lived entry."""
        expires = self.clock() + ttl
        old = self.entries.get(key)
        if old is not None and old.expires_at > expires:
            old.tokens = tokens
            return
        self.entries[key] = CacheEntry(tokens, expires, max(ttl, old.ttl if old else 0.0))
        self._ops += 1
        if self._ops % 256 == 0:
            self.sweep()

    def sweep(self) -> None:
        now = self.clock()
        for key in [k for k, e in self.entries.items() if e.expires_at <= now]:
            del self.entries[key]

    def tokens_for(self, model: str) -> list[int]:
        """Token sizes of the live entries of `model` (handy in tests)."""
        now = self.clock()
        return sorted(
            e.tokens for k, e in self.entries.items() if k[0] == model and e.expires_at > now
        )

    def clear(self) -> None:
        self.entries.clear()


@dataclass(frozen=True, slots=True)
class CacheUsage:
    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def write(self) -> int:
        return self.write_5m + self.write_1h


def anthropic_apply(
    table: CacheTable, model: str, prefixes: Prefixes, min_prefix: int
) -> CacheUsage:
    """Explicit-breakpoint caching: read the longest live prefix, write the rest.

    Prefixes below `min_prefix` are silently ignored (no read, no write).
    """
    points = [
        i
        for i, ttl in enumerate(prefixes.ttls)
        if ttl is not None and prefixes.cumulative[i] >= min_prefix
    ]
    if not points:
        return CacheUsage()
    read_pos = -1
    for bp in points:
        for pos in range(bp, max(-1, bp - ANTHROPIC_LOOKBACK - 1), -1):
            if pos <= read_pos:
                break
            key = (model, "", prefixes.hashes[pos])
            if prefixes.cumulative[pos] >= min_prefix and table.live(key) is not None:
                read_pos = pos
                break
    read = prefixes.cumulative[read_pos] if read_pos >= 0 else 0
    if read_pos >= 0:
        hit = table.entries[(model, "", prefixes.hashes[read_pos])]
        table.put((model, "", prefixes.hashes[read_pos]), read, hit.ttl)
    # Tokens between the read point and each breakpoint are billed at that
    # breakpoint's TTL; every breakpoint prefix becomes (or stays) an entry.
    w5 = w1 = 0
    done = read
    for bp in points:
        ttl = prefixes.ttls[bp] or "5m"
        size = prefixes.cumulative[bp]
        if size > done:
            if ttl == "1h":
                w1 += size - done
            else:
                w5 += size - done
            done = size
        table.put((model, "", prefixes.hashes[bp]), size, TTL_SECONDS[ttl])
    return CacheUsage(read=read, write_5m=w5, write_1h=w1)


def openai_apply(
    table: CacheTable, model: str, prefixes: Prefixes, partition: str, ttl: float = OPENAI_TTL
) -> int:
    """Automatic caching; returns cached_tokens (128-token steps from 1024)."""
    if prefixes.total < OPENAI_MIN_PREFIX:
        return 0
    matched = 0
    for pos in range(len(prefixes.hashes) - 1, -1, -1):
        size = prefixes.cumulative[pos]
        if size < OPENAI_MIN_PREFIX:
            break
        key = (model, partition, prefixes.hashes[pos])
        if table.live(key) is not None:
            matched = size
            break
    # Writes are free and unreported: every boundary is stored or refreshed.
    for pos, size in enumerate(prefixes.cumulative):
        if size >= OPENAI_MIN_PREFIX:
            table.put((model, partition, prefixes.hashes[pos]), size, ttl)
    if matched < OPENAI_MIN_PREFIX:
        return 0
    return OPENAI_MIN_PREFIX + (matched - OPENAI_MIN_PREFIX) // OPENAI_INCREMENT * OPENAI_INCREMENT
