"""Kafka records as JSON for people: `vigil tail`."""

from __future__ import annotations

import base64
import math
from typing import Any

from pipeline.codec import CodecError, decode
from pipeline.envelope import unwrap


def to_json(record_type: str, message: Any) -> dict[str, Any]:
    """Key, partition, offset and the decoded value (or why it would not decode)."""
    key = message.key()
    out: dict[str, Any] = {"partition": message.partition(), "offset": message.offset(),
                           "key": key.decode(errors="replace") if key is not None else None}
    value = message.value()
    if value is None:
        out["value"] = None
        return out
    try:
        if record_type == "InternalMessage":
            kind, record = unwrap(value)
            out["kind"] = kind
        else:
            record = decode(record_type, value)
        out["value"] = _plain(record)
    except CodecError as exc:
        out["error"] = str(exc)
        out["raw"] = base64.b64encode(value).decode()
    return out


def _plain(value: Any) -> Any:
    """JSON-able: bytes as base64, NaN/inf as strings."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
