"""`vigil up` / `down` / `status` start real servers, stop them, and keep their data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration


def vigil(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"vigil {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def exported(status_env: str) -> dict[str, str]:
    found = {}
    for line in status_env.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        found[name] = value.strip("'")
    return found


def test_up_down_up_keeps_kafka_and_postgres_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_HOME=str(tmp_path / "home"), VIGIL_KAFKA_PORT="39292",
               VIGIL_KAFKA_CONTROLLER_PORT="39293", VIGIL_PG_PORT="35632")
    try:
        first = vigil(env, "up")
        assert "127.0.0.1:39292" in first
        assert "***" in first, "the password must not be printed"
        assert vigil(env, "up") == first, "up is idempotent"
        assert "running" in vigil(env, "status")
        conn_env = exported(vigil(env, "status", "--env"))
        bootstrap = conn_env["VIGIL_KAFKA_BOOTSTRAP"]
        dsn = conn_env["VIGIL_DATABASE_URL"]

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("keep", num_partitions=1, replication_factor=1)])[
            "keep"].result(timeout=30)
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce("keep", key=b"k", value=b"survives restart")
        assert producer.flush(30) == 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES (%s)", ("row survives",))

        assert "kafka, postgres" in vigil(env, "down")
        assert "stopped" in vigil(env, "status")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2)

        vigil(env, "up")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("row survives",)]
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keep-check",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe(["keep"])
        try:
            message = None
            for _ in range(60):
                message = consumer.poll(1.0)
                if message is not None and message.error() is None:
                    break
            assert message is not None and message.value() == b"survives restart"
        finally:
            consumer.close()
    finally:
        vigil(env, "down")
