"""Security basics on the real servers: the analyst role reads and never writes, and a
worker's credentials never reach its log or /metrics, even when they are wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline.codec import encode
from pipeline.db import migrate
from pipeline.kafka import client_config, create_topics
from pipeline.producer import MetricsProducer
from pipeline.settings import Settings
from tests.integration.harness import Worker, wait_for, worker_env

pytestmark = pytest.mark.integration

SASL_SECRET = "Sasl-Vigil-Secret-4d1a"
WRITES = (
    "INSERT INTO {table} DEFAULT VALUES",
    "UPDATE {table} SET {column} = {column} WHERE false",
    "DELETE FROM {table} WHERE false",
    "TRUNCATE {table}",
)


def relations(conn: psycopg.Connection, kind: str) -> list[str]:
    """Tables ('r', 'p') or views ('v') of the schema the migrations wrote to."""
    kinds = ["r", "p"] if kind == "table" else ["v"]
    return [name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = ANY(%s) ORDER BY 1", (kinds,))]


def first_column(conn: psycopg.Connection, table: str) -> str:
    (column,) = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum LIMIT 1", (table,)).fetchone() or ("",)
    return str(column)


def as_analyst(conn: psycopg.Connection, statement: sql.SQL | sql.Composed
               ) -> Exception | None:
    """Run one statement as vigil_analyst in a transaction that is rolled back."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL ROLE vigil_analyst")
            conn.execute(statement)
    except psycopg.Error as exc:
        return exc
    return None


def test_the_analyst_role_reads_everything_and_writes_nothing(database_url: str) -> None:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables, views = relations(conn, "table"), relations(conn, "view")
        assert {"metric_aggregates", "alerts", "incidents", "dead_letters"} <= set(tables)
        assert {"sla_monthly", "outages"} <= set(views)
        for name in [*tables, *views]:
            refused = as_analyst(conn, sql.SQL("SELECT * FROM {} LIMIT 1").format(
                sql.Identifier(name)))
            assert refused is None, f"SELECT on {name}: {refused}"
        for table in tables:
            column = first_column(conn, table)
            for write in WRITES:
                statement = sql.SQL(write).format(table=sql.Identifier(table),
                                                  column=sql.Identifier(column))
                refused = as_analyst(conn, statement)
                assert isinstance(refused, errors.InsufficientPrivilege), \
                    f"{statement.as_string(conn)} as vigil_analyst: {refused!r}"
        for create in ("CREATE TABLE analyst_scratch (x int)",
                       "CREATE VIEW analyst_view AS SELECT 1 AS x",
                       "CREATE INDEX ON metric_aggregates (service)"):
            refused = as_analyst(conn, sql.SQL(create))
            assert isinstance(refused, errors.InsufficientPrivilege), f"{create}: {refused!r}"


def test_credentials_never_reach_the_worker_log_or_metrics(settings: Settings,
                                                            tmp_path: Path) -> None:
    dsn = settings.database_dsn() or ""
    password = str(conninfo_to_dict(dsn).get("password") or "")
    assert len(password) >= 8, "the test database must have a password to look for"
    create_topics(settings)
    # SASL credentials without a mechanism: set, so they could leak, yet PLAINTEXT still works.
    extra = {"VIGIL_KAFKA_SASL_USERNAME": "vigil", "VIGIL_KAFKA_SASL_PASSWORD": SASL_SECRET}
    with Worker(settings, tmp_path, **extra) as worker:
        producer = MetricsProducer(client_config(settings), settings.topic("metrics"))
        producer.send_raw(b"not avro", b"svc")  # an error path, logged and dead-lettered
        producer.send_raw(encode("MetricBatch", {"source": "t", "symbols": [], "series": []}),
                          b"svc")
        producer.flush()
        wait_for(lambda: worker.metrics().get(
            'vigil_consumed_messages_total{topic="metrics"}', 0) >= 2, 60, "input consumed")
        _, metrics = worker.get("/metrics")
    log = worker.log_path.read_text(errors="replace")
    for secret in (password, SASL_SECRET):
        assert secret not in log
        assert secret not in metrics.decode()


def test_a_wrong_database_password_is_not_printed(settings: Settings, tmp_path: Path) -> None:
    wrong = "Wrong-Vigil-Password-a81f"
    params = conninfo_to_dict(settings.database_dsn() or "")
    env = worker_env(settings, VIGIL_WEB_PORT="0", VIGIL_KAFKA_SASL_PASSWORD=SASL_SECRET)
    env["VIGIL_DATABASE_URL"] = make_conninfo("", **{**params, "password": wrong})
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                          capture_output=True, timeout=120, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0
    assert "password authentication failed" in output
    assert wrong not in output and SASL_SECRET not in output
