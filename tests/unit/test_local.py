"""The embedded servers' launcher: the parts that need no server."""

import base64
from unittest import mock

from pipeline.local import kafka


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    """The storage tool would take such an id for a flag (and Kafka never makes one)."""
    dashed = base64.urlsafe_b64decode("-" + "A" * 21 + "==")
    plain = bytes(16)
    with mock.patch.object(kafka.uuid, "uuid4",
                           side_effect=[mock.Mock(bytes=dashed), mock.Mock(bytes=plain)]):
        assert kafka._kafka_uuid() == "A" * 22
