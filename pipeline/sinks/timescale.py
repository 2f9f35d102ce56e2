"""Batched, idempotent writes to TimescaleDB / PostgreSQL.

Every table is written the same way: COPY into a temp table, then one INSERT … ON CONFLICT
on the table's natural key, so replaying input after a crash rewrites the same rows instead
of adding new ones. Tables whose rows are new but for replays (`rows_are_new`) are COPYed
straight in first, and merged that way only when the COPY meets a stored row. A write that fails
for a connection reason is retried with backoff until it succeeds; the caller awaits it and
so never acknowledges input whose results are not in the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.selfmetrics import DB_WRITE_FAILURES, DB_WRITE_SECONDS

log = logging.getLogger(__name__)
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # binary COPY: no flags, no extension
_COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class UpsertTable:
    """A table, its columns, the constraint that makes a row unique, and what a replay may
    overwrite (`update`: None means every non-key column; () means keep the first row)."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: tuple[str, ...] | None = None
    newer: tuple[str, ...] = ()
    """Columns that order versions of a row: an update applies only when the new row's
    values are at least the stored ones (row comparison), so a replayed or late write
    never moves a row back in time."""
    rows_are_new: bool = False
    """Rows meet stored ones only when input is replayed after a crash: `upsert_copy` then
    COPYs straight into the table and merges only when that meets an existing row (about
    1.6x the rows per second of COPY into the stage table and merging)."""

    def stage(self) -> sql.Composed:
        """A session temp table shaped like the target; emptied at every commit."""
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) "
                       "ON COMMIT DELETE ROWS").format(stage=self._stage, table=self._table)

    def copy(self, columns: Sequence[str] | None = None, binary: bool = False,
             direct: bool = False) -> sql.Composed:
        """COPY into the stage table, or with `direct` into the table itself."""
        return sql.SQL("COPY {target} ({cols}) FROM STDIN{format}").format(
            target=self._table if direct else self._stage,
            cols=sql.SQL(", ").join(map(sql.Identifier, columns or self.columns)),
            format=sql.SQL(" (FORMAT BINARY)" if binary else ""))

    def merge(self) -> sql.Composed:
        updates = self.update if self.update is not None else tuple(
            c for c in self.columns if c not in self.key)
        action = (sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates))
            if updates else sql.SQL("DO NOTHING"))
        if updates and self.newer:
            action = sql.SQL("{} WHERE ({}) <= ({})").format(
                action,
                sql.SQL(", ").join(sql.Identifier(self.name, c) for c in self.newer),
                sql.SQL(", ").join(sql.Identifier("excluded", c) for c in self.newer))
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        return sql.SQL("INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
                       "ON CONFLICT ({key}) {action}").format(
            table=self._table, cols=cols, stage=self._stage,
            key=sql.SQL(", ").join(map(sql.Identifier, self.key)), action=action)

    @property
    def _table(self) -> sql.Identifier:
        return sql.Identifier(self.name)

    @property
    def _stage(self) -> sql.Identifier:
        return sql.Identifier(f"vigil_stage_{self.name}")

    def unique_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Row tuples, the last one winning per key: one INSERT may not touch a row twice."""
        positions = [self.columns.index(c) for c in self.key]
        by_key: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in rows:
            values = tuple(row.get(c) for c in self.columns)
            by_key[tuple(_hashable(values[i]) for i in positions)] = values
        return list(by_key.values())


@dataclass(frozen=True)
class UpdateRows:
    """Sets columns of rows that already exist, found by the `where` columns; never inserts
    (for a second writer of some columns of a row another stage owns)."""

    name: str
    set: tuple[str, ...]
    where: tuple[str, ...]

    def statement(self) -> sql.Composed:
        def pairs(columns: tuple[str, ...], sep: str) -> sql.Composable:
            return sql.SQL(sep).join(sql.SQL("{} = %s").format(sql.Identifier(c))
                                     for c in columns)

        return sql.SQL("UPDATE {} SET {} WHERE {}").format(
            sql.Identifier(self.name), pairs(self.set, ", "), pairs(self.where, " AND "))


def _hashable(value: Any) -> Any:
    if isinstance(value, Jsonb):
        return json.dumps(value.obj, sort_keys=True)
    return value


METRIC_AGGREGATES = UpsertTable(
    "metric_aggregates",
    ("bucket", "width_s", "service", "name", "labels", "kind", "team", "tier", "environment",
     "count", "sum", "min", "max", "mean", "last", "increase", "rate", "p50", "p90", "p95",
     "p99", "series_id"),
    ("name", "labels", "width_s", "bucket"), rows_are_new=True)

DEAD_LETTERS = UpsertTable(
    "dead_letters",
    ("ts", "topic", "partition", "offset", "key", "reason", "detail", "payload"),
    ("topic", "partition", "offset", "reason", "detail", "ts"), update=())

ANOMALIES = UpsertTable(
    "anomalies",
    ("detected_at", "anomaly_id", "service", "metric_name", "series_id", "labels",
     "window_start", "width_s", "type", "severity", "current_value", "expected_value",
     "deviation_percentage", "confidence_score", "anomaly_score", "detector", "context"),
    ("anomaly_id", "detected_at"))

SLO_STATUS = UpsertTable(
    "slo_status",
    ("ts", "slo", "service", "objective", "sli", "error_budget_remaining", "burn_rate_5m",
     "burn_rate_30m", "burn_rate_1h", "burn_rate_2h", "burn_rate_6h", "burn_rate_1d",
     "burn_rate_3d", "exhaustion_at"),
    ("slo", "ts"))


# Alert and incident state: one row per alert (fingerprint) or incident, each version
# newer than the last. An alert row is ordered by (updated_at, starts_at, status): a new
# episode starts no earlier than the previous one resolved, and within one instant
# 'firing' < 'resolved' (pending and firing never share an instant: `for` > 0 separates them).
ALERTS = UpsertTable(
    "alerts",
    ("fingerprint", "alertname", "service", "severity", "status", "source", "labels",
     "annotations", "starts_at", "ends_at", "updated_at", "suppressed", "suppressed_by"),
    ("fingerprint",), newer=("updated_at", "starts_at", "status"))

ALERT_EVENTS = UpsertTable(
    "alert_events",
    ("ts", "event_id", "fingerprint", "alertname", "service", "severity", "status", "source",
     "labels", "annotations", "starts_at", "ends_at", "suppressed", "suppressed_by"),
    ("fingerprint", "status", "ts"), update=())

ALERT_INCIDENT = UpdateRows("alerts", set=("incident_id",), where=("fingerprint", "starts_at"))
"""Links one episode of an alert (its starts_at) to the incident it joined."""

INCIDENTS = UpsertTable(
    "incidents",
    ("incident_id", "title", "severity", "priority", "status", "assigned_to", "services",
     "root_cause_service", "escalation_level", "alert_fingerprints", "started_at",
     "opened_at", "acknowledged_at", "acknowledged_by", "mitigated_at", "resolved_at",
     "resolution", "false_positive", "updated_at"),
    ("incident_id",), newer=("updated_at",))

INCIDENT_EVENTS = UpsertTable(
    "incident_events",
    ("ts", "incident_id", "event_id", "event", "message", "detail"),
    ("incident_id", "event", "message", "ts"), update=())


class Database:
    """One async connection, reconnected on failure; `healthy` feeds /health/ready."""

    def __init__(self, dsn: str, *, max_backoff_s: float = 5.0) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._max_backoff_s = max_backoff_s
        self._staged: set[str] = set()  # tables whose temp stage this session has made
        self.healthy = False

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            # autocommit: each write is its own explicit transaction block, and a ping
            # never leaves one open for a later write to hide inside as a savepoint.
            self._staged.clear()
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=5,
                                                               autocommit=True)
        return self._conn

    async def upsert(self, table: UpsertTable, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write rows in one transaction; retry on connection loss until it lands."""
        if not rows:
            return
        params = table.unique_rows(rows)

        async def fill(copy: psycopg.AsyncCopy) -> None:
            for values in params:
                await copy.write_row(values)

        await self._copy_merge(table, table.copy(), fill)

    async def upsert_copy(self, table: UpsertTable, columns: Sequence[str],
                          rows: Sequence[bytes]) -> None:
        """Like `upsert`, for rows already encoded as binary COPY tuples of these columns
        (e.g. by `pipeline.aggregate_codec`): one write instead of a Python call per row and
        value. The rows must be unique on the table's key."""
        if not rows:
            return
        data = b"".join((_COPY_SIGNATURE, *rows, _COPY_TRAILER))

        async def fill(copy: psycopg.AsyncCopy) -> None:
            await copy.write(data)

        if table.rows_are_new:
            async def insert(cursor: psycopg.AsyncCursor[Any]) -> None:
                async with cursor.copy(table.copy(columns, binary=True, direct=True)) as copy:
                    await fill(copy)

            try:
                await self._retrying(table.name, insert)
                return
            except psycopg.errors.UniqueViolation:
                pass  # a replay: the transaction rolled back, merge instead
        await self._copy_merge(table, table.copy(columns, binary=True), fill)

    async def _copy_merge(self, table: UpsertTable, statement: sql.Composed,
                          fill: Callable[[psycopg.AsyncCopy], Awaitable[None]]) -> None:
        """COPY into the session's stage table, then merge into the table, in one
        transaction; the stage is created once per session."""

        async def write(cursor: psycopg.AsyncCursor[Any]) -> None:
            if table.name not in self._staged:
                await cursor.execute(table.stage())
            async with cursor.copy(statement) as copy:
                await fill(copy)
            await cursor.execute(table.merge())

        await self._retrying(table.name, write)
        self._staged.add(table.name)  # committed, so the session keeps its temp table

    async def update(self, table: UpdateRows, rows: Sequence[Mapping[str, Any]]) -> None:
        """Apply a parameterised UPDATE per row in one transaction, retrying like upsert."""
        if not rows:
            return
        params = [tuple(row[c] for c in (*table.set, *table.where)) for row in rows]

        async def write(cursor: psycopg.AsyncCursor[Any]) -> None:
            await cursor.executemany(table.statement(), params)

        await self._retrying(table.name, write)

    async def _retrying(self, name: str,
                        write: Callable[[psycopg.AsyncCursor[Any]], Awaitable[None]]) -> None:
        backoff = 0.2
        async with self._lock:
            while True:
                started = time.perf_counter()
                try:
                    conn = await self._connection()
                    async with conn.transaction(), conn.cursor() as cursor:
                        await write(cursor)
                    self.healthy = True
                    DB_WRITE_SECONDS.labels(name).observe(time.perf_counter() - started)
                    return
                except psycopg.OperationalError as exc:
                    self.healthy = False
                    DB_WRITE_FAILURES.labels(name).inc()
                    log.warning("database write to %s failed (%s); retrying in %.1fs",
                                name, type(exc).__name__, backoff)
                    await self._reset()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff_s)

    async def ping(self) -> bool:
        if self._lock.locked():
            return self.healthy  # a write is in flight (or retrying) and will tell
        try:
            async with self._lock:
                conn = await self._connection()
                await conn.execute("SELECT 1")
            self.healthy = True
        except psycopg.OperationalError:
            self.healthy = False
            await self._reset()
        return self.healthy

    async def _reset(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    async def close(self) -> None:
        await self._reset()
