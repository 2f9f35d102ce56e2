"""The detection stage on the real broker and database: a latency spike after a deployment
becomes one anomaly row, one event and an alert condition; warm-up stays quiet; detector
state survives a restart in mid warm-up, and a kill -9 after the detection duplicates
nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.codec import decode, encode
from pipeline.envelope import unwrap
from pipeline.kafka import client_config, create_topics
from pipeline.producer import MetricsProducer, producer_config
from pipeline.settings import Settings
from tests.integration.harness import Lagging, Worker, wait_for

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
W = 10_000  # the detection width
GRACE = 5_000
WARMUP = 140  # windows; a detector needs 120 before it may alert
RESTART_AT = 70  # the first worker dies here: warm-up completes only if state survives
SPIKE = WARMUP  # window index of the spike; it lasts SPIKE_WINDOWS windows
SPIKE_WINDOWS = 3
SERVICES = ("checkout", "orders")
METRIC = "http_request_duration_seconds"
RULES = """\
kind: ThresholdRule
name: CheckoutSlow
selector: 'http_request_duration_seconds{service="checkout"}'
field: p99
op: '>'
value: 0.8
"""


def produce_windows(producer: MetricsProducer, first: int, last: int, seed: int) -> None:
    """Five latency observations a second per service, one message per service and window
    (so services sharing a partition stay within the grace); checkout is slow in the spike."""
    rng = np.random.default_rng(seed)
    for window in range(first, last):
        for service in SERVICES:
            spiking = service == "checkout" and SPIKE <= window < SPIKE + SPIKE_WINDOWS
            low, high = (1.0, 1.5) if spiking else (0.10, 0.20)
            ts = T0 + window * W + np.repeat(np.arange(10) * 1000, 5)
            producer.add_many(METRIC, {"service": service}, "OBSERVATION", ts.tolist(),
                              rng.uniform(low, high, len(ts)).tolist())
        producer.flush()


def send(settings: Settings, topic: str, record_type: str, key: bytes,
         record: dict[str, Any]) -> None:
    producer = Producer(producer_config(client_config(settings)))
    producer.produce(settings.topic(topic), key=key, value=encode(record_type, record))
    assert producer.flush(30) == 0


def anomaly_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(
            "SELECT anomaly_id, service, metric_name, type, severity, current_value, "
            "expected_value, (extract(epoch FROM window_start) * 1000)::bigint AS start_ms, "
            "(extract(epoch FROM detected_at) * 1000)::bigint AS detected_ms, context "
            "FROM anomalies ORDER BY detected_at, anomaly_id")
        names = [c.name for c in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def all_committed(settings: Settings, short: str) -> bool | Lagging:
    """The stage acknowledged (so checkpointed) everything on `short`; else what lags."""
    consumer = Consumer({**client_config(settings), "group.id": f"{settings.topic_prefix}worker",
                         "enable.auto.commit": False})
    try:
        parts = [TopicPartition(settings.topic(short), p) for p in range(settings.partitions)]
        committed = consumer.committed(parts, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        behind = Lagging(f"{c.topic}[{c.partition}] committed {c.offset} of {end}"
                         for c, end in zip(committed, ends, strict=True)
                         if c.offset < end and end > 0)
        return behind or True
    finally:
        consumer.close()


def read_topic(settings: Settings, short: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) on a topic now."""
    consumer = Consumer({**client_config(settings), "group.id": f"check-{short}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    parts = [TopicPartition(settings.topic(short), p) for p in range(settings.partitions)]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts}
    consumer.assign(parts)
    found: list[tuple[bytes, bytes]] = []
    positions = {p: 0 for p in ends}
    try:
        def done() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.append((message.key() or b"", message.value() or b""))
                positions[message.partition() or 0] = (message.offset() or 0) + 1
            return all(positions[p] >= end for p, end in ends.items())
        wait_for(done, 60, f"all of {short}", every_s=0)
    finally:
        consumer.close()
    return found


def test_spike_after_deployment_is_one_anomaly_surviving_restarts(settings: Settings,
                                                                   tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "rules").mkdir(parents=True)
    (config / "rules" / "checkout.yaml").write_text(RULES)
    settings = settings.model_copy(update={"config_dir": config})
    create_topics(settings)
    dsn = settings.database_dsn() or ""
    env = {"VIGIL_DETECT_SEASON_S": "0"}
    send(settings, "catalog", "ServiceInfo", b"checkout", {
        "service": "checkout", "team": "payments", "tier": "CRITICAL",
        "environment": "prod", "runbook_url": "https://runbooks/checkout",
        "depends_on": [], "channels": []})
    producer = MetricsProducer(client_config(settings), settings.topic("metrics"),
                               batch_samples=1000, max_age_s=60)

    with Worker(settings, tmp_path, "first", **env) as worker:
        produce_windows(producer, 0, RESTART_AT, seed=1)
        wait_for(lambda: worker.metrics().get(
            'vigil_consumed_messages_total{topic="internal.windows"}', 0) >= len(SERVICES) *
            (RESTART_AT - 2), 120, "the first windows judged")
        wait_for(lambda: all_committed(settings, "internal.windows"), 60, "a checkpoint")
        # A clean stop: a kill -9 would cost a session timeout before the next one starts.

    spike_start = T0 + SPIKE * W
    deployment = {"ts_ms": spike_start - 3_000, "service": "checkout", "kind": "DEPLOYMENT",
                  "description": "checkout v2.3.1", "attributes": {"version": "2.3.1"}}
    with Worker(settings, tmp_path, "second", **env) as worker:
        produce_windows(producer, RESTART_AT, WARMUP, seed=2)
        send(settings, "events", "ChangeEvent", b"checkout", deployment)
        produce_windows(producer, WARMUP, WARMUP + 8, seed=3)
        found = wait_for(lambda: anomaly_rows(dsn), 120, "an anomaly row")
        worker.kill()

    with Worker(settings, tmp_path, "third", **env) as worker:
        produce_windows(producer, WARMUP + 8, WARMUP + 20, seed=4)
        wait_for(lambda: worker.metrics().get(
            'vigil_consumed_messages_total{topic="internal.windows"}', 0) >= len(SERVICES) * 10,
            120, "windows after the spike judged")
        wait_for(lambda: all_committed(settings, "internal.windows"), 60, "a checkpoint")

    rows = anomaly_rows(dsn)
    assert len(rows) == 1, rows  # one episode, one anomaly; nothing in warm-up or after
    (row,) = rows
    assert row == found[0]
    assert (row["service"], row["metric_name"], row["type"]) == ("checkout", METRIC,
                                                                 "LATENCY_SPIKE")
    assert spike_start <= row["start_ms"] < spike_start + 2 * W
    assert row["detected_ms"] == row["start_ms"] + W + GRACE
    assert row["severity"] == "critical" and row["current_value"] > 0.9
    assert 0.1 <= row["expected_value"] <= 0.2
    assert row["context"]["recent_deployments"] == [
        {"ts_ms": deployment["ts_ms"], "kind": "DEPLOYMENT", "description": "checkout v2.3.1"}]

    events = [(key, decode("PerformanceAnomalyDetectedEvent", value))
              for key, value in read_topic(settings, "anomalies")]
    assert events and {e["anomaly_id"] for _, e in events} == {row["anomaly_id"]}
    assert all(key == b"checkout" and e == events[0][1] for key, e in events)

    conditions = [record for kind, record in (unwrap(value) for _, value in
                                              read_topic(settings, "internal.conditions"))
                  if kind == "AlertCondition"]
    pulses = [c for c in conditions if c["source"] == "anomaly"]
    assert pulses and all(c == pulses[0] for c in pulses)
    assert pulses[0]["labels"] == {"alertname": "LatencySpike", "service": "checkout",
                                   "severity": "critical", "metric": METRIC, "field": "p99"}
    assert pulses[0]["annotations"]["runbook_url"] == "https://runbooks/checkout"
    assert pulses[0]["annotations"]["anomaly_id"] == row["anomaly_id"]
    slow = [c for c in conditions if c["labels"]["alertname"] == "CheckoutSlow"]
    assert {c["active"] for c in slow} == {True, False}  # fired in the spike, cleared after
    assert min(c["ts_ms"] for c in slow if c["active"]) == spike_start + W + GRACE
