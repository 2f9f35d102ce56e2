"""Real servers for integration tests: those named by VIGIL_KAFKA_BOOTSTRAP and
VIGIL_DATABASE_URL, else the embedded launcher of `vigil up` on test-only ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from pipeline import ROOT
from pipeline.local import servers as local
from pipeline.settings import Settings

TEST_HOME = Path(os.environ.get("VIGIL_TEST_HOME", ROOT / ".vigil" / "test"))


def _server_settings() -> Settings:
    kafka_port = int(os.environ.get("VIGIL_TEST_KAFKA_PORT", "39192"))
    return Settings(home=TEST_HOME, kafka_port=kafka_port, kafka_controller_port=kafka_port + 1,
                    pg_port=int(os.environ.get("VIGIL_TEST_PG_PORT", "35532")))


@pytest.fixture(scope="session")
def endpoints() -> Iterator[local.Endpoints]:
    bootstrap = os.environ.get("VIGIL_KAFKA_BOOTSTRAP")
    dsn = os.environ.get("VIGIL_DATABASE_URL")
    if bootstrap and dsn:
        yield local.Endpoints(bootstrap, dsn)
        return
    settings = _server_settings()
    started = [s for s in (local.embedded_kafka(settings), local.embedded_postgres(settings))
               if not s.running()]
    found = local.up(settings)
    yield local.Endpoints(bootstrap or found.kafka_bootstrap, dsn or found.database_url)
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: local.Endpoints) -> str:
    return endpoints.kafka_bootstrap


@pytest.fixture(scope="module")
def database_url(endpoints: local.Endpoints) -> Iterator[str]:
    """A fresh, empty database per test module, dropped afterwards."""
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = psycopg.conninfo.conninfo_to_dict(endpoints.database_url)
    yield psycopg.conninfo.make_conninfo(**{**base, "dbname": name})
    if os.environ.get("VIGIL_TEST_KEEP_DB"):  # to look at a failed test's rows
        return
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture
def topic_prefix() -> str:
    """Topics unique to one test, so tests run in any order against one broker."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(kafka_bootstrap: str, database_url: str, topic_prefix: str,
             tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", kafka_bootstrap=kafka_bootstrap,
                    database_url=SecretStr(database_url), topic_prefix=topic_prefix,
                    partitions=2)
