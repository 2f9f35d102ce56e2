"""Avro records through the real broker: every record type produced and consumed intact."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.codec import decode, encode, record_types
from tests.integration.harness import wait_for
from tests.unit.test_codec import SAMPLES

pytestmark = pytest.mark.integration


def test_every_record_type_survives_the_broker(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}avro"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
        topic].result(timeout=30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for record_type in record_types():
        producer.produce(topic, key=record_type.encode(),
                         value=encode(record_type, SAMPLES[record_type]))
    assert producer.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    received: dict[str, dict[str, object]] = {}
    try:
        def take() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                record_type = message.key().decode()
                received[record_type] = decode(record_type, message.value())
            return len(received) == len(record_types())
        wait_for(take, 60, "every record type back from the broker", every_s=0)
    finally:
        consumer.close()
    for record_type in record_types():
        assert received[record_type] == decode(record_type, encode(record_type,
                                                                    SAMPLES[record_type]))
