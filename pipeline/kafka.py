"""The only place that configures Kafka clients: admin, producer and consumer settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.settings import Settings

INPUT_TOPICS = ("metrics", "logs", "spans", "health", "events", "catalog", "feedback")
OUTPUT_TOPICS = ("aggregates", "anomalies", "alerts", "incidents", "slo", "health-status",
                 "remediation", "dlq")
COMPACTED = frozenset({"catalog"})
INTERNAL_TOPICS = ("internal.windows", "internal.conditions", "internal.incident-feed")
"""Between stages, keyed by service: closed windows, alert conditions; and one partition
that sees every alert, for correlation across services."""
SINGLE_PARTITION = frozenset({"internal.incident-feed"})
RECORD_TYPES = {
    "metrics": "MetricBatch", "logs": "LogBatch", "spans": "SpanBatch",
    "health": "HealthCheckResult", "events": "ChangeEvent", "catalog": "ServiceInfo",
    "feedback": "Feedback", "aggregates": "WindowAggregate",
    "anomalies": "PerformanceAnomalyDetectedEvent", "alerts": "AlertEvent",
    "incidents": "IncidentEvent", "slo": "SloStatus", "health-status": "SystemHealthStatusEvent",
    "remediation": "RemediationCommand", "dlq": "DeadLetter",
    **{short: "InternalMessage" for short in INTERNAL_TOPICS},
}
"""The Avro record type of each topic's values, by short name."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings common to every client, security options included."""
    if settings.kafka_bootstrap is None:
        raise ValueError("no Kafka bootstrap servers: run `vigil up` or set VIGIL_KAFKA_BOOTSTRAP")
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap,
                              "security.protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        config["sasl.password"] = (settings.kafka_sasl_password.get_secret_value()
                                   if settings.kafka_sasl_password else "")
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    return config


def topic_specs(settings: Settings) -> list[TopicSpec]:
    specs = []
    for short in (*INPUT_TOPICS, *OUTPUT_TOPICS, *INTERNAL_TOPICS):
        config = {"cleanup.policy": "compact"} if short in COMPACTED else {}
        partitions = 1 if short in SINGLE_PARTITION else settings.partitions
        specs.append(TopicSpec(settings.topic(short), partitions, config))
    return specs


def create_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every Vigil topic that is missing; returns the names created."""
    admin = AdminClient(client_config(settings))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [spec for spec in topic_specs(settings) if spec.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(spec.name, num_partitions=spec.partitions,
                  replication_factor=settings.replication_factor, config=spec.config)
         for spec in wanted],
        operation_timeout=timeout_s, request_timeout=timeout_s)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except Exception as exc:  # a concurrent creator is fine; anything else is not
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return sorted(created)


def group_progress(group: Consumer, topics: list[str], partitions: int,
                   timeout_s: float = 5.0) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) → (the consumer group's committed offset, the partition's end),
    where `group`'s group.id names the group (it need not be a member). A partition the
    group never committed counts from its first record. Raises when the broker does not
    answer."""
    wanted = [TopicPartition(topic, p) for topic in topics for p in range(partitions)]
    found = {}
    for tp in group.committed(wanted, timeout=timeout_s):
        if tp.error is not None:
            raise RuntimeError(f"committed offset of {tp.topic}[{tp.partition}]: {tp.error}")
        low, high = group.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                timeout=timeout_s, cached=False)
        found[tp.topic, tp.partition] = (max(tp.offset, low), high)
    return found
