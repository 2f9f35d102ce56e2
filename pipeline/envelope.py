"""Records on internal topics: an Avro payload named by its record type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.codec import decode, encode


def wrap(record_type: str, record: Mapping[str, Any]) -> bytes:
    return encode("InternalMessage", {"kind": record_type,
                                      "payload": encode(record_type, record)})


def wrap_encoded(record_type: str, payload: bytes) -> bytes:
    """For a record already encoded (e.g. forwarded from a public topic)."""
    return encode("InternalMessage", {"kind": record_type, "payload": payload})


def unwrap(data: bytes) -> tuple[str, dict[str, Any]]:
    message = decode("InternalMessage", data)
    return message["kind"], decode(message["kind"], message["payload"])
