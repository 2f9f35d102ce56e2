"""Faults against the real servers (PRODUCT.md §8, reliability): kill -9 of the worker at
random points, a database outage, a broker restart. Each disturbed run is compared with an
undisturbed run of the same deterministic input, table by table and topic by topic: the
same rows, and on the outbound topics the same keys with the same values.

The crash sweep uses the shared servers; the outage and restart tests stop servers, so
they start their own (`tests/integration/private_servers.py`).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg import sql

from pipeline.ingest import partition_for
from pipeline.kafka import (
    SINGLE_PARTITION,
    client_config,
    create_topics,
)
from pipeline.local.servers import Endpoints
from pipeline.producer import MetricsProducer
from pipeline.settings import Settings
from pipeline.workload import DEFAULT_START_MS, Chunk, Message, expected_results
from tests.integration.harness import Settling, Worker, wait_for
from tests.integration.private_servers import (
    PrivateServers,
    fresh_database,
    private_servers,
    run_settings,
)

pytestmark = pytest.mark.integration

SERVICES = ("flt-a", "flt-b", "flt-e", "flt-k", "flt-c")
"""On four partitions: flt-c alone on 0, with an SLO that never burns; flt-a and flt-b on
1, flt-e and flt-k on 3, where the rules fire on flt-b and flt-e; nothing on 2. So the
incident stage orders the alerts of two partitions, and must not wait for a partition
that never speaks. Each partition's alerts come from one condition source: the alert
stage's inhibition sees another source's alerts as they arrive."""
PARTITIONS = 4
SECONDS = 480  # of event time, in one message per service per STEP_S
STEP_S = 5
EXTRA_GAUGES = 10  # per service: volume, so input that keeps arriving weighs something
ERRORS_FROM, ERRORS_TO = 120, 300  # flt-b answers ~20 % 5xx: ErrorRatioHigh
HOT_FROM, HOT_TO = 150, 240  # flt-e's CPU above 0.9: CpuHot
TABLES = ("metric_aggregates", "anomalies", "alerts", "alert_events", "incidents",
          "incident_events", "slo_status", "dead_letters")
TICK = "vigil_fault_tick"  # closes every window; its own stay open
# vigil.dlq is left out: its records carry the run's topic names and receive times; the
# dead_letters table is compared instead.
OUTBOUND = ("aggregates", "anomalies", "alerts", "incidents", "slo", "remediation")

RULES = """\
kind: ThresholdRule
name: ErrorRatioHigh
ratio: {numerator: 'http_requests_total{code=~"5.."}', denominator: 'http_requests_total',
        field: increase}
op: '>'
value: 0.05
width_s: 60
for: 1m
severity: critical
---
kind: ThresholdRule
name: CpuHot
selector: 'process_cpu_utilization'
field: max
op: '>='
value: 0.9
width_s: 10
for: 30s
severity: warning
"""

SLO = """\
apiVersion: openslo/v1
kind: SLO
metadata: {name: flt-c-availability}
spec:
  service: flt-c
  budgetingMethod: Occurrences
  timeWindow: [{duration: 1d, isRolling: true}]
  objectives: [{target: 0.95}]
  indicator:
    spec:
      ratioMetric:
        counter: true
        good:  {metricSource: {type: vigil, spec: {query: 'http_requests_total{code!~"5.."}'}}}
        total: {metricSource: {type: vigil, spec: {query: 'http_requests_total'}}}
"""


# -- the workload ----------------------------------------------------------------------

def workload(seed: int = 11) -> list[Message]:
    """One message per service per STEP_S of event time, round-robin, then one tick per
    service far enough on to close every window; one undecodable message in the middle."""
    rng = np.random.default_rng(seed)
    seconds = np.arange(SECONDS, dtype=np.int64)
    halves = np.arange(2 * SECONDS, dtype=np.int64) * 500
    data: dict[str, list[Chunk]] = {}
    for service in SERVICES:
        errors_rate = np.where((seconds >= ERRORS_FROM) & (seconds < ERRORS_TO)
                               & (service == "flt-b"), 12.0, 0.3)
        cpu = np.round(rng.uniform(0.2, 0.6, SECONDS), 3)
        if service == "flt-e":
            cpu[HOT_FROM:HOT_TO] = np.round(rng.uniform(0.92, 0.99, HOT_TO - HOT_FROM), 3)
        ts = DEFAULT_START_MS + seconds * 1000
        data[service] = [
            Chunk("http_requests_total", {"service": service, "code": "200"}, "COUNTER", ts,
                  np.cumsum(rng.poisson(50, SECONDS)).astype(np.float64)),
            Chunk("http_requests_total", {"service": service, "code": "500"}, "COUNTER", ts,
                  np.cumsum(rng.poisson(errors_rate)).astype(np.float64)),
            Chunk("http_request_duration_seconds", {"service": service}, "OBSERVATION",
                  DEFAULT_START_MS + halves, rng.lognormal(np.log(0.05), 0.5, halves.size)),
            Chunk("process_cpu_utilization", {"service": service}, "GAUGE", ts, cpu),
            *(Chunk("queue_depth", {"service": service, "queue": f"q{i}"}, "GAUGE", ts,
                    rng.uniform(0, 100, SECONDS).round(2)) for i in range(EXTRA_GAUGES)),
        ]
    messages = []
    for lo in range(DEFAULT_START_MS, DEFAULT_START_MS + SECONDS * 1000, STEP_S * 1000):
        for service in SERVICES:
            messages.append(Message(service.encode(), tuple(
                Chunk(c.name, c.labels, c.kind, c.ts_ms[keep], c.values[keep])
                for c in data[service]
                if (keep := (c.ts_ms >= lo) & (c.ts_ms < lo + STEP_S * 1000)).any())))
        if lo == DEFAULT_START_MS + 100_000:
            messages.append(Message(b"flt-a", raw=b"\x00 not a MetricBatch"))
    tick = np.array([DEFAULT_START_MS + (SECONDS + 120) * 1000], dtype=np.int64)
    messages += [Message(s.encode(), (Chunk(TICK, {"service": s}, "GAUGE", tick,
                                            np.ones(1)),)) for s in SERVICES]
    return messages


MESSAGES = workload()


def write_config(directory: Path) -> Path:
    (directory / "rules").mkdir(parents=True, exist_ok=True)
    (directory / "slos").mkdir(exist_ok=True)
    (directory / "rules" / "faults.yaml").write_text(RULES)
    (directory / "slos" / "flt-c.yaml").write_text(SLO)
    return directory


def producer(settings: Settings) -> MetricsProducer:
    return MetricsProducer(client_config(settings), settings.topic("metrics"))


def send(target: MetricsProducer, messages: list[Message]) -> None:
    for message in messages:
        target.send_raw(message.payload(), message.key)


# -- what a run leaves behind ----------------------------------------------------------

@dataclass
class Results:
    columns: dict[str, list[str]]
    tables: dict[str, list[tuple[Any, ...]]]
    topics: dict[str, dict[bytes | None, frozenset[bytes]]]

    def records(self, table: str) -> list[dict[str, Any]]:
        return [dict(zip(self.columns[table], row, strict=True)) for row in self.tables[table]]


def _comparable(value: Any, prefix: str) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and value.startswith(prefix):
        return value[len(prefix):]  # dead letters name their topic
    return value


def table_rows(settings: Settings) -> tuple[dict[str, list[str]],
                                             dict[str, list[tuple[Any, ...]]]]:
    """Column names and every row of every result table, sorted; dead letters without
    their `ts` (when the broker received the bad message: it differs from run to run)."""
    columns, found = {}, {}
    with psycopg.connect(settings.database_dsn() or "") as conn:
        for table in TABLES:
            cursor = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            names = [c.name for c in cursor.description or ()]
            keep = [i for i, name in enumerate(names)
                    if not (table == "dead_letters" and name == "ts")]
            columns[table] = [names[i] for i in keep]
            found[table] = sorted((tuple(_comparable(row[i], settings.topic_prefix)
                                         for i in keep) for row in cursor), key=repr)
    return columns, found


def topic_contents(settings: Settings, short: str) -> dict[bytes | None, frozenset[bytes]]:
    """Every distinct value on an outbound topic, by key (repeats carry the same key and
    value, and collapse here)."""
    consumer = Consumer({**client_config(settings), "group.id": "fault-check",
                         "enable.auto.commit": False})
    topic = settings.topic(short)
    partitions = 1 if short in SINGLE_PARTITION else settings.partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)}
    found: dict[bytes | None, set[bytes]] = defaultdict(set)
    open_ = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in open_])
    try:
        deadline = time.monotonic() + 60
        while open_:
            assert time.monotonic() < deadline, f"reading {topic}: {open_} not at the end"
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found[message.key()].add(message.value() or b"")
            positions = consumer.position([TopicPartition(topic, p) for p in open_])
            open_ -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
    finally:
        consumer.close()
    return {key: frozenset(values) for key, values in found.items()}


def results(settings: Settings) -> Results:
    return Results(*table_rows(settings), {s: topic_contents(settings, s) for s in OUTBOUND})


def consumed(worker: Worker) -> float:
    return worker.metrics().get('vigil_consumed_messages_total{topic="metrics"}', 0.0)


def assert_same(got: Results, want: Results) -> None:
    for table, rows in want.tables.items():
        found = got.tables[table]
        missing = [r for r in rows if r not in set(found)]
        extra = [r for r in found if r not in set(rows)]
        assert not missing and not extra, (
            f"{table}: {len(missing)} rows missing, {len(extra)} unexpected "
            f"(of {len(rows)}), e.g. missing {missing[:2]}, unexpected {extra[:2]}")
    for short, by_key in want.topics.items():
        found_keys = got.topics[short]
        assert set(found_keys) == set(by_key), f"{short}: keys differ"
        differ = [k for k in by_key if found_keys[k] != by_key[k]]
        assert not differ, f"{short}: values differ for {len(differ)} keys, e.g. {differ[:3]}"


# -- the undisturbed run ---------------------------------------------------------------

@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("faults") / "config")


def fault_settings(endpoints: Endpoints, dsn: str, home: Path, config: Path) -> Settings:
    return run_settings(endpoints, dsn, home, partitions=PARTITIONS, config_dir=config)


@pytest.fixture(scope="module")
def undisturbed(endpoints: Endpoints, config_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """The reference: the whole workload through one worker that nothing disturbs."""
    home = tmp_path_factory.mktemp("undisturbed")
    with fresh_database(endpoints.database_url) as dsn:
        settings = fault_settings(endpoints, dsn, home, config_dir)
        create_topics(settings)
        with Worker(settings, home) as worker:
            out = producer(settings)
            send(out, MESSAGES)
            out.flush()
            Settling(settings, worker).wait()
        found = results(settings)
    check_reference(found)
    yield found


def test_the_layout_is_the_one_described() -> None:
    assert {s: partition_for(s.encode(), PARTITIONS) for s in SERVICES} == {
        "flt-c": 0, "flt-a": 1, "flt-b": 1, "flt-e": 3, "flt-k": 3}


def check_reference(found: Results) -> None:
    """The reference itself is right: aggregates as computed here independently, the
    rules fired, the SLO reported every minute, the bad message dead-lettered."""
    expected = {k: w for k, w in expected_results(MESSAGES).windows.items()
                if w.name != TICK}
    windows = {(r["series_id"], r["width_s"], int(r["bucket"].timestamp() * 1000)): r
               for r in found.records("metric_aggregates") if r["name"] != TICK}
    assert set(windows) == set(expected)
    for key, want in expected.items():
        row = windows[key]
        assert row["count"] == want.count, key
        assert math.isclose(row["sum"], want.sum, rel_tol=1e-9), key
    alerts = {(r["alertname"], r["service"], r["status"]) for r in found.records("alerts")}
    assert alerts == {("ErrorRatioHigh", "flt-b", "resolved"), ("CpuHot", "flt-e", "resolved")}
    assert found.tables["incidents"], "the alerts opened incidents"
    assert len(found.tables["slo_status"]) >= SECONDS // 60 - 1  # minute 0 primes counters
    assert [r["reason"] for r in found.records("dead_letters")] == ["undecodable"]


# -- 1: kill -9 at random points -------------------------------------------------------

def kill_points(runs: int, seed: int = 6) -> list[int]:
    """One point in each of `runs` equal stretches of the input, drawn at random."""
    edges = np.linspace(10, len(MESSAGES) - 10, runs + 1).astype(int)
    rng = np.random.default_rng(seed)
    return [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


KILL_AFTER = kill_points(3)


@pytest.mark.parametrize("kill_after", KILL_AFTER)
def test_kill_9_changes_nothing(undisturbed: Results, endpoints: Endpoints, config_dir: Path,
                                tmp_path: Path, kill_after: int) -> None:
    with fresh_database(endpoints.database_url) as dsn:
        settings = fault_settings(endpoints, dsn, tmp_path / "home", config_dir)
        create_topics(settings)
        with Worker(settings, tmp_path, name="first") as first:
            out = producer(settings)
            send(out, MESSAGES)
            out.flush()
            wait_for(lambda: consumed(first) >= kill_after, 120,
                     f"{kill_after} messages consumed", every_s=0.01)
            at = consumed(first)
            first.kill()
        with Worker(settings, tmp_path, name="second") as second:
            Settling(settings, second).wait()
        print(f"\nkilled after {at:.0f} of {len(MESSAGES)} messages; restarted after a "
              f"stall {second.stalls()} times")
        assert at < len(MESSAGES), "the kill came after the last message"
        assert_same(results(settings), undisturbed)


# -- 2 and 3: private servers taken away -----------------------------------------------

@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServers]:
    with private_servers(tmp_path_factory.mktemp("servers")) as servers:
        yield servers


def ready_checks(worker: Worker) -> dict[str, bool]:
    status, body = worker.get("/health/ready")
    return json.loads(body).get("checks", {}) if status in (200, 503) else {}


def run_database_outage(private: PrivateServers, config: Path, tmp_path: Path,
                        outage_s: float) -> Results:
    """Stop PostgreSQL for `outage_s` after a third of the input, feed the rest meanwhile,
    bring it back; returns what the run left behind."""
    with fresh_database(private.endpoints.database_url) as dsn:
        settings = fault_settings(private.endpoints, dsn, tmp_path / "home", config)
        create_topics(settings)
        first = len(MESSAGES) // 3
        with Worker(settings, tmp_path) as worker:
            out = producer(settings)
            send(out, MESSAGES[:first])
            out.flush()
            wait_for(lambda: consumed(worker) >= first // 2, 120, "a sixth consumed")
            before = worker.rss_kib()
            private.postgres.stop()
            stopped = time.monotonic()
            send(out, MESSAGES[first:])
            out.flush()
            wait_for(lambda: ready_checks(worker).get("database") is False, 30,
                     "readiness to report the database down")
            samples: list[tuple[float, int]] = []

            def outage_over() -> bool:
                samples.append((time.monotonic() - stopped, worker.rss_kib()))
                assert ready_checks(worker).get("database") is False
                return samples[-1][0] >= outage_s

            wait_for(outage_over, outage_s + 30, f"{outage_s:.0f} s of outage", every_s=0.5)
            private.postgres.start()
            back = time.monotonic()
            Settling(settings, worker).wait()
            caught_up = time.monotonic() - back
            wait_for(worker.ready, 30, "readiness with the database back")
        rss = np.array([kib for _, kib in samples]) / 1024
        half = len(rss) // 2
        print(f"\ndatabase outage {samples[-1][0]:.0f} s: worker RSS {before / 1024:.0f} MiB "
              f"before, {rss.min():.0f}–{rss.max():.0f} MiB during (first half max "
              f"{rss[:half].max():.0f}, second half max {rss[half:].max():.0f}); caught up "
              f"{caught_up:.1f} s after the database returned")
        assert rss[half:].max() <= rss[:half].max() + 32, "RSS keeps growing in the outage"
        assert rss.max() <= before / 1024 + 256
        return results(settings)


@pytest.mark.slow
@pytest.mark.parametrize("outage_s", [60.0])
def test_database_outage_loses_and_doubles_nothing(
        undisturbed: Results, private: PrivateServers, config_dir: Path, tmp_path: Path,
        outage_s: float) -> None:
    assert_same(run_database_outage(private, config_dir, tmp_path, outage_s), undisturbed)


def test_broker_restart_loses_and_doubles_nothing(
        undisturbed: Results, private: PrivateServers, config_dir: Path,
        tmp_path: Path) -> None:
    with fresh_database(private.endpoints.database_url) as dsn:
        settings = fault_settings(private.endpoints, dsn, tmp_path / "home", config_dir)
        create_topics(settings)
        first = len(MESSAGES) // 3
        with Worker(settings, tmp_path) as worker:
            out = producer(settings)
            send(out, MESSAGES[:first])
            out.flush()
            wait_for(lambda: consumed(worker) >= first // 2, 120, "a sixth consumed")
            private.kafka.stop()
            stopped = time.monotonic()
            send(out, MESSAGES[first:])  # queued by the producer while the broker is away
            wait_for(lambda: time.monotonic() - stopped >= 5, 10, "five seconds down")
            private.kafka.start()
            back = time.monotonic()
            out.flush(timeout_s=120)
            Settling(settings, worker).wait()
            caught_up = time.monotonic() - back
        print(f"\nbroker down {back - stopped:.0f} s; caught up {caught_up:.1f} s after it "
              f"returned")
        assert_same(results(settings), undisturbed)
