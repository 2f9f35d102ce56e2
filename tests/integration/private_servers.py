"""Private Kafka and PostgreSQL servers for tests that stop or restart them.

The shared test servers serve every other test at once, so a test that takes a server
away starts its own pair under its tmp dir, on free ports, and stops them afterwards.
Also: a fresh database per run on any server, and settings for one run of a worker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from pydantic import SecretStr

from pipeline import ROOT
from pipeline.local.kafka import EmbeddedKafka
from pipeline.local.postgres import EmbeddedPostgres
from pipeline.local.process import port_open
from pipeline.local.servers import Endpoints
from pipeline.settings import Settings
from tests.integration.harness import free_port


@dataclass(frozen=True)
class PrivateServers:
    kafka: EmbeddedKafka
    postgres: EmbeddedPostgres

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.kafka.bootstrap, self.postgres.dsn())

    def stop(self) -> None:
        self.kafka.stop()
        self.postgres.stop()


def _jar_cache(version: str) -> Path:
    """A cache that already holds this Kafka version's jars (they take a Maven run to
    fetch), else the test servers' cache, which `ensure_jars` then fills."""
    homes = [Path(os.environ.get("VIGIL_TEST_HOME", ROOT / ".vigil" / "test")),
             Settings().home]
    for home in homes:
        if (home / "cache" / f"kafka-{version}" / "libs" / ".complete").exists():
            return home / "cache"
    (homes[0] / "cache").mkdir(parents=True, exist_ok=True)
    return homes[0] / "cache"


def _free_pair() -> tuple[int, int]:
    """Two free ports for a broker and its controller."""
    while True:
        port, controller = free_port(), free_port()
        if port != controller and not port_open("127.0.0.1", controller):
            return port, controller


@contextmanager
def private_servers(home: Path, kafka_version: str = Settings().kafka_version
                    ) -> Iterator[PrivateServers]:
    """Start a broker and a database server of our own; stop them and remove their data."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(_jar_cache(kafka_version), target_is_directory=True)
    port, controller = _free_pair()
    servers = PrivateServers(EmbeddedKafka(home, port, controller, kafka_version),
                             EmbeddedPostgres(home, free_port()))
    try:
        servers.postgres.start()
        servers.kafka.start()
        yield servers
    finally:
        servers.stop()
        # The data dir may live outside home (/var/lib/vigil) when the server's account
        # cannot reach home; it is ours alone either way.
        shutil.rmtree(servers.postgres.data_dir, ignore_errors=True)


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """An empty database on the server of `admin_dsn`, dropped afterwards (unless
    VIGIL_TEST_KEEP_DB is set, to look at a failed run's rows)."""
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    try:
        yield psycopg.conninfo.make_conninfo("", **{**base, "dbname": name})
    finally:
        if not os.environ.get("VIGIL_TEST_KEEP_DB"):
            try:
                with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(name)))
            except psycopg.OperationalError:
                pass  # the server is gone (a private one stopped first): so is the database


def run_settings(endpoints: Endpoints, dsn: str, home: Path, **fields: object) -> Settings:
    """Settings for one run: its own topic prefix, database and home."""
    return Settings(home=home, kafka_bootstrap=endpoints.kafka_bootstrap,
                    database_url=SecretStr(dsn), topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                    **fields)  # type: ignore[arg-type]
