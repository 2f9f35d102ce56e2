"""`vigil bench ingest`: Vigil's ingest → aggregate → sinks against raw decoding, same run.

For each workload shape, the same messages are produced to a fresh topic, then consumed
twice: once by confluent-kafka + fastavro alone (the ceiling a Python consumer can reach),
once by a real `vigil worker` process. Both rates are in samples per second.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import psycopg
from confluent_kafka import Consumer, Producer
from psycopg import sql
from pydantic import SecretStr

from pipeline import SCHEMA_DIR
from pipeline.db import migrate
from pipeline.kafka import client_config, create_topics
from pipeline.producer import producer_config
from pipeline.settings import Settings
from pipeline.workload import scrape_messages, standard_messages

WORKLOADS: dict[str, tuple[Callable[[int, int], list[tuple[bytes, bytes]]], int]] = {
    "standard": (lambda n, seed: standard_messages(n, seed), 10_000),
    "scrape": (lambda n, seed: scrape_messages(n, seed), 1000),
}


@dataclass(frozen=True)
class Result:
    workload: str
    samples: int
    raw_samples_per_s: float
    vigil_samples_per_s: float

    @property
    def ratio(self) -> float:
        return self.vigil_samples_per_s / self.raw_samples_per_s


def run(settings: Settings, workloads: list[str], messages: int | None, partitions: int,
        log: Callable[[str], None]) -> list[Result]:
    results = []
    for name in workloads:
        make, default_count = WORKLOADS[name]
        batch = make(messages or default_count, 7)
        prefix = f"bench{uuid.uuid4().hex[:8]}-{name}."
        run_settings = settings.model_copy(update={"topic_prefix": prefix,
                                                   "partitions": partitions})
        create_topics(run_settings)
        samples = _produce(run_settings, batch)
        log(f"{name}: produced {len(batch):,} messages, {samples:,} samples")
        raw = _raw_rate(run_settings, len(batch), samples)
        log(f"{name}: confluent-kafka + fastavro: {raw:,.0f} samples/s")
        # A fresh database: rows of earlier runs would meet these (same series, same times)
        # and a larger table would be slower to write.
        with scratch_database(run_settings) as fresh:
            migrate(fresh.database_dsn() or "")
            vigil = _vigil_rate(fresh, samples, len(batch), log)
        log(f"{name}: vigil worker: {vigil:,.0f} samples/s ({vigil / raw:.2f} of raw)")
        results.append(Result(name, samples, raw, vigil))
    return results


@contextmanager
def scratch_database(settings: Settings) -> Iterator[Settings]:
    """Settings naming a new, empty database, dropped afterwards."""
    dsn = settings.database_dsn() or ""
    name = f"vigil_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = psycopg.conninfo.conninfo_to_dict(dsn)
    try:
        yield settings.model_copy(update={"database_url": SecretStr(
            psycopg.conninfo.make_conninfo("", **{**base, "dbname": name}))})
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _produce(settings: Settings, batch: list[tuple[bytes, bytes]]) -> int:
    producer = Producer(producer_config(client_config(settings)))
    for key, payload in batch:
        while True:
            try:
                producer.produce(settings.topic("metrics"), key=key, value=payload)
                break
            except BufferError:
                producer.poll(0.1)
    if producer.flush(120):
        raise RuntimeError("benchmark messages were not all delivered")
    return sum(_samples(payload) for _, payload in batch)


def _schema() -> Any:
    return fastavro.parse_schema(fastavro.schema.load_schema(str(SCHEMA_DIR / "MetricBatch.avsc")))


def _samples(payload: bytes, schema: Any = None) -> int:
    record: Any = fastavro.schemaless_reader(io.BytesIO(payload), schema or _schema(), None)
    return sum(len(series["values"]) for series in record["series"])


def _raw_rate(settings: Settings, count: int, samples: int) -> float:
    """Consume and decode every message with fastavro alone."""
    schema = _schema()
    consumer = Consumer({**client_config(settings), "group.id": f"bench-raw-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("metrics")])
    seen = decoded = 0
    started = 0.0
    try:
        while seen < count:
            for message in consumer.consume(500, timeout=1.0):
                if message.error() is not None:
                    continue
                if not started:
                    started = time.perf_counter()
                decoded += _samples(message.value() or b"", schema)
                seen += 1
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    assert decoded == samples
    return samples / elapsed


def _vigil_rate(settings: Settings, samples: int, messages: int,
                log: Callable[[str], None]) -> float:
    """Run a real worker on the topic; time from its first consumed sample until the results
    of every message are durable (rows written, records flushed, input acknowledged)."""
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")},
           "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
           "VIGIL_DATABASE_URL": settings.database_dsn() or "",
           "VIGIL_TOPIC_PREFIX": settings.topic_prefix,
           "VIGIL_PARTITIONS": str(settings.partitions), "VIGIL_WEB_PORT": str(port),
           "VIGIL_HOME": str(settings.home),
           # the ingest path alone: detection and alerting read its output downstream
           "VIGIL_STAGES": '["catalog", "metrics", "web"]'}
    with tempfile.NamedTemporaryFile(prefix="vigil-bench-", suffix=".log",
                                     delete=False) as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        first: tuple[float, float] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited; log {log_file.name}")
            consumed, durable = _progress(port)
            now = time.perf_counter()
            if consumed and first is None:
                first = (now, consumed)
            if durable >= messages and first is not None:
                return (samples - first[1]) / (now - first[0])
            time.sleep(_poll_interval(first, now, durable / messages * samples, samples))
        raise RuntimeError(f"worker did not consume every sample in time; log {log_file.name}")
    finally:
        worker.terminate()
        worker.wait(60)
        Path(log_file.name).unlink(missing_ok=True)


def _poll_interval(first: tuple[float, float] | None, now: float, done: float,
                   samples: int) -> float:
    """Often at the start and near the end, whose instants the rate rests on; rarely in
    between, because rendering /metrics costs the worker CPU time it would measure."""
    if first is None or done <= first[1] or now <= first[0]:
        return 0.02
    remaining_s = (samples - done) / ((done - first[1]) / (now - first[0]))
    return min(max(remaining_s / 4, 0.02), 0.5)


def _progress(port: int) -> tuple[float, float]:
    """(samples consumed, input messages checkpointed) by the worker's metrics stage."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            body = response.read().decode()
    except OSError:
        return 0.0, 0.0
    consumed = durable = 0.0
    for line in body.splitlines():
        if line.startswith("vigil_consumed_samples_total "):
            consumed = float(line.split()[1])
        elif line.startswith('vigil_checkpointed_messages_total{stage="aggregate"} '):
            durable = float(line.split()[1])
    return consumed, durable


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
