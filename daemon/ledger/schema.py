"""Ledger tables, engine setup and the schema-version hook.

Only portable types are used so the same tables work on SQLite and PostgreSQL. Times
are UTC epoch seconds in double-precision floats: cheap to write and compare, and free
of the time-zone handling differences between drivers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

SCHEMA_VERSION = 3

metadata = sa.MetaData()

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("started_at", sa.Double, nullable=False, index=True),
    sa.Column("ended_at", sa.Double),
    sa.Column("client", sa.Text, nullable=False, default="", server_default=""),
    sa.Column("client_format", sa.String, nullable=False),
    sa.Column("session_id", sa.String, index=True),
    sa.Column("agent_id", sa.String),
    sa.Column("request_role", sa.String),
    sa.Column("team_key_id", sa.String),
    sa.Column("requested_model", sa.String, nullable=False),
    sa.Column("served_model", sa.String),
    sa.Column("provider", sa.String),
    sa.Column("upstream_format", sa.String),
    sa.Column("stream", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("status", sa.String, nullable=False, index=True),
    sa.Column("http_status", sa.Integer),
    sa.Column("input_tokens", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("cache_read_tokens", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("cache_write_tokens", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column(
        "cache_write_1h_tokens", sa.BigInteger, nullable=False, default=0, server_default="0"
    ),
    sa.Column("output_tokens", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("cost_usd", sa.Double, nullable=False, default=0.0, server_default="0"),
    sa.Column("baseline_cost_usd", sa.Double),
    sa.Column("ttfb_ms", sa.Double),
    sa.Column("latency_ms", sa.Double),
    sa.Column("attempts", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("error", sa.Text),
    sa.Column("decision", sa.Text),
    # v2: the daemon instance that opened the row, so with several daemons on one
    # database each recovers only its own interrupted requests. NULL = before v2.
    sa.Column("owner", sa.String, index=True),
    # v3: the budget estimate reserved before the request went upstream; an
    # "interrupted" row (no close, so no real cost) is charged this by budgets.
    sa.Column("reserved_usd", sa.Double),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Column order used by reads and exports; fixed by the table definition.
REQUEST_COLUMNS: tuple[str, ...] = tuple(c.name for c in requests.columns)


def _v1_to_v2(conn: Connection) -> None:
    """Add ``requests.owner`` (and its index) to a version-1 table."""
    conn.execute(sa.text("ALTER TABLE requests ADD COLUMN owner VARCHAR"))
    # plain SQL: an sa.Index on requests.c.owner would attach a second copy of the
    # index to the table object and break later create_all() calls
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_requests_owner ON requests (owner)"))


def _v2_to_v3(conn: Connection) -> None:
    """Add ``requests.reserved_usd`` (NULL for older rows: nothing was recorded)."""
    conn.execute(sa.text("ALTER TABLE requests ADD COLUMN reserved_usd DOUBLE PRECISION"))


# from_version -> step that upgrades a connection's schema to from_version + 1.
# Steps run in ensure_schema's transaction (PostgreSQL and SQLite both have
# transactional DDL), so a failed step leaves the old version intact.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


class SchemaVersionError(RuntimeError):
    """The database's schema is newer than this code, or no migration path exists."""


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; for a SQLite file, make its folder and enable WAL."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)

    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database
    if in_memory:
        # One shared connection, or every thread would see its own empty database.
        engine = sa.create_engine(
            url,
            poolclass=sa.pool.StaticPool,
            connect_args={"check_same_thread": False},
        )
    else:
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        try:
            # WAL: readers (console, exports) never block the writer thread.
            # synchronous=NORMAL: in WAL mode a process crash loses no committed
            # transaction; only an OS crash/power loss can drop the last few.
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=5000")
        finally:
            cur.close()

    return engine


def ensure_schema(engine: Engine) -> int:
    """Create missing tables, then check (and later migrate) the schema version.

    Returns the version the database is at afterwards.
    """
    metadata.create_all(engine)
    with engine.begin() as conn:
        stored = conn.execute(
            sa.select(meta.c.value).where(meta.c.key == "schema_version")
        ).scalar_one_or_none()
        if stored is None:
            conn.execute(sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        found = int(stored)
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"ledger schema version {found} is newer than this daemon supports "
                f"({SCHEMA_VERSION}); upgrade Switchman"
            )
        while found < SCHEMA_VERSION:
            step = MIGRATIONS.get(found)
            if step is None:
                raise SchemaVersionError(f"no migration from ledger schema version {found}")
            step(conn)
            found += 1
            conn.execute(
                sa.update(meta).where(meta.c.key == "schema_version").values(value=str(found))
            )
        return found
