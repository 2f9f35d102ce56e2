"""Records on internal topics: an Avro payload named by its record type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pipeline.codec import decode, encode

K = TypeVar("K")


def wrap(record_type: str, record: Mapping[str, Any]) -> bytes:
    return encode("InternalMessage", {"kind": record_type,
                                      "payload": encode(record_type, record)})


def wrap_encoded(record_type: str, payload: bytes) -> bytes:
    """For a record already encoded (e.g. forwarded from a public topic)."""
    return encode("InternalMessage", {"kind": record_type, "payload": payload})


def unwrap(data: bytes) -> tuple[str, dict[str, Any]]:
    message = decode("InternalMessage", data)
    return message["kind"], decode(message["kind"], message["payload"])


SEQUENCE_HEADER = "vigil-sequence"
"""`<origin>/<number>` on records a consumer must apply once although a restored producer
replays them: numbered as they are made, with the count in the producer's snapshot, so a
replay repeats each number and the consumer drops what it has taken (`first_time`)."""


def sequence_header(origin: str, number: int) -> list[tuple[str, str | bytes | None]]:
    return [(SEQUENCE_HEADER, f"{origin}/{number}".encode())]


def header(headers: Any, name: str) -> bytes | None:
    """A header's value, from Faust's headers (a mapping or a list of pairs)."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in items:
        if key == name:
            return value
    return None


def sequence_of(headers: Any) -> tuple[str, int] | None:
    value = header(headers, SEQUENCE_HEADER)
    if not value:
        return None
    origin, _, number = value.decode().rpartition("/")
    if not origin or not number.isdigit():
        raise ValueError(f"{SEQUENCE_HEADER}: expected <origin>/<number>, got {value!r}")
    return origin, int(number)


def first_time(taken: dict[K, int], origin: K, number: int) -> bool:
    """Whether `number` is new from `origin` (numbers only grow); remembers it if so."""
    if number <= taken.get(origin, -1):
        return False
    taken[origin] = number
    return True
