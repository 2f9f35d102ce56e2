"""Outbound Kafka records, made durable together before input is acked.

Records go out through librdkafka (confluent-kafka), not Faust's producer: it batches and
compresses in C, so a record costs microseconds instead of milliseconds of Python. `flush`
waits until the broker has every record added so far; a checkpoint after it can therefore
never outrun its outputs. While the broker is away, `flush` keeps waiting (librdkafka
retries, idempotently), and the stage behind it stops acking: nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.kafka import client_config
from pipeline.producer import producer_config
from pipeline.selfmetrics import PRODUCED
from pipeline.settings import Settings

log = logging.getLogger(__name__)


class Outbox:
    """Stages share one outbox; records are produced as they are added (librdkafka queues
    them) and `flush` waits for all of them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = Producer(producer_config({
            **client_config(settings), "linger.ms": 5,
            "message.timeout.ms": 0,  # never give up on a record: the stage waits instead
            # Python hears of failures only: a callback per delivered record would cost
            # more than producing it.
            "on_delivery": self._done, "delivery.report.only.error": True,
        }))
        self._queued = 0
        self._errors: list[KafkaError] = []

    def add(self, short: str, key: bytes | None, value: bytes | None,
            partition: int | None = None,
            headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
        """Queue a record; `partition` overrides the key's partition (e.g. a broadcast)."""
        topic = self._settings.topic(short)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key,
                                       partition=-1 if partition is None else partition,
                                       headers=headers)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._queued += 1
        PRODUCED.labels(short).inc()

    def add_many(self, short: str, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Queue keyed records of one topic: per record, only the produce call itself."""
        topic = self._settings.topic(short)
        produce = self._producer.produce
        count = 0
        for key, value in records:
            try:
                produce(topic, value, key)
            except BufferError:
                self._producer.poll(0.05)
                self.add(short, key, value)
                continue
            count += 1
        self._queued += count
        PRODUCED.labels(short).inc(count)

    async def reachable(self, timeout_s: float = 5.0) -> bool:
        """Whether the broker answers a metadata request now."""
        topic = self._settings.topic("metrics")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, lambda: self._producer.list_topics(topic, timeout=timeout_s))
        except KafkaException:
            return False
        return True

    def _done(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._errors.append(error)

    def __len__(self) -> int:
        return self._queued

    async def flush(self) -> None:
        """Wait, off the event loop, until every queued record is acknowledged."""
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, self._producer.flush, 5.0):
            log.warning("outbound records still unacknowledged by Kafka; waiting")
        self._queued = 0
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"{len(errors)} outbound record(s) were refused: {errors[0]}")

    def close(self) -> None:
        self._producer.flush(30)
