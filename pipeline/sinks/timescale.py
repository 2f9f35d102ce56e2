"""Batched, idempotent writes to TimescaleDB / PostgreSQL.

Every table is written the same way: COPY into a temp table, then one INSERT … ON CONFLICT
on the table's natural key, so replaying input after a crash rewrites the same rows instead
of adding new ones. A write that fails
for a connection reason is retried with backoff until it succeeds; the caller awaits it and
so never acknowledges input whose results are not in the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.selfmetrics import DB_WRITE_FAILURES, DB_WRITE_SECONDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpsertTable:
    """A table, its columns, the constraint that makes a row unique, and what a replay may
    overwrite (`update`: None means every non-key column; () means keep the first row)."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    update: tuple[str, ...] | None = None

    def stage(self) -> sql.Composed:
        """A session temp table shaped like the target; emptied at every commit."""
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) "
                       "ON COMMIT DELETE ROWS").format(stage=self._stage, table=self._table)

    def copy(self) -> sql.Composed:
        return sql.SQL("COPY {stage} ({cols}) FROM STDIN").format(
            stage=self._stage, cols=sql.SQL(", ").join(map(sql.Identifier, self.columns)))

    def merge(self) -> sql.Composed:
        updates = self.update if self.update is not None else tuple(
            c for c in self.columns if c not in self.key)
        action = (sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates))
            if updates else sql.SQL("DO NOTHING"))
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


def _hashable(value: Any) -> Any:
    if isinstance(value, Jsonb):
        return json.dumps(value.obj, sort_keys=True)
    return value


METRIC_AGGREGATES = UpsertTable(
    "metric_aggregates",
    ("bucket", "width_s", "service", "name", "labels", "kind", "team", "tier", "environment",
     "count", "sum", "min", "max", "mean", "last", "increase", "rate", "p50", "p90", "p95",
     "p99", "series_id"),
    ("name", "labels", "width_s", "bucket"))

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


class Database:
    """One async connection, reconnected on failure; `healthy` feeds /health/ready."""

    def __init__(self, dsn: str, *, max_backoff_s: float = 5.0) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._max_backoff_s = max_backoff_s
        self.healthy = False

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            # autocommit: each write is its own explicit transaction block, and a ping
            # never leaves one open for a later write to hide inside as a savepoint.
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, connect_timeout=5,
                                                               autocommit=True)
        return self._conn

    async def upsert(self, table: UpsertTable, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write rows in one transaction; retry on connection loss until it lands."""
        if not rows:
            return
        params = table.unique_rows(rows)
        backoff = 0.2
        async with self._lock:
            while True:
                started = time.perf_counter()
                try:
                    conn = await self._connection()
                    async with conn.transaction(), conn.cursor() as cursor:
                        await cursor.execute(table.stage())
                        async with cursor.copy(table.copy()) as copy:
                            for values in params:
                                await copy.write_row(values)
                        await cursor.execute(table.merge())
                    self.healthy = True
                    DB_WRITE_SECONDS.labels(table.name).observe(time.perf_counter() - started)
                    return
                except psycopg.OperationalError as exc:
                    self.healthy = False
                    DB_WRITE_FAILURES.labels(table.name).inc()
                    log.warning("database write to %s failed (%s); retrying in %.1fs",
                                table.name, type(exc).__name__, backoff)
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
