"""Which Kafka and PostgreSQL Vigil talks to: the ones named in settings, else embedded."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from pipeline.local.kafka import EmbeddedKafka
from pipeline.local.postgres import EmbeddedPostgres
from pipeline.settings import Settings


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str


def embedded_kafka(settings: Settings) -> EmbeddedKafka:
    return EmbeddedKafka(settings.home, settings.kafka_port, settings.kafka_controller_port,
                         settings.kafka_version)


def embedded_postgres(settings: Settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.home, settings.pg_port)


def up(settings: Settings) -> Endpoints:
    """Start whatever settings do not name; idempotent."""
    if settings.kafka_bootstrap is None:
        embedded_kafka(settings).start()
    if settings.database_url is None:
        embedded_postgres(settings).start()
    return endpoints(settings)


def down(settings: Settings) -> list[str]:
    """Stop the embedded servers (never external ones); returns what was stopped."""
    stopped = []
    for name, server in (("kafka", embedded_kafka(settings)),
                         ("postgres", embedded_postgres(settings))):
        if server.running():
            server.stop()
            stopped.append(name)
    return stopped


def endpoints(settings: Settings) -> Endpoints:
    bootstrap = settings.kafka_bootstrap or embedded_kafka(settings).bootstrap
    dsn = settings.database_dsn() or embedded_postgres(settings).dsn()
    return Endpoints(bootstrap, dsn)


def with_endpoints(settings: Settings) -> Settings:
    """Settings with both servers named, so later code never asks where they are."""
    found = endpoints(settings)
    return settings.model_copy(update={"kafka_bootstrap": found.kafka_bootstrap,
                                       "database_url": SecretStr(found.database_url)})
