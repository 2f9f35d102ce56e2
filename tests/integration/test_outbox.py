"""The outbox through the real broker: records arrive, keyed and counted; a record the
broker refuses makes `flush` fail loudly instead of being lost."""

from __future__ import annotations

import asyncio
import random

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.kafka import client_config
from pipeline.selfmetrics import PRODUCED
from pipeline.settings import Settings
from pipeline.sinks.kafka import Outbox
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration


def make_topic(settings: Settings, short: str, **config: str) -> str:
    topic = settings.topic(short)
    admin = AdminClient(client_config(settings))
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                  config=config)])[topic].result(timeout=30)
    return topic


def read_back(settings: Settings, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = Consumer({**client_config(settings), "group.id": f"{topic}-reader",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    found: list[tuple[bytes, bytes]] = []
    try:
        def take() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.append((message.key(), message.value()))
            return len(found) >= count
        wait_for(take, 60, f"{count} records on {topic}", every_s=0)
    finally:
        consumer.close()
    return found


def test_records_added_one_by_one_and_in_bulk_all_arrive(settings: Settings) -> None:
    topic = make_topic(settings, "aggregates")
    outbox = Outbox(settings)
    before = PRODUCED.labels("aggregates")._value.get()
    records = [(f"series-{i}".encode(), f"value-{i}".encode()) for i in range(5000)]
    outbox.add("aggregates", *records[0])
    outbox.add_many("aggregates", iter(records[1:]))
    assert len(outbox) == len(records)
    asyncio.run(outbox.flush())
    assert len(outbox) == 0
    assert PRODUCED.labels("aggregates")._value.get() - before == len(records)
    assert sorted(read_back(settings, topic, len(records))) == sorted(records)
    outbox.close()


def test_a_record_the_broker_refuses_fails_the_flush(settings: Settings) -> None:
    make_topic(settings, "aggregates", **{"max.message.bytes": "1000"})
    outbox = Outbox(settings)
    incompressible = random.Random(0).randbytes(5000)  # the outbox compresses with lz4
    outbox.add_many("aggregates", [(b"small", b"x" * 10), (b"large", incompressible)])
    with pytest.raises(RuntimeError, match="refused"):
        asyncio.run(outbox.flush())
    asyncio.run(outbox.flush())  # reported once; what follows flushes normally
    outbox.close()
