"""Database connection, schema migrations and partition upkeep.

Migrations are the ordered files `sql/NNNN_name.sql`. Each applies in its own transaction
together with its row in `schema_migrations` (file name and SHA-256), so a failed file
leaves nothing behind and a finished one is never applied twice. An applied file whose
content has changed is refused: the database would no longer match the code. A session
advisory lock serialises workers that start together.

The DSN may carry a password, so it is never logged nor put in an error message.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from pipeline import SQL_DIR

log = logging.getLogger(__name__)

# Any fixed 64-bit key works; this one spells "vigilmig" so it can be recognised in pg_locks.
MIGRATION_LOCK_KEY = 0x766967696C6D6967

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Connection = psycopg.Connection[tuple[Any, ...]]


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree, or one failed to apply."""


@dataclass(frozen=True)
class Migration:
    name: str
    sha256: str
    sql: bytes


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> Connection:
    """Open a connection that names itself in pg_stat_activity as vigil."""
    kwargs.setdefault("application_name", "vigil")
    return psycopg.connect(dsn, autocommit=autocommit, **kwargs)


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The migration files in apply order; rejects names that would make the order ambiguous."""
    migrations: list[Migration] = []
    numbers: dict[str, str] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lowercase_words.sql")
        number = match.group(1)
        if number in numbers:
            raise MigrationError(f"{path}: number {number} is also used by {numbers[number]}")
        numbers[number] = path.name
        sql = path.read_bytes()
        migrations.append(Migration(path.name, hashlib.sha256(sql).hexdigest(), sql))
    return migrations


def migrate(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the pending migrations in order; returns the names applied (empty if none)."""
    migrations = load_migrations(sql_dir)
    applied_now: list[str] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " filename text PRIMARY KEY,"
                " sha256 text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = conn.execute("SELECT filename, sha256 FROM schema_migrations").fetchall()
            applied: dict[str, str] = {name: digest for name, digest in rows}
            _check_applied(migrations, applied)
            for migration in migrations:
                if migration.name in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(
                            "INSERT INTO schema_migrations (filename, sha256) VALUES (%s, %s)",
                            (migration.name, migration.sha256),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{sql_dir / migration.name}: {exc}") from exc
                log.info("applied migration %s", migration.name)
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    if not applied_now:
        log.info("database schema is up to date (%d migrations)", len(migrations))
    return applied_now


def _check_applied(migrations: list[Migration], applied: dict[str, str]) -> None:
    on_disk = {m.name: m for m in migrations}
    for name, digest in sorted(applied.items()):
        migration = on_disk.get(name)
        if migration is None:
            # A newer release migrated this database; older workers keep running on it.
            log.warning("migration %s is applied but not known to this version", name)
        elif migration.sha256 != digest:
            raise MigrationError(
                f"{name}: changed after it was applied (sha256 {digest[:12]}… in the database, "
                f"{migration.sha256[:12]}… on disk); add a new migration instead of editing it"
            )


def has_timescaledb(conn: Connection) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    return bool(row and row[0])


def ensure_partitions(
    conn: Connection, days_ahead: int = 7, *, now: datetime | None = None
) -> list[str]:
    """Create the partitions from yesterday to `days_ahead` days on; returns those created.

    Call at worker start and daily. Rows that arrive beyond the partitions land in each
    table's DEFAULT partition and are moved out when their partition is made, so a missed
    run costs speed, never data. On TimescaleDB this does nothing (chunks are automatic).
    """
    if days_ahead < 0:
        raise ValueError(f"ensure_partitions: days_ahead must be >= 0, got {days_ahead}")
    now = now or datetime.now(UTC)
    start, end = now - timedelta(days=1), now + timedelta(days=days_ahead)
    created: list[str] = []
    with conn.transaction():
        tables = conn.execute(
            "SELECT table_name FROM vigil_timeseries WHERE NOT hypertable ORDER BY table_name"
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(
                "SELECT vigil_ensure_partitions(%s, %s, %s)", (table, start, end)
            ).fetchall()
            created.extend(name for (name,) in rows)
    if created:
        log.info("created partitions %s", ", ".join(created))
    return created


def drop_expired_partitions(conn: Connection, *, now: datetime | None = None) -> list[str]:
    """Plain-PostgreSQL retention: drop partitions older than their table's retain_for.

    TimescaleDB applies its own retention policies, so there this finds nothing to drop.
    """
    with conn.transaction():
        rows = conn.execute(
            "SELECT vigil_drop_expired_partitions(%s)", (now or datetime.now(UTC),)
        ).fetchall()
    dropped = [name for (name,) in rows]
    if dropped:
        log.info("dropped expired partitions %s", ", ".join(dropped))
    return dropped
