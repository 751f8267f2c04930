"""Team keys: virtual API keys for people and agents, checked on every request.

A key is ``sk-sw-`` + 40 base62 characters (~238 bits), shown once at issue. The
database keeps HMAC-SHA256(pepper, key) — a fast hash is enough for keys this
random (nobody can brute-force 238 bits), and the per-install pepper means a leaked
table alone cannot even confirm a guessed key — plus a short prefix for display.

``verify`` is the hot path and never touches the database: all keys are held in
memory by hash (a team has tens of keys, not millions). Issue/revoke update that
map at once, so a revoked key fails on its very next request. ``reload()`` picks up
changes another daemon made to a shared database. ``touch`` only records the time
in memory; ``flush_touches`` (a job, and shutdown) writes them in one batch.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from switchman_daemon.store_tables import ensure_admin_tables, get_or_create_secret, team_keys

KEY_PREFIX = "sk-sw-"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LEN = 40
_DISPLAY_LEN = len(KEY_PREFIX) + 6
_PEPPER_KEY = "team_key_pepper"


@dataclass(frozen=True, slots=True)
class TeamKeyInfo:
    id: str
    name: str
    owner: str
    prefix: str  # e.g. "sk-sw-a1B2c3"; safe to show
    pools: tuple[str, ...] | None  # None = any pool or model
    expires_at: float | None
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def allows(self, pool_or_model: str) -> bool:
        """Whether this key may ask for ``pool_or_model`` (the requested name)."""
        return self.pools is None or pool_or_model in self.pools

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "prefix": self.prefix,
            "pools": list(self.pools) if self.pools is not None else None,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


def _random_body(n: int = _BODY_LEN) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The team key a client sent: ``x-api-key`` (Anthropic SDKs) or
    ``Authorization: Bearer`` (OpenAI SDKs). None when neither holds an ``sk-sw-`` key."""
    key = headers.get("x-api-key")
    if not key:
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    return key if key and key.startswith(KEY_PREFIX) else None


class TeamKeys:
    """Issue, list, revoke and verify team keys. ``verify``/``touch`` are safe on the
    event loop (no I/O); the others do a small synchronous DB write."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        *,
        pepper: bytes | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        ensure_admin_tables(engine)
        # A pepper passed in (e.g. from the OS keyring) wins; else one per database.
        self._pepper = pepper if pepper is not None else get_or_create_secret(engine, _PEPPER_KEY)
        self._lock = threading.Lock()  # serialises writers; readers see whole dict swaps
        # hash -> (stored hash, info); the stored copy feeds compare_digest
        self._by_hash: dict[str, tuple[str, TeamKeyInfo]] = {}
        self._hash_of: dict[str, str] = {}  # id -> hash
        self._touched: dict[str, float] = {}
        self.reload()

    def _hash(self, plaintext: str) -> str:
        # hmac.digest: the one-shot C path, ~10x faster than hmac.new(...).hexdigest()
        return hmac.digest(self._pepper, plaintext.encode(), "sha256").hex()

    # ---- hot path -------------------------------------------------------------

    def verify(self, plaintext: str) -> TeamKeyInfo | None:
        """The key's info if ``plaintext`` is a live (not revoked, not expired) key."""
        if not plaintext.startswith(KEY_PREFIX):
            return None
        digest = self._hash(plaintext)
        entry = self._by_hash.get(digest)
        # The dict lookup already matched; compare_digest keeps the final equality
        # check constant-time should the lookup structure ever change.
        if entry is None or not hmac.compare_digest(entry[0], digest):
            return None
        info = entry[1]
        return info if info.active(self.clock()) else None

    def touch(self, key_id: str) -> None:
        """Note a use now; written to the database by ``flush_touches``."""
        self._touched[key_id] = self.clock()

    # ---- admin ----------------------------------------------------------------

    def issue(
        self,
        name: str,
        owner: str,
        pools: list[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[TeamKeyInfo, str]:
        """Create a key. Returns (info, plaintext); the plaintext is never stored."""
        if not name.strip():
            raise ValueError("a team key needs a name")
        now = self.clock()
        if expires_at is not None and expires_at <= now:
            raise ValueError("expires_at is in the past")
        plaintext = KEY_PREFIX + _random_body()
        info = TeamKeyInfo(
            id="tk_" + uuid.uuid4().hex[:16],
            name=name.strip(),
            owner=owner,
            prefix=plaintext[:_DISPLAY_LEN],
            pools=tuple(pools) if pools is not None else None,
            expires_at=expires_at,
            created_at=now,
        )
        digest = self._hash(plaintext)
        with self._lock:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(team_keys).values(
                        id=info.id,
                        name=info.name,
                        owner=info.owner,
                        prefix=info.prefix,
                        key_hash=digest,
                        pools=json.dumps(list(info.pools)) if info.pools is not None else None,
                        expires_at=info.expires_at,
                        created_at=info.created_at,
                    )
                )
            self._hash_of[info.id] = digest
            self._by_hash[digest] = (digest, info)
        return info, plaintext

    def revoke(self, key_id: str) -> bool:
        """Revoke a key (effective for the next request). False if unknown or already
        revoked."""
        now = self.clock()
        with self._lock:
            with self.engine.begin() as conn:
                changed = conn.execute(
                    sa.update(team_keys)
                    .where(team_keys.c.id == key_id, team_keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                ).rowcount
            digest = self._hash_of.get(key_id)
            if digest is not None and digest in self._by_hash:
                self._by_hash[digest] = (digest, replace(self._by_hash[digest][1], revoked_at=now))
        return bool(changed)

    def get(self, key_id: str) -> TeamKeyInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(team_keys).where(team_keys.c.id == key_id)
            ).mappings().one_or_none()
        return self._with_touch(_info(row)) if row is not None else None

    def list(self, include_revoked: bool = True) -> list[TeamKeyInfo]:
        """All keys, oldest first (never the hash or the plaintext)."""
        stmt = sa.select(team_keys).order_by(team_keys.c.created_at, team_keys.c.id)
        if not include_revoked:
            stmt = stmt.where(team_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [self._with_touch(_info(r)) for r in conn.execute(stmt).mappings()]

    def reload(self) -> None:
        """Rebuild the in-memory map from the database (keys issued or revoked by
        another daemon sharing it)."""
        with self.engine.connect() as conn:
            rows = list(conn.execute(sa.select(team_keys)).mappings())
        by_hash = {r["key_hash"]: (r["key_hash"], _info(r)) for r in rows}
        hash_of = {r["id"]: r["key_hash"] for r in rows}
        with self._lock:
            # Swap whole dicts: verify() on another thread sees old or new, never half.
            self._by_hash, self._hash_of = by_hash, hash_of

    def flush_touches(self) -> int:
        """Write pending last-used times in one batch; returns how many keys."""
        pending, self._touched = self._touched, {}
        if not pending:
            return 0
        params = [{"b_id": k, "b_t": t} for k, t in pending.items()]
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(team_keys)
                .where(team_keys.c.id == sa.bindparam("b_id"))
                .values(last_used_at=sa.bindparam("b_t")),
                params,
            )
        return len(pending)

    def _with_touch(self, info: TeamKeyInfo) -> TeamKeyInfo:
        t = self._touched.get(info.id)
        if t is not None and (info.last_used_at is None or t > info.last_used_at):
            return replace(info, last_used_at=t)
        return info


def _info(row: Mapping[str, Any]) -> TeamKeyInfo:
    pools = row["pools"]
    return TeamKeyInfo(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        prefix=row["prefix"],
        pools=tuple(json.loads(pools)) if pools is not None else None,
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


__all__ = ["KEY_PREFIX", "TeamKeyInfo", "TeamKeys", "key_from_headers"]
