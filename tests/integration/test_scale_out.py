"""Scale-out: two workers in one consumer group share the partitions; kill -9 one mid-stream
and the other restores its partitions' state from the changelogs and finishes the job. The
database must then hold exactly the rows of a single worker fed the same input.

The input is a steady `Workload` of ten services (spread over all four partitions) cut into
one message per service per 5 s of event time, with a threshold rule on CPU that fires for
some services on every partition; a tick per service at the end closes every window. The
incidents those alerts open are compared too: the incident stage orders the partitions'
alerts by event time, and must neither release ahead of the killed worker's partitions
while they wait for a new owner nor overtake a partition whose first alert comes late.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from pydantic import SecretStr

from bench.memory import group_lag
from pipeline.kafka import client_config, create_topics
from pipeline.local.servers import Endpoints
from pipeline.producer import MetricsProducer
from pipeline.settings import Settings
from pipeline.workload import TICK_NAME, Chunk, Message, Workload, expected_results
from tests.integration.harness import Worker, wait_for
from tests.integration.test_alerts_incidents import another_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
WORKLOAD = Workload(seed=11, services=10, series_per_service=8, samples_per_s=80,
                    duration_s=300, slice_s=5)  # one sample per series per second
RULE = """\
kind: ThresholdRule
name: BusyCpu
selector: 'process_cpu_utilization'
field: mean
op: '>'
value: 0.45
width_s: 10
for: 20s
severity: warning
annotations:
  summary: 'cpu of {{ service }} is {{ value | round(2) }}'
"""
TABLES = {  # table: (columns to leave out, order)
    "metric_aggregates": ("", "series_id, width_s, bucket"),
    "anomalies": ("", "anomaly_id"),
    "alerts": ("", "fingerprint"),
    "incidents": ("", "incident_id"),  # correlated across partitions: one order in every run
    "incident_events": ("", "incident_id, event, message, ts"),
    "alert_events": ("", "fingerprint, status, ts"),
    "dead_letters": ("", "topic, partition, \"offset\", reason"),
}


def messages() -> list[Message]:
    """One message per service per slice of the workload, slice after slice."""
    chunks = list(WORKLOAD.chunks())
    out = []
    for start in range(0, len(chunks), WORKLOAD.series_count):
        by_service: dict[str, list[Chunk]] = defaultdict(list)
        for chunk in chunks[start:start + WORKLOAD.series_count]:
            by_service[chunk.labels["service"]].append(chunk)
        out += [Message(service.encode(), tuple(series))
                for service, series in sorted(by_service.items())]
    return out


def closing(services: set[str]) -> list[Message]:
    end = WORKLOAD.start_ms + int(WORKLOAD.duration_s * 1000) + 120_000
    return [Message(s.encode(), (Chunk(TICK_NAME, {"service": s}, "GAUGE",
                                       np.array([end]), np.ones(1)),))
            for s in sorted(services)]


def produce(settings: Settings, batch: list[Message]) -> None:
    producer = MetricsProducer(client_config(settings), settings.topic("metrics"))
    for message in batch:
        producer.send_raw(message.payload(), message.key)
    producer.flush()


def rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    with psycopg.connect(dsn) as conn:
        for table, (leave_out, order) in TABLES.items():
            columns = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position", (table,)) if r[0] != leave_out]
            found[table] = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table),
                sql.SQL(order))).fetchall()
    return found


def window_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM metric_aggregates WHERE name <> %s",
                           (TICK_NAME,)).fetchone()
    return int(row[0]) if row else 0


def assignment(settings: Settings) -> dict[str, set[int]]:
    """Metrics partitions per member of the workers' consumer group."""
    admin = AdminClient(client_config(settings))
    group = f"{settings.topic_prefix}worker"
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    topic = settings.topic("metrics")
    return {member.member_id: {tp.partition for tp in member.assignment.topic_partitions
                               if tp.topic == topic}
            for member in description.members}


def committed(settings: Settings) -> dict[int, int]:
    """The group's committed offset on each metrics partition (negative: none)."""
    consumer = Consumer({**client_config(settings), "group.id": f"{settings.topic_prefix}worker",
                         "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(settings.topic("metrics"), p)
                                      for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in offsets}


def consumed(worker: Worker) -> float:
    return worker.metrics().get('vigil_consumed_messages_total{topic="metrics"}', 0.0)


def settled(settings: Settings, members: int) -> dict[str, set[int]] | None:
    """The assignment once `members` members share all partitions, each holding some."""
    found = assignment(settings)
    shared = set().union(*found.values()) if found else set()
    ok = (len(found) == members and shared == set(range(PARTITIONS))
          and all(found.values()))
    return found if ok else None


@contextmanager
def workers(settings: Settings, log_dir: Path, count: int) -> Iterator[list[Worker]]:
    """`count` workers, each with its own home and web port, stopped at the end."""
    started: list[Worker] = []
    try:
        for i in range(count):
            own = settings.model_copy(update={"home": settings.home / f"w{i}"})
            started.append(Worker(own, log_dir, name=f"worker-{i}").start())
        yield started
    finally:
        for worker in started:
            worker.stop()


def single_worker_run(settings: Settings, log_dir: Path, batch: list[Message],
                      expected: int) -> dict[str, list[tuple[Any, ...]]]:
    create_topics(settings)
    dsn = settings.database_dsn() or ""
    with workers(settings, log_dir, 1):
        produce(settings, batch)
        wait_for(lambda: window_count(dsn) >= expected, 120, f"{expected} windows (one worker)")
        return wait_until_done(settings)


def wait_until_done(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """The rows once every stage has consumed everything and two reads agree."""
    dsn = settings.database_dsn() or ""
    last: list[Any] = [None]

    def done() -> dict[str, list[tuple[Any, ...]]] | None:
        if group_lag(settings):
            return None
        now = rows(dsn)
        same = now == last[0]
        last[0] = now
        return now if same else None
    found = wait_for(done, 120, "every stage caught up and the tables settled", every_s=1.0)
    assert found is not None
    return found


def test_two_workers_share_partitions_and_survive_a_kill(
        settings: Settings, endpoints: Endpoints, tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "rules").mkdir(parents=True)
    (config / "rules" / "cpu.yaml").write_text(RULE)
    base = settings.model_copy(update={"partitions": PARTITIONS, "config_dir": config})
    batch = messages()
    services = {m.service or "" for m in batch}
    tail = closing(services)
    expected = expected_results(batch).windows
    reference = single_worker_run(base, tmp_path / "single", [*batch, *tail], len(expected))
    assert len(reference["metric_aggregates"]) == len(expected)
    assert reference["alerts"], "the CPU rule fires for some services"
    assert reference["incidents"], "the alerts open incidents"

    with another_database(endpoints) as dsn:
        scaled = base.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
                                         "database_url": SecretStr(dsn)})
        create_topics(scaled)
        with workers(scaled, tmp_path / "scaled", 2) as (survivor, victim):
            before = wait_for(lambda: settled(scaled, 2), 90, "two members sharing 4 partitions")
            half = len(batch) // 2
            produce(scaled, batch[:half])
            wait_for(lambda: consumed(survivor) > 0 and consumed(victim) > 0, 60,
                     "both workers consuming")
            # The victim's state must be in a checkpoint, so the survivor restores, not
            # re-reads from the start: wait for committed offsets on every partition.
            wait_for(lambda: all(o > 0 for o in committed(scaled).values()), 60,
                     "offsets committed on every partition")
            victim.kill()
            killed = time.monotonic()
            produce(scaled, batch[half:])
            after = wait_for(lambda: settled(scaled, 1), 120, "the survivor holding everything")
            print(f"\nfailover: all partitions on the survivor {time.monotonic() - killed:.1f} s "
                  f"after kill -9 (session timeout {scaled.kafka_session_timeout_s:.0f} s)")
            assert before is not None and after is not None
            [member] = after
            lost = set().union(*(ps for m, ps in before.items() if m != member))
            assert lost, f"the killed worker held partitions ({before})"
            produce(scaled, tail)
            wait_for(lambda: window_count(dsn) >= len(expected), 180,
                     f"{len(expected)} windows (two workers, one killed)")
            got = wait_until_done(scaled)
    differences = {table: ([r for r in want if r not in got[table]],
                           [r for r in got[table] if r not in want])
                   for table, want in reference.items()}
    report = "\n".join(f"{table}: missing {missing[:8]}\n  extra {extra[:8]}"
                       for table, (missing, extra) in differences.items() if missing or extra)
    said = "\n".join(f"{w.log_path.name}: {line}" for w in (survivor, victim)
                     for line in w.log_text().splitlines()
                     if ("[WARNING]" in line or "[ERROR]" in line) and "Heartbeat" not in line)
    assert not report, f"{report}\n--- what the workers warned of ---\n{said}"
    for table, want in reference.items():
        assert got[table] == want, table
