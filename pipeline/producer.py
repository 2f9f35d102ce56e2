"""The producer helper for upstream services: samples in, well-formed MetricBatches out.

Samples are buffered per service and written in the symbol-table layout of PRODUCT.md §4
(a series is named once per message), keyed by service, about `batch_samples` samples per
message. Nothing here can produce a message the pipeline will reject for its shape; values
themselves (NaN, far-future timestamps) are still the caller's responsibility.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from pipeline.codec import encode

KINDS = ("GAUGE", "COUNTER", "OBSERVATION")


def producer_config(base: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults for throughput and safety; murmur2 matches Java and Faust (aiokafka), so a
    service lands on the same partition number whichever client produced it."""
    return {"linger.ms": 20, "compression.type": "lz4", "enable.idempotence": True,
            "acks": "all", "partitioner": "murmur2_random", "message.max.bytes": 16_000_000,
            "queue.buffering.max.kbytes": 262144, **base}


@dataclass
class _SeriesBuffer:
    kind: str
    ts_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class _ServiceBuffer:
    started: float
    series: dict[tuple[tuple[str, str], ...], _SeriesBuffer] = field(default_factory=dict)
    samples: int = 0


class DeliveryError(RuntimeError):
    """Kafka refused or timed out messages; `errors` holds each broker error."""

    def __init__(self, errors: list[KafkaError]) -> None:
        super().__init__(f"{len(errors)} message(s) not delivered; first: {errors[0]}")
        self.errors = errors


class MetricsProducer:
    """Batch samples per service into MetricBatch messages on `topic`.

    >>> p = MetricsProducer({"bootstrap.servers": "127.0.0.1:39092"}, "vigil.metrics")
    ... p.add("http_requests_total", {"service": "checkout", "code": "200"}, "COUNTER",
    ...       ts_ms=1_700_000_000_000, value=42.0)
    ... p.flush()
    """

    def __init__(self, config: Mapping[str, Any], topic: str, *, source: str = "vigil",
                 batch_samples: int = 1000, max_age_s: float = 1.0,
                 on_error: Callable[[KafkaError], None] | None = None) -> None:
        self._producer = Producer(producer_config(config))
        self.topic = topic
        self.source = source
        self.batch_samples = batch_samples
        self.max_age_s = max_age_s
        self._on_error = on_error
        self._buffers: dict[str, _ServiceBuffer] = {}
        self.errors: list[KafkaError] = []
        self.messages_sent = 0
        self.samples_sent = 0

    def add(self, name: str, labels: Mapping[str, str], kind: str, ts_ms: int,
            value: float) -> None:
        """One sample; `labels` must hold `service`."""
        self.add_many(name, labels, kind, (ts_ms,), (value,))

    def add_many(self, name: str, labels: Mapping[str, str], kind: str,
                 ts_ms: Sequence[int] | Iterable[int], values: Sequence[float] | Iterable[float]
                 ) -> None:
        """Many samples of one series, in time order."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {'|'.join(KINDS)}")
        service = labels.get("service")
        if not service:
            raise ValueError(f"series {name}{dict(labels)} has no 'service' label")
        ts_list = [int(t) for t in ts_ms]
        value_list = [float(v) for v in values]
        if len(ts_list) != len(value_list):
            raise ValueError(f"{len(ts_list)} timestamps but {len(value_list)} values")
        key = (("__name__", name), *sorted(labels.items()))
        buffer = self._buffers.get(service)
        if buffer is None:
            buffer = self._buffers[service] = _ServiceBuffer(time.monotonic())
        series = buffer.series.get(key)
        if series is None:
            series = buffer.series[key] = _SeriesBuffer(kind)
        series.ts_ms.extend(ts_list)
        series.values.extend(value_list)
        buffer.samples += len(ts_list)
        if buffer.samples >= self.batch_samples:
            self._send(service)
        self._flush_aged()
        self._producer.poll(0)

    def _flush_aged(self) -> None:
        now = time.monotonic()
        for service in [s for s, b in self._buffers.items() if now - b.started >= self.max_age_s]:
            self._send(service)

    def _send(self, service: str) -> None:
        buffer = self._buffers.pop(service)
        symbols: dict[str, int] = {}
        series = []
        for key, data in buffer.series.items():
            refs = []
            for label, value in key:
                refs.append(symbols.setdefault(label, len(symbols)))
                refs.append(symbols.setdefault(value, len(symbols)))
            series.append({"labels_refs": refs, "kind": data.kind, "ts_ms": data.ts_ms,
                           "values": data.values})
        payload = encode("MetricBatch", {"source": self.source, "symbols": list(symbols),
                                         "series": series})
        self.send_raw(payload, service.encode())
        self.samples_sent += buffer.samples

    def send_raw(self, payload: bytes, key: bytes | None) -> None:
        """Produce bytes as they are (tests use it for deliberately bad input)."""
        while True:
            try:
                self._producer.produce(self.topic, value=payload, key=key,
                                       on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.messages_sent += 1

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self.errors.append(error)
            if self._on_error is not None:
                self._on_error(error)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Send every buffered sample and wait for delivery; raise if any failed."""
        for service in list(self._buffers):
            self._send(service)
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise TimeoutError(f"{remaining} message(s) still undelivered after {timeout_s}s")
        if self.errors:
            raise DeliveryError(self.errors)
