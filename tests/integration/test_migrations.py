"""Migrations against a real PostgreSQL: the plain-PostgreSQL path (native partitions and
time_bucket), the migration runner's guarantees, idempotent writes, the analyst role and views.

`database_url` (tests/conftest.py) is a fresh, empty database for this module. Tests that
place rows use their own fixed dates or names, so they do not depend on each other's rows.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from pipeline import SQL_DIR
from pipeline.aggregate_codec import COPY_COLUMNS, AggregateEncoder
from pipeline.db import (
    MIGRATION_LOCK_KEY,
    Connection,
    MigrationError,
    connect,
    drop_expired_partitions,
    ensure_partitions,
    has_timescaledb,
    migrate,
)
from pipeline.sinks.timescale import METRIC_AGGREGATES, Database
from tests.unit.test_aggregate_codec import closed_windows

pytestmark = pytest.mark.integration

ALL_MIGRATIONS = sorted(p.name for p in SQL_DIR.glob("*.sql"))
HYPERTABLES = {
    "metric_aggregates", "anomalies", "alert_events", "incident_events", "slo_status",
    "dead_letters",
}
ANALYST_VIEWS = ("sla_monthly", "incident_metrics", "noisiest_alerts", "outages")
TIMESCALE_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)


@pytest.fixture(scope="module")
def applied(database_url: str) -> list[str]:
    return migrate(database_url)


@pytest.fixture(scope="module")
def conn(database_url: str, applied: list[str]) -> Iterator[Connection]:
    with connect(database_url, autocommit=True) as connection:
        yield connection


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def partitions_of(conn: Connection, table: str, start: datetime, end: datetime) -> list[str]:
    rows = conn.execute(
        "SELECT vigil_ensure_partitions(%s, %s, %s)", (table, start, end)
    ).fetchall()
    return [name for (name,) in rows]


def insert_aggregate(conn: Connection, name: str, bucket: datetime, value: float = 1.0) -> None:
    conn.execute(
        "INSERT INTO metric_aggregates (bucket, width_s, service, name, labels, kind, count, sum)"
        " VALUES (%s, 10, 'checkout', %s, %s, 'GAUGE', 1, %s)",
        (bucket, name, Jsonb({"service": "checkout"}), value),
    )


# --- the runner ---------------------------------------------------------------------------


def test_fresh_database_gets_every_migration_in_order(conn: Connection, applied: list[str]):
    assert applied == ALL_MIGRATIONS
    recorded = conn.execute("SELECT filename FROM schema_migrations ORDER BY filename").fetchall()
    assert [name for (name,) in recorded] == ALL_MIGRATIONS
    assert not has_timescaledb(conn)  # this machine's server is plain PostgreSQL


def test_second_run_applies_nothing(database_url: str, applied: list[str]):
    assert migrate(database_url) == []


def test_edited_migration_is_refused(database_url: str, applied: list[str], tmp_path: Path):
    shutil.copytree(SQL_DIR, tmp_path, dirs_exist_ok=True)
    edited = tmp_path / "0002_metric_aggregates.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(MigrationError, match=r"0002_metric_aggregates\.sql: changed after"):
        migrate(database_url, tmp_path)


def test_failed_migration_leaves_nothing_behind(
    database_url: str, conn: Connection, applied: list[str], tmp_path: Path
):
    shutil.copytree(SQL_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "0901_broken.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT 1 / 0;\n"
    )
    with pytest.raises(MigrationError, match=r"0901_broken\.sql: division by zero"):
        migrate(database_url, tmp_path)
    assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
    assert conn.execute(
        "SELECT count(*) FROM schema_migrations WHERE filename = '0901_broken.sql'"
    ).fetchone() == (0,)


def test_only_pending_migrations_apply(
    database_url: str, conn: Connection, applied: list[str], tmp_path: Path
):
    shutil.copytree(SQL_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "0900_extra.sql").write_text("CREATE TABLE extra_table (x int);\n")
    assert migrate(database_url, tmp_path) == ["0900_extra.sql"]
    assert migrate(database_url, tmp_path) == []
    # The real directory does not know 0900: an older worker still starts.
    assert migrate(database_url) == []


def test_concurrent_migrations_apply_each_file_once(database_url: str, conn: Connection):
    # A second schema is a second, empty target in the same database (and lock space).
    conn.execute("CREATE SCHEMA race")
    dsn = make_conninfo(database_url, options="-c search_path=race")
    # Hold the lock until both workers are queued on it, so they really do race.
    with connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(migrate, dsn) for _ in range(2)]
            waiting = _wait_for_lock_waiters(conn, 2)
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            results = [f.result() for f in futures]
    assert waiting == 2
    assert sorted(results, key=len) == [[], ALL_MIGRATIONS]
    tables = conn.execute(
        "SELECT to_regclass('race.metric_aggregates') IS NOT NULL"
    ).fetchone()
    assert tables == (True,)


def _wait_for_lock_waiters(conn: Connection, expected: int) -> int:
    deadline = time.monotonic() + 30
    waiting = 0
    while time.monotonic() < deadline and waiting < expected:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        waiting = row[0] if row else 0
        threading.Event().wait(0.005)
    return waiting


# --- partitions ---------------------------------------------------------------------------


def test_time_series_tables_are_partitioned_with_a_default(conn: Connection):
    rows = conn.execute(
        "SELECT t.table_name, p.partstrat, d.relname"
        " FROM vigil_timeseries t"
        " JOIN pg_partitioned_table p ON p.partrelid = t.table_name::regclass"
        " LEFT JOIN pg_class d ON d.oid = p.partdefid"
    ).fetchall()
    assert {name for name, _, _ in rows} == HYPERTABLES
    assert all(strategy == "r" for _, strategy, _ in rows)
    assert all(default == f"{name}_default" for name, _, default in rows)


def test_rows_land_in_their_day_partition_or_the_default(conn: Connection):
    created = partitions_of(conn, "metric_aggregates", utc(2001, 1, 1, 6), utc(2001, 1, 3, 18))
    assert created == [
        "metric_aggregates_p20010101", "metric_aggregates_p20010102", "metric_aggregates_p20010103",
    ]
    placements = {
        utc(2001, 1, 1): "metric_aggregates_p20010101",
        utc(2001, 1, 2, 23, 59, 50): "metric_aggregates_p20010102",
        utc(2001, 1, 3, 12): "metric_aggregates_p20010103",
        utc(1990, 6, 1): "metric_aggregates_default",  # far outside: kept, not refused
    }
    for bucket in placements:
        insert_aggregate(conn, "placement", bucket)
    rows = conn.execute(
        "SELECT bucket, tableoid::regclass::text FROM metric_aggregates WHERE name = 'placement'"
    ).fetchall()
    assert dict(rows) == placements


def test_partition_made_late_takes_its_rows_from_the_default(conn: Connection):
    insert_aggregate(conn, "late", utc(2001, 6, 5, 12))
    insert_aggregate(conn, "late", utc(2001, 6, 6, 12))
    assert partitions_of(conn, "metric_aggregates", utc(2001, 6, 5), utc(2001, 6, 6)) == [
        "metric_aggregates_p20010605"
    ]
    rows = conn.execute(
        "SELECT bucket, tableoid::regclass::text FROM metric_aggregates WHERE name = 'late'"
    ).fetchall()
    assert dict(rows) == {
        utc(2001, 6, 5, 12): "metric_aggregates_p20010605",
        utc(2001, 6, 6, 12): "metric_aggregates_default",
    }


def test_weekly_partitions_start_on_monday(conn: Connection):
    # 2001-03-07 is a Wednesday; its week starts Monday 2001-03-05.
    assert partitions_of(conn, "alert_events", utc(2001, 3, 7), utc(2001, 3, 13)) == [
        "alert_events_p20010305", "alert_events_p20010312",
    ]


def test_ensure_partitions_covers_yesterday_to_days_ahead_once(conn: Connection):
    now = utc(2003, 7, 16, 15, 30)  # a Wednesday
    created = ensure_partitions(conn, days_ahead=2, now=now)
    daily_tables = {"metric_aggregates", "dead_letters"}
    expected = {f"{table}_p2003071{day}" for table in daily_tables for day in (5, 6, 7, 8)}
    expected |= {f"{table}_p20030714" for table in HYPERTABLES - daily_tables}
    assert set(created) == expected
    assert ensure_partitions(conn, days_ahead=2, now=now) == []


def test_drop_expired_partitions_honours_each_tables_retention(conn: Connection):
    partitions_of(conn, "metric_aggregates", utc(1995, 2, 1), utc(1995, 2, 3))
    partitions_of(conn, "anomalies", utc(1995, 2, 1), utc(1995, 2, 3))
    # 100 days later: past metric_aggregates' 90 days, within anomalies' 400.
    dropped = drop_expired_partitions(conn, now=utc(1995, 5, 12))
    assert sorted(dropped) == ["metric_aggregates_p19950201", "metric_aggregates_p19950202"]
    assert conn.execute("SELECT to_regclass('anomalies_p19950130')").fetchone() != (None,)


# --- time_bucket ----------------------------------------------------------------------------


def reference_bucket(width: timedelta | int, ts: datetime, origin: datetime = TIMESCALE_ORIGIN):
    """TimescaleDB's time_bucket: fixed widths from the origin, months as calendar months."""
    if isinstance(width, timedelta):
        return origin + ((ts - origin) // width) * width
    month, origin_month = ts.year * 12 + ts.month - 1, origin.year * 12 + origin.month - 1
    start = origin_month + (month - origin_month) // width * width
    return utc(start // 12, start % 12 + 1, 1)


WIDTHS: list[tuple[str, timedelta | int]] = [
    ("1 second", timedelta(seconds=1)),
    ("10 seconds", timedelta(seconds=10)),
    ("7 minutes", timedelta(minutes=7)),
    ("15 minutes", timedelta(minutes=15)),
    ("1 hour", timedelta(hours=1)),
    ("5 hours", timedelta(hours=5)),
    ("1 day", timedelta(days=1)),
    ("1 week", timedelta(weeks=1)),
    ("30 days", timedelta(days=30)),
    ("1 month", 1),
    ("3 months", 3),
    ("1 year", 12),
]


@pytest.mark.parametrize("width_sql", ["15 minutes", "1 hour", "1 day"])
def test_time_bucket_group_by_matches_python(conn: Connection, width_sql: str):
    width = dict(WIDTHS)[width_sql]
    rng = random.Random(20240501)
    start = utc(2001, 4, 1)
    partitions_of(conn, "metric_aggregates", start, start + timedelta(days=3))
    stamps = sorted({start + timedelta(seconds=10 * rng.randrange(3 * 8640)) for _ in range(500)})
    values = [rng.uniform(0, 100) for _ in stamps]
    name = f"bucketing_{width_sql.replace(' ', '_')}"
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO metric_aggregates"
            " (bucket, width_s, service, name, labels, kind, count, sum)"
            " VALUES (%s, 10, 'checkout', %s, '{\"service\": \"checkout\"}', 'GAUGE', 1, %s)",
            [(ts, name, v) for ts, v in zip(stamps, values, strict=True)],
        )
    rows = conn.execute(
        "SELECT time_bucket(%s::interval, bucket) AS b, count(*), sum(sum)"
        " FROM metric_aggregates WHERE name = %s GROUP BY 1 ORDER BY 1",
        (width_sql, name),
    ).fetchall()
    expected_counts = Counter(reference_bucket(width, ts) for ts in stamps)
    expected_sums: dict[datetime, float] = {}
    for ts, v in zip(stamps, values, strict=True):
        key = reference_bucket(width, ts)
        expected_sums[key] = expected_sums.get(key, 0.0) + v
    assert [(b, n) for b, n, _ in rows] == sorted(expected_counts.items())
    assert {b: s for b, _, s in rows} == pytest.approx(expected_sums)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    width=st.sampled_from(WIDTHS),
    ts=st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2099, 12, 31),
                    timezones=st.just(UTC)),
)
def test_time_bucket_matches_timescaledb_semantics(
    conn: Connection, width: tuple[str, timedelta | int], ts: datetime
):
    width_sql, width_value = width
    row = conn.execute("SELECT time_bucket(%s::interval, %s)", (width_sql, ts)).fetchone()
    assert row == (reference_bucket(width_value, ts),)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    width=st.sampled_from(WIDTHS),
    ts=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1),
                    timezones=st.just(UTC)),
    origin=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1),
                        timezones=st.just(UTC)),
)
def test_time_bucket_with_origin(
    conn: Connection, width: tuple[str, timedelta | int], ts: datetime, origin: datetime
):
    width_sql, width_value = width
    row = conn.execute(
        "SELECT time_bucket(%s::interval, %s, %s)", (width_sql, ts, origin)
    ).fetchone()
    assert row == (reference_bucket(width_value, ts, origin),)


def test_time_bucket_rejects_mixed_month_widths(conn: Connection):
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("SELECT time_bucket('1 month 2 days', now())")


def test_time_bucket_is_inlined_into_queries(conn: Connection):
    plan = conn.execute(
        "EXPLAIN VERBOSE SELECT time_bucket('1 hour', bucket) FROM metric_aggregates"
    ).fetchall()
    text = "\n".join(line for (line,) in plan)
    assert "date_bin('01:00:00'::interval" in text
    assert "time_bucket" not in text


# --- idempotent writes ----------------------------------------------------------------------

UPSERT = """
INSERT INTO metric_aggregates (bucket, width_s, service, name, labels, kind, count, sum, last)
VALUES (%s, %s, 'checkout', 'upsert_test', %s, 'GAUGE', %s, %s, %s)
ON CONFLICT (name, labels, width_s, bucket) DO UPDATE
SET count = EXCLUDED.count, sum = EXCLUDED.sum, last = EXCLUDED.last
"""


def test_aggregate_upsert_is_idempotent(conn: Connection):
    start = utc(2001, 5, 1)
    partitions_of(conn, "metric_aggregates", start, start + timedelta(days=1))
    batch = [
        (start + timedelta(seconds=10 * i), width, Jsonb({"service": "checkout", "pod": p}),
         i + 1, float(i), float(i))
        for i in range(20) for width in (10, 60) for p in ("a", "b")
    ]
    with conn.cursor() as cur:
        cur.executemany(UPSERT, batch)
        cur.executemany(UPSERT, batch)  # a replay after a crash
    count_sql = "SELECT count(*), sum(count) FROM metric_aggregates WHERE name = 'upsert_test'"
    assert conn.execute(count_sql).fetchone() == (80, 2 * 2 * sum(range(1, 21)))
    with conn.cursor() as cur:
        cur.executemany(UPSERT, [(*row[:3], 1, 0.5, 0.5) for row in batch])
    assert conn.execute(count_sql).fetchone() == (80, 80)


def test_closed_windows_are_copied_in_once_and_a_replay_merges(database_url: str,
                                                               conn: Connection):
    windows = closed_windows([("copy_test", "a", "svc-a", 0), ("copy_test", "b", "svc-a", 2)],
                             [float(v) for v in range(40)], seed=3)
    rows = [row for w in windows for row in AggregateEncoder().encode(w, lambda _: None).rows]
    assert len(rows) >= 4

    async def write(*batches: list[bytes]) -> None:
        database = Database(database_url)
        try:
            for batch in batches:
                await database.upsert_copy(METRIC_AGGREGATES, COPY_COLUMNS, batch)
        finally:
            await database.close()

    # The first half goes straight in; the replay meets it and merges, adding the rest.
    asyncio.run(write(rows[:len(rows) // 2], rows))
    stored = conn.execute("SELECT count(*), sum(count) FROM metric_aggregates"
                          " WHERE name = 'copy_test'").fetchone()
    assert stored == (len(rows), sum(int(w.count.sum()) for w in windows))


def test_history_replays_do_not_duplicate(conn: Connection):
    ts = utc(2001, 5, 2, 12)
    statements = [
        ("INSERT INTO alert_events (ts, fingerprint, alertname, service, status, source)"
         " VALUES (%s, 'fp1', 'HighLatency', 'checkout', 'firing', 'rule') ON CONFLICT DO NOTHING",
         (ts,)),
        ("INSERT INTO incident_events (ts, incident_id, event, message)"
         " VALUES (%s, 'INC-2001-000001', 'UPDATED', 'alert fp1 added') ON CONFLICT DO NOTHING",
         (ts,)),
        ("INSERT INTO dead_letters (ts, topic, partition, \"offset\", reason, detail, payload)"
         " VALUES (%s, 'vigil.metrics', 3, 42, 'nan', 'series[0].values[1]', '\\x00')"
         " ON CONFLICT DO NOTHING", (ts,)),
        ("INSERT INTO dead_letters (ts, topic, partition, \"offset\", reason, detail, payload)"
         " VALUES (%s, 'vigil.metrics', 3, 42, 'nan', 'series[0].values[2]', '\\x00')"
         " ON CONFLICT DO NOTHING", (ts,)),
        ("INSERT INTO anomalies (detected_at, anomaly_id, service, metric_name, type, severity)"
         " VALUES (%s, 'an-1', 'checkout', 'latency_p99', 'LATENCY_SPIKE', 'high')"
         " ON CONFLICT DO NOTHING", (ts,)),
        ("INSERT INTO slo_status (ts, slo, service, objective, sli)"
         " VALUES (%s, 'checkout-availability', 'checkout', 0.999, 0.9995)"
         " ON CONFLICT DO NOTHING", (ts,)),
    ]
    for _ in range(2):
        for statement, params in statements:
            conn.execute(statement, params)
    counts = {
        table: conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(table), sql.Identifier(column)
            ),
            (ts,),
        ).fetchone()
        for table, column in [("alert_events", "ts"), ("incident_events", "ts"),
                              ("dead_letters", "ts"), ("anomalies", "detected_at"),
                              ("slo_status", "ts")]
    }
    # Two distinct bad samples of one message are two dead letters; each replay adds nothing.
    assert counts == {"alert_events": (1,), "incident_events": (1,), "dead_letters": (2,),
                      "anomalies": (1,), "slo_status": (1,)}


# --- analyst role and views -----------------------------------------------------------------


def test_analyst_reads_everything_and_writes_nothing(database_url: str, conn: Connection):
    with connect(database_url, autocommit=True) as analyst:
        analyst.execute("SET ROLE vigil_analyst")
        for table in sorted(HYPERTABLES) + ["alerts", "incidents", "service_catalog",
                                            "service_dependencies", "change_events"]:
            analyst.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(table)))
        for view in ANALYST_VIEWS:
            analyst.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view))).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute(
                "INSERT INTO service_catalog (service) VALUES ('sneaky')"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            insert_aggregate(analyst, "sneaky", utc(2001, 5, 1))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("DELETE FROM incidents")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            analyst.execute("SELECT vigil_ensure_partitions('anomalies', now(), now())")


def _incident(conn: Connection, incident_id: str, priority: str, services: list[str], **times):
    columns = ["incident_id", "title", "severity", "priority", "status", "services", *times]
    conn.execute(
        sql.SQL("INSERT INTO incidents ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        ),
        [incident_id, "test", "critical", priority,
         "RESOLVED" if times.get("resolved_at") else "INVESTIGATING", services, *times.values()],
    )


@pytest.fixture(scope="module")
def february_incidents(conn: Connection) -> None:
    t = lambda day, h, m=0: utc(2024, 2, day, h, m)  # noqa: E731
    _incident(conn, "INC-2024-000001", "P1", ["pay"], started_at=t(10, 0), opened_at=t(10, 0, 5),
              acknowledged_at=t(10, 0, 15), resolved_at=t(10, 2))
    _incident(conn, "INC-2024-000002", "P2", ["pay", "db"], started_at=t(10, 1),
              opened_at=t(10, 1, 2), acknowledged_at=t(10, 1, 32), resolved_at=t(10, 3),
              escalation_level="MANAGEMENT")
    _incident(conn, "INC-2024-000003", "P3", ["pay"], opened_at=t(20, 10),
              resolved_at=t(20, 10, 30))
    _incident(conn, "INC-2024-000004", "P1", ["pay"], opened_at=t(21, 10), resolved_at=t(21, 11),
              false_positive=True)
    for ts, slo, objective, sli, remaining in [
        (t(5, 0), "pay-availability", 0.999, 0.9999, 0.9),
        (t(28, 0), "pay-availability", 0.999, 0.9994, 0.4),
        (t(27, 0), "pay-latency", 0.99, 0.98, 0.7),
    ]:
        conn.execute(
            "INSERT INTO slo_status (ts, slo, service, objective, sli, error_budget_remaining)"
            " VALUES (%s, %s, 'pay', %s, %s, %s)",
            (ts, slo, objective, sli, remaining),
        )


def test_incident_metrics(conn: Connection, february_incidents: None):
    row = conn.execute(
        "SELECT incidents, false_positives, unresolved, mtta_s, mttr_s, mttd_s, mtbf_s"
        " FROM incident_metrics WHERE service = 'pay' AND month = '2024-02-01 00:00+00'"
    ).fetchone()
    assert row is not None
    incidents, false_positives, unresolved, *means = row
    assert (incidents, false_positives, unresolved) == (3, 1, 0)
    # MTTA: 10 and 30 min; MTTR: 1h55, 1h58, 30 min; MTTD: 5 and 2 min; MTBF: the second
    # opened while the first was open (0), the third 10 days 7 hours after the second.
    assert [float(m) for m in means] == pytest.approx(
        [1200, (6900 + 7080 + 1800) / 3, 210, (0 + 10 * 86400 + 7 * 3600) / 2]
    )


def test_sla_monthly(conn: Connection, february_incidents: None):
    rows = conn.execute(
        "SELECT service, outages, downtime, uptime_pct::float8, slos, worst_sli,"
        " strictest_objective, error_budget_used, budget_exhausted"
        " FROM sla_monthly WHERE month = '2024-02-01 00:00+00' ORDER BY service"
    ).fetchall()
    def uptime(down_s: int) -> object:
        return pytest.approx(100 * (1 - down_s / (29 * 86400)), abs=1e-4)  # leap February

    assert rows[0][:4] == ("db", 1, timedelta(hours=2), uptime(7200))
    # pay: the P1 and P2 overlap; 00:00-03:00 counts once. The P3 and false positive do not.
    assert rows[1][:4] == ("pay", 2, timedelta(hours=3), uptime(10800))
    assert rows[1][4:] == (2, 0.98, 0.999, pytest.approx(0.6), False)
    assert len(rows) == 2


def test_noisiest_alerts(conn: Connection):
    for fingerprint, minutes_ago, status in [
        ("flappy-1", 50, "firing"), ("flappy-1", 40, "resolved"), ("flappy-1", 30, "firing"),
        ("flappy-2", 20, "firing"), ("calm-1", 10, "firing"),
        ("flappy-1", 60 * 24 * 40, "firing"),  # older than 30 days
    ]:
        alertname = "Flappy" if fingerprint.startswith("flappy") else "Calm"
        conn.execute(
            "INSERT INTO alert_events (ts, fingerprint, alertname, service, status, source)"
            " VALUES (now() - make_interval(mins => %s), %s, %s, 'noisy-svc', %s, 'rule')",
            (minutes_ago, fingerprint, alertname, status),
        )
    rows = conn.execute(
        "SELECT alertname, firing_transitions, fingerprints FROM noisiest_alerts"
        " WHERE service = 'noisy-svc'"
    ).fetchall()
    assert rows == [("Flappy", 3, 2), ("Calm", 1, 1)]
