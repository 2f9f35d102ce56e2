"""The Faust app: one per worker process, topics and tables declared from settings."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import faust

from pipeline.kafka import INPUT_TOPICS, INTERNAL_TOPICS, OUTPUT_TOPICS, SINGLE_PARTITION
from pipeline.settings import Settings
from pipeline.sinks.kafka import Outbox
from pipeline.sinks.timescale import Database

STAGES = ("catalog", "metrics", "detect", "slo", "feedback", "alerts", "incidents", "web",
          "watchdog")
"""Agent modules in `agents/`, each with `register(vigil)`; order is registration order."""


@dataclass
class Vigil:
    """What every agent needs: the app, its settings, topics by short name, the database."""

    app: faust.App
    settings: Settings
    topics: dict[str, Any]
    database: Database
    outbox: Outbox
    catalog: Any = None  # agents.catalog.CatalogView once registered
    stages: dict[str, Any] = field(default_factory=dict)

    def topic(self, short: str) -> Any:
        return self.topics[short]

    def busy(self, besides: Any = None) -> bool:
        """Whether a stage (other than `besides`) may still send something without new input."""
        return any(stage.busy() for stage in self.stages.values() if stage is not besides)

    def recovering(self) -> bool:
        """Whether Faust is restoring tables from their changelogs (input waits meanwhile)."""
        recovery: Any = self.app.tables.recovery  # type: ignore[attr-defined]  # not in the ABC
        return bool(recovery.in_recovery)


def _credentials(settings: Settings) -> Any:
    if not settings.kafka_sasl_mechanism:
        return None
    password = settings.kafka_sasl_password.get_secret_value() if \
        settings.kafka_sasl_password else ""
    return faust.SASLCredentials(username=settings.kafka_sasl_username or "",
                                 password=password, mechanism=settings.kafka_sasl_mechanism)


def create_app(settings: Settings) -> Vigil:
    """Build the app and register every agent; settings must name both servers."""
    if not settings.kafka_bootstrap or not settings.database_url:
        raise ValueError("create_app needs settings with Kafka and the database named")
    brokers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")]
    app = faust.App(
        f"{settings.topic_prefix}worker",
        broker=brokers,
        broker_credentials=_credentials(settings),
        store="memory://",
        key_serializer="raw",  # Vigil encodes its own Avro: Faust must not touch payloads
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=3.0,
        stream_wait_empty=False,
        table_standby_replicas=0,
        producer_max_request_size=16_000_000,
        # Per partition and fetch. At Faust's 1 MiB a backlog arrives ~70 standard
        # messages per partition per round trip and the stages wait on the fetcher half
        # the time (ingest ran at ~0.5M samples/s instead of ~1M).
        consumer_max_fetch_size=8 * 1024 * 1024,
        producer_partitioner=None,
        web_enabled=True,
        web_bind="0.0.0.0",
        web_port=settings.web_port,
        web_in_thread=False,
        autodiscover=False,
        datadir=str(settings.home / "worker"),
    )
    topics = {
        short: app.topic(settings.topic(short), key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw", allow_empty=True,
                         partitions=1 if short in SINGLE_PARTITION else settings.partitions)
        for short in (*INPUT_TOPICS, *OUTPUT_TOPICS, *INTERNAL_TOPICS)
    }
    vigil = Vigil(app, settings, topics, Database(settings.database_dsn() or ""),
                  Outbox(settings))

    for stage in settings.stages or STAGES:
        importlib.import_module(f"agents.{stage}").register(vigil)
    return vigil
