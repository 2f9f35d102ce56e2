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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Consumer, Producer

from pipeline import SCHEMA_DIR
from pipeline.kafka import client_config, create_topics
from pipeline.producer import producer_config
from pipeline.settings import Settings
from pipeline.workload import scrape_messages, standard_messages

WORKLOADS: dict[str, tuple[Callable[[int, int], list[tuple[bytes, bytes]]], int]] = {
    "standard": (lambda n, seed: standard_messages(n, seed), 3000),
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
        vigil = _vigil_rate(run_settings, samples, log)
        log(f"{name}: vigil worker: {vigil:,.0f} samples/s ({vigil / raw:.2f} of raw)")
        results.append(Result(name, samples, raw, vigil))
    return results


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


def _vigil_rate(settings: Settings, samples: int, log: Callable[[str], None]) -> float:
    """Run a real worker on the topic; time from its first to its last consumed sample."""
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
            consumed = _consumed(port)
            now = time.perf_counter()
            if consumed and first is None:
                first = (now, consumed)
            if consumed >= samples and first is not None:
                return (samples - first[1]) / (now - first[0])
            time.sleep(_poll_interval(first, now, consumed, samples))
        raise RuntimeError(f"worker did not consume every sample in time; log {log_file.name}")
    finally:
        worker.terminate()
        worker.wait(60)
        Path(log_file.name).unlink(missing_ok=True)


def _poll_interval(first: tuple[float, float] | None, now: float, consumed: float,
                   samples: int) -> float:
    """Often at the start and near the end, whose instants the rate rests on; rarely in
    between, because rendering /metrics costs the worker CPU time it would measure."""
    if first is None or consumed <= first[1] or now <= first[0]:
        return 0.02
    remaining_s = (samples - consumed) / ((consumed - first[1]) / (now - first[0]))
    return min(max(remaining_s / 4, 0.02), 0.5)


def _consumed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            body = response.read().decode()
    except OSError:
        return 0.0
    for line in body.splitlines():
        if line.startswith("vigil_consumed_samples_total "):
            return float(line.split()[1])
    return 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
