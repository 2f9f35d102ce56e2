"""The metrics path end to end on the real broker and database: exact aggregates, every
sample accounted for, bad input dead-lettered, restarts changing nothing."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer

from pipeline.codec import decode, encode
from pipeline.kafka import client_config, create_topics
from pipeline.producer import MetricsProducer
from pipeline.settings import Settings
from pipeline.workload import TICK_NAME, accounting_workload
from tests.integration.harness import Worker, wait_for

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, on every window boundary
SERVICES = ("checkout", "orders", "payments")
SECONDS = 150
CLOSE_AT = T0 + 400_000  # a sample this late in event time closes every window


def samples(seed: int) -> list[tuple[str, dict[str, str], str, int, float]]:
    """(name, labels, kind, ts_ms, value) in event-time order, one per series per second."""
    rng = np.random.default_rng(seed)
    out = []
    for second in range(SECONDS):
        ts = T0 + second * 1000
        for service in SERVICES:
            counter = float(second * 7 if second < 80 else (second - 80) * 3)  # reset at 80 s
            out.append(("http_requests_total", {"service": service, "code": "200"},
                        "COUNTER", ts, counter))
            out.append(("cpu_utilization", {"service": service}, "GAUGE", ts,
                        float(rng.uniform(0, 1))))
            out.append(("http_request_duration_seconds", {"service": service},
                        "OBSERVATION", ts, float(rng.lognormal(-2, 0.5))))
    return out


def expected_rows(accepted: list[tuple[str, dict[str, str], str, int, float]]
                  ) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """Windows computed independently with numpy, per PRODUCT.md §5."""
    by_series: dict[tuple[str, str], list[tuple[int, float, str]]] = defaultdict(list)
    for name, labels, kind, ts, value in accepted:
        by_series[(name, labels["service"])].append((ts, value, kind))
    rows = {}
    for (name, service), points in by_series.items():
        points.sort()
        ts = np.array([p[0] for p in points])
        values = np.array([p[1] for p in points])
        kind = points[0][2]
        steps = np.diff(values)
        increases = np.where(steps >= 0, steps, values[1:])  # a drop is a reset
        for width in (10, 60):
            starts = ts - ts % (width * 1000)
            for start in np.unique(starts):
                if start + width * 1000 > T0 + SECONDS * 1000:
                    continue  # closed only by the final sample: checked apart
                mask = starts == start
                v = values[mask]
                row: dict[str, Any] = {"count": int(mask.sum()), "sum": float(v.sum()),
                                       "min": float(v.min()), "max": float(v.max()),
                                       "last": float(v[-1])}
                if kind == "COUNTER":
                    increase = float(increases[mask[1:]].sum())
                    row.update(increase=increase, rate=increase / width)
                if kind == "OBSERVATION":
                    row.update({f"p{q}": float(np.quantile(v, q / 100, method="lower"))
                                for q in (50, 90, 95, 99)})
                rows[(name, service, width, int(start))] = row
    return rows


def produce(settings: Settings, seed: int) -> tuple[list[Any], MetricsProducer]:
    producer = MetricsProducer(client_config(settings), settings.topic("metrics"),
                               batch_samples=30, max_age_s=60)
    everything = samples(seed)
    accepted = []
    for i, (name, labels, kind, ts, value) in enumerate(everything):
        if i == 301:
            value = math.nan  # one bad sample inside a good batch
        else:
            accepted.append((name, labels, kind, ts, value))
        producer.add(name, labels, kind, ts, value)
    producer.flush()
    return accepted, producer


def bad_input(settings: Settings, producer: MetricsProducer) -> None:
    producer.send_raw(b"\x00garbage that is not avro\xff", b"checkout")
    no_service = encode("MetricBatch", {"source": "t", "symbols": ["__name__", "x"],
                                        "series": [{"labels_refs": [0, 1], "kind": "GAUGE",
                                                    "ts_ms": [T0], "values": [1.0]}]})
    producer.send_raw(no_service, b"checkout")
    producer.flush()


def close_windows(producer: MetricsProducer) -> None:
    for service in SERVICES:
        producer.add("heartbeat", {"service": service}, "GAUGE", CLOSE_AT, 1.0)
    producer.flush()


def db_rows(dsn: str) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(
            "SELECT name, service, width_s, (extract(epoch FROM bucket) * 1000)::bigint, "
            "count, sum, min, max, last, increase, rate, p50, p90, p95, p99, labels "
            "FROM metric_aggregates WHERE name <> 'heartbeat'")
        found = {}
        for (name, service, width, start, count, total, low, high, last, increase, rate,
             p50, p90, p95, p99, labels) in cursor:
            assert labels["service"] == service
            found[(name, service, width, start)] = {
                "count": count, "sum": total, "min": low, "max": high, "last": last,
                "increase": increase, "rate": rate, "p50": p50, "p90": p90, "p95": p95,
                "p99": p99}
        return found


def assert_rows_match(found: dict[Any, dict[str, Any]], expected: dict[Any, dict[str, Any]]
                      ) -> None:
    missing = set(expected) - set(found)
    assert not missing, f"{len(missing)} windows missing, e.g. {sorted(missing)[:3]}"
    for key, want in expected.items():
        got = found[key]
        for field, value in want.items():
            if field.startswith("p"):
                assert got[field] == pytest.approx(value, rel=0.01), (key, field)
            else:
                assert got[field] == pytest.approx(value, rel=1e-9, abs=1e-9), (key, field)


def dead_letters(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT reason, detail FROM dead_letters ORDER BY reason").fetchall()


def test_aggregates_are_exact_and_every_sample_is_accounted_for(settings: Settings,
                                                                 tmp_path: Path) -> None:
    create_topics(settings)
    dsn = settings.database_dsn() or ""
    with Worker(settings, tmp_path) as worker:
        accepted, producer = produce(settings, seed=7)
        bad_input(settings, producer)
        close_windows(producer)
        expected = expected_rows(accepted)
        wait_for(lambda: len(db_rows(dsn)) >= len(expected), 120, "every window in the table")
        letters = wait_for(lambda: d if len(d := dead_letters(dsn)) >= 3 else None, 60,
                           "three dead letters")
        assert_rows_match(db_rows(dsn), expected)
        reasons = sorted(reason for reason, _ in letters)
        assert reasons == ["missing_service", "non_finite", "undecodable"]
        nan_detail = next(detail for reason, detail in letters if reason == "non_finite")
        assert "nan" in nan_detail.lower() and "service=" in nan_detail or "series=" in nan_detail
        counts = worker.metrics()
        produced = producer.samples_sent + 1  # plus the series without a service
        aggregated = counts["vigil_aggregated_samples_total"]
        dead = sum(v for k, v in counts.items()
                   if k.startswith("vigil_dead_lettered_samples_total"))
        assert aggregated + dead == produced

    outbound = outbound_aggregates(settings, set(expected))
    for key, want in expected.items():
        assert outbound[key]["count"] == want["count"]
        assert outbound[key]["sum"] == pytest.approx(want["sum"], rel=1e-9)


def outbound_aggregates(settings: Settings, wanted: set[Any]) -> dict[Any, dict[str, Any]]:
    """WindowAggregate records on vigil.aggregates, by (name, service, width, start)."""
    consumer = Consumer({**client_config(settings), "group.id": "check-aggregates",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("aggregates")])
    found: dict[Any, dict[str, Any]] = {}
    try:
        def more() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                record = decode("WindowAggregate", message.value())
                assert message.key() == record["series_id"].encode()
                found[(record["name"], record["service"], record["width_s"],
                       record["window_start_ms"])] = record
            return wanted <= set(found)
        wait_for(more, 60, f"{len(wanted)} windows on vigil.aggregates", every_s=0)
    finally:
        consumer.close()
    return found


# -- the accounting workload: every sample accounted for, across a kill -9 -------------

def produce_messages(settings: Settings, messages: list[Any]) -> MetricsProducer:
    producer = MetricsProducer(client_config(settings), settings.topic("metrics"))
    for message in messages:
        producer.send_raw(message.payload(), message.key)
    producer.flush()
    return producer


def windows_in_db(dsn: str) -> dict[tuple[str, int, int], dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(
            "SELECT series_id, width_s, (extract(epoch FROM bucket) * 1000)::bigint, count, "
            "sum, min, max, mean, last, increase, rate, p50, p90, p95, p99 "
            "FROM metric_aggregates WHERE name <> %s AND service LIKE 'acct-%%'", (TICK_NAME,))
        fields = ("count", "sum", "min", "max", "mean", "last", "increase", "rate",
                  "p50", "p90", "p95", "p99")
        return {(row[0], row[1], row[2]): dict(zip(fields, row[3:], strict=True))
                for row in cursor}


def consumed_messages(worker: Worker) -> float:
    return worker.metrics().get('vigil_consumed_messages_total{topic="metrics"}', 0.0)


@pytest.mark.parametrize("crash", [False, True], ids=["uninterrupted", "kill-9-midway"])
def test_accounting_workload_lands_exactly(settings: Settings, tmp_path: Path,
                                           crash: bool) -> None:
    workload = accounting_workload(seed=3)
    create_topics(settings)
    dsn = settings.database_dsn() or ""
    half = len(workload.messages) // 2
    worker = Worker(settings, tmp_path, name="first").start()
    try:
        produce_messages(settings, workload.messages[:half])
        if crash:
            wait_for(lambda: consumed_messages(worker) >= half // 2, 60, "half consumed")
            worker.kill()
            worker = Worker(settings, tmp_path, name="second").start()
        produce_messages(settings, workload.messages[half:])
        topic = settings.topic("metrics")
        wait_for(lambda: dead_letter_samples(dsn, topic) >= sum(workload.expected.dead_samples
                                                         .values()), 90,
                 "every bad sample dead-lettered (the unkeyed message is rerouted first)")
        produce_messages(settings, workload.closing)
        expected = workload.expected.windows
        wait_for(lambda: len(windows_in_db(dsn)) >= len(expected), 120,
                 f"{len(expected)} windows in metric_aggregates")
        found = windows_in_db(dsn)
        assert set(found) == set(expected)
        for key, want in expected.items():
            got = found[key]
            for field, value in got.items():
                target = getattr(want, field)
                if target is None:
                    assert value is None, (key, field)
                elif field.startswith("p"):
                    assert value == pytest.approx(target, rel=0.01), (key, field)
                else:
                    assert value == pytest.approx(target, rel=1e-9, abs=1e-9), (key, field)
        assert dead_letter_samples_by_reason(dsn, topic) == workload.expected.dead_samples
    finally:
        worker.stop()


def dead_letter_rows(dsn: str, topic: str) -> list[tuple[str, bytes]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT reason, payload FROM dead_letters WHERE topic = %s",
                            (topic,)).fetchall()


def dead_letter_samples_by_reason(dsn: str, topic: str) -> dict[str, int]:
    """Samples inside dead-lettered MetricBatches, by reason (undecodable bytes hold none)."""
    counts: dict[str, int] = defaultdict(int)
    for reason, payload in dead_letter_rows(dsn, topic):
        if reason == "undecodable":
            continue
        batch = decode("MetricBatch", bytes(payload))
        counts[reason] += sum(len(series["values"]) for series in batch["series"])
    return dict(counts)


def dead_letter_samples(dsn: str, topic: str) -> int:
    return sum(dead_letter_samples_by_reason(dsn, topic).values())
