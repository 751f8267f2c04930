"""Admin-plane tables (team keys, budgets, rollups, job runs) on the ledger's engine.

They live in their own ``MetaData`` so the ledger's schema versioning stays the
ledger's; ``ensure_admin_tables`` is idempotent and every module calls it on
construction. Times are UTC epoch seconds (floats), as in the ledger.
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

admin_metadata = sa.MetaData()

team_keys = sa.Table(
    "team_keys",
    admin_metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False, default="", server_default=""),
    sa.Column("prefix", sa.String, nullable=False),  # non-secret, for display
    sa.Column("key_hash", sa.String, nullable=False, unique=True),
    sa.Column("pools", sa.Text),  # JSON list; NULL = every pool/model
    sa.Column("expires_at", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double),
    sa.Column("last_used_at", sa.Double),
)

budgets = sa.Table(
    "budgets",
    admin_metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, default="", server_default=""),
    sa.Column("scope", sa.String, nullable=False),  # global | team_key | session
    sa.Column("subject", sa.String),  # key id / session id; NULL = each one separately
    sa.Column("period", sa.String, nullable=False),  # daily | weekly | monthly | total
    sa.Column("timezone", sa.String, nullable=False, default="UTC", server_default="UTC"),
    sa.Column("soft_usd", sa.Double),
    sa.Column("hard_usd", sa.Double),
    sa.Column("created_at", sa.Double, nullable=False),
)

# One row per (resolution, bucket, model); model "*" is the all-models total.
rollups = sa.Table(
    "rollups",
    admin_metadata,
    sa.Column("resolution", sa.String, primary_key=True),  # minute | hour | day
    sa.Column("bucket_start", sa.Double, primary_key=True),
    sa.Column("model", sa.String, primary_key=True),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Double, nullable=False),
    sa.Column("baseline_cost_usd", sa.Double, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_read_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_write_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_write_1h_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
)

# The last period each job completed: a restart resumes from here, so a period is
# neither skipped (downtime is caught up) nor repeated.
job_runs = sa.Table(
    "job_runs",
    admin_metadata,
    sa.Column("job", sa.String, primary_key=True),
    sa.Column("last_period_end", sa.Double, nullable=False),
    sa.Column("last_run_at", sa.Double, nullable=False),
    sa.Column("runs", sa.BigInteger, nullable=False, default=0, server_default="0"),
)

# Budgets shared by several daemons (a non-SQLite ledger): one row per budget,
# subject ("" for global) and period holds the booked spend and is the row
# reserve() locks; each daemon's in-flight estimates sit in its own hold row, so a
# daemon restarting after a crash can drop exactly the holds it leaked.
budget_counters = sa.Table(
    "budget_counters",
    admin_metadata,
    sa.Column("budget_id", sa.String, primary_key=True),
    sa.Column("subject", sa.String, primary_key=True),
    sa.Column("period_start", sa.Double, primary_key=True),
    sa.Column("period_end", sa.Double),  # NULL = a "total" budget's endless period
    sa.Column("spent", sa.Double, nullable=False, default=0.0, server_default="0"),
)

budget_holds = sa.Table(
    "budget_holds",
    admin_metadata,
    sa.Column("budget_id", sa.String, primary_key=True),
    sa.Column("subject", sa.String, primary_key=True),
    sa.Column("period_start", sa.Double, primary_key=True),
    sa.Column("owner", sa.String, primary_key=True),
    sa.Column("reserved", sa.Double, nullable=False, default=0.0, server_default="0"),
)

admin_kv = sa.Table(
    "admin_kv",
    admin_metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def ensure_admin_tables(engine: Engine) -> None:
    """Create the admin tables that are missing (no-op when they exist)."""
    admin_metadata.create_all(engine)


def get_or_create_secret(engine: Engine, key: str, nbytes: int = 32) -> bytes:
    """A per-install random secret stored in ``admin_kv`` (created on first use)."""
    ensure_admin_tables(engine)
    select = sa.select(admin_kv.c.value).where(admin_kv.c.key == key)
    try:
        with engine.begin() as conn:
            found = conn.execute(select).scalar_one_or_none()
            if found is not None:
                return bytes.fromhex(found)
            value = secrets.token_bytes(nbytes)
            conn.execute(sa.insert(admin_kv).values(key=key, value=value.hex()))
        return value
    except sa.exc.IntegrityError:  # another process created it first: use theirs
        with engine.connect() as conn:
            return bytes.fromhex(conn.execute(select).scalar_one())


def _dialect_insert(conn: Connection, table: sa.Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    return None


def insert_ignore(conn: Connection, table: sa.Table, values: dict[str, Any]) -> None:
    """INSERT unless a row with the same primary key exists (another daemon may be
    inserting it at the same moment: ON CONFLICT makes that race harmless)."""
    ins = _dialect_insert(conn, table)
    if ins is not None:
        conn.execute(ins.values(values).on_conflict_do_nothing())
        return
    try:  # other dialects: a savepoint keeps the outer transaction usable
        with conn.begin_nested():
            conn.execute(sa.insert(table).values(values))
    except sa.exc.IntegrityError:
        pass


def upsert_add(
    conn: Connection, table: sa.Table, values: dict[str, Any], column: str, amount: float
) -> None:
    """Insert ``values`` (with ``column`` = ``amount``) or add ``amount`` to the
    existing row's ``column``, atomically."""
    col = table.c[column]
    ins = _dialect_insert(conn, table)
    if ins is not None:
        stmt = ins.values({**values, column: amount})
        keys = [c.name for c in table.primary_key.columns]
        conn.execute(stmt.on_conflict_do_update(
            index_elements=keys, set_={column: col + stmt.excluded[column]}))
        return
    where = [table.c[k] == v for k, v in values.items()]
    if not conn.execute(sa.update(table).where(*where).values({column: col + amount})).rowcount:
        conn.execute(sa.insert(table).values({**values, column: amount}))


def read_watermark(engine: Engine, job: str) -> float | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(job_runs.c.last_period_end).where(job_runs.c.job == job)
        ).scalar_one_or_none()


def write_watermark(engine: Engine, job: str, period_end: float, now: float) -> None:
    """Record that ``job`` completed everything before ``period_end``."""
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(job_runs)
            .where(job_runs.c.job == job)
            .values(last_period_end=period_end, last_run_at=now, runs=job_runs.c.runs + 1)
        ).rowcount
        if not updated:
            conn.execute(
                sa.insert(job_runs).values(
                    job=job, last_period_end=period_end, last_run_at=now, runs=1
                )
            )


__all__ = [
    "admin_kv",
    "admin_metadata",
    "budget_counters",
    "budget_holds",
    "budgets",
    "ensure_admin_tables",
    "get_or_create_secret",
    "insert_ignore",
    "job_runs",
    "read_watermark",
    "rollups",
    "team_keys",
    "upsert_add",
    "write_watermark",
]
