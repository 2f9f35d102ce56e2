"""Closed windows out, a whole window at a time: WindowAggregate Avro and binary COPY rows.

At one closed window per series per width, a scrape-shaped stream closes about one row per
sample, so a row must cost about a microsecond of Python. What is fixed for a series (its
id, name, service, labels) is encoded once and cached; what is fixed for a window (width,
start, end) or a service (catalog enrichment) once per call; numbers are packed by numpy
into fixed-layout bytes per kind. The Avro is byte-identical to `pipeline.codec.encode`.

`internal.windows` carries many WindowAggregate records per message, back to back (Avro
binary delimits itself); `decode_windows` reads them, a single record being a sequence of one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any, cast

import fastavro
import numpy as np

from pipeline.aggregate import QUANTILES, WindowAggregates
from pipeline.batch import COUNTER, GAUGE, KIND_NAMES, OBSERVATION
from pipeline.codec import CodecError, codec
from pipeline.slo import le_key

ENRICHMENT = ("team", "tier", "environment")
Catalog = Callable[[str], Mapping[str, Any] | None]
"""Service → catalog entry (or None): where enrichment comes from."""

_NULL = b"\x00"
_PRESENT = b"\x02"  # union branch 1, zigzag
_KIND_AVRO = [bytes([2 * k]) for k in range(len(KIND_NAMES))]  # enum index, zigzag
_CACHE_LIMIT = 200_000  # cached series before the cache starts over: memory stays bounded


@lru_cache(maxsize=4096)
def avro_long(n: int) -> bytes:
    """Zigzag varint, as Avro writes int and long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def avro_string(text: str) -> bytes:
    data = text.encode()
    return avro_long(len(data)) + data


@dataclass(slots=True)
class EncodedWindow:
    """One closed window's rows, in the window's row order: Avro records and binary COPY
    tuples (fields in `COPY_COLUMNS` order, for `Database.upsert_copy`)."""

    width_s: int
    series_ids: list[str]
    services: list[str]
    records: list[bytes]
    rows: list[bytes]


COPY_COLUMNS = ("bucket", "width_s", "service", "name", "labels", "series_id", "kind", "team",
                "tier", "environment", "count", "sum", "min", "max", "mean", "last",
                "increase", "rate", "p50", "p90", "p95", "p99")
"""metric_aggregates columns in the order of a binary COPY row (per-series ones together)."""
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, where timestamptz counts from
_COPY_NULL = b"\xff\xff\xff\xff"
_COPY_DOUBLE = b"\x00\x00\x00\x08"  # field length of a float8 / int8


def _copy_field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


class AggregateEncoder:
    """Encodes closed windows; one per stage (its caches are per series)."""

    def __init__(self, le_bounds: Sequence[float] = ()) -> None:
        self.le_bounds = tuple({le_key(b): float(b) for b in le_bounds}.values())
        self._le_keys = [avro_string(le_key(b)) for b in self.le_bounds]
        # series id → (Avro series_id..labels, COPY service..series_id fields)
        self._series: dict[str, tuple[bytes, bytes]] = {}

    def encode(self, window: WindowAggregates, catalog: Catalog) -> EncodedWindow:
        n = len(window)
        statics = list(map(self._static, window.series_ids, window.names, window.services,
                           window.labels))
        enrich = {service: _enrichment(catalog(service)) for service in set(window.services)}
        avro_enrich, copy_enrich = (zip(*map(enrich.__getitem__, window.services), strict=True)
                                    if n else ((), ()))
        kinds = window.kinds.tolist()
        end_ms = window.window_start_ms + window.width_s * 1000
        avro_fixed = (avro_long(window.width_s) + avro_long(window.window_start_ms)
                      + avro_long(end_ms))
        copy_fixed = (len(COPY_COLUMNS).to_bytes(2, "big") + _COPY_DOUBLE
                      + ((window.window_start_ms - _PG_EPOCH_MS) * 1000).to_bytes(8, "big",
                                                                                   signed=True)
                      + _copy_field(window.width_s.to_bytes(4, "big", signed=True)))
        avro_tails, copy_tails = self._tails(window)
        records = list(map(b"".join, zip(
            (s[0] for s in statics), map(_KIND_AVRO.__getitem__, kinds), repeat(avro_fixed),
            avro_enrich, map(avro_long, window.count.tolist()), avro_tails, strict=False)))
        rows = list(map(b"".join, zip(
            repeat(copy_fixed), (s[1] for s in statics), map(_KIND_COPY.__getitem__, kinds),
            copy_enrich, copy_tails, strict=False)))
        return EncodedWindow(window.width_s, window.series_ids, window.services, records, rows)

    def _static(self, series_id: str, name: str, service: str, labels: dict[str, str]
                ) -> tuple[bytes, bytes]:
        found = self._series.get(series_id)
        if found is None:
            if len(self._series) >= _CACHE_LIMIT:
                self._series.clear()
            avro = [avro_string(series_id), avro_string(name), avro_string(service)]
            if labels:
                avro.append(avro_long(len(labels)))
                avro.extend(avro_string(k) + avro_string(v) for k, v in labels.items())
            avro.append(_NULL)
            jsonb = b"\x01" + json.dumps(labels).encode()  # jsonb binary format version 1
            found = self._series[series_id] = (b"".join(avro), b"".join(map(_copy_field, (
                service.encode(), name.encode(), jsonb, series_id.encode()))))
        return found

    def _tails(self, window: WindowAggregates) -> tuple[list[bytes], list[bytes]]:
        """Per row, the numbers: Avro from count's end on (count is a varint, written apart)
        and COPY from count on; packed per kind, each kind having a fixed layout."""
        kinds = window.kinds
        avro: list[bytes] = [b""] * len(window)
        copy: list[bytes] = [b""] * len(window)
        for kind in (GAUGE, COUNTER, OBSERVATION):
            rows = np.flatnonzero(kinds == kind)
            if not rows.size:
                continue
            common = [c.take(rows) for c in (window.sum, window.min, window.max, window.mean,
                                              window.last)]
            optional: list[np.ndarray | None] = [None] * 6  # increase, rate, p50..p99
            if kind == COUNTER:
                optional[:2] = [window.increase.take(rows), window.rate.take(rows)]
            if kind == OBSERVATION:
                optional[2:] = [window.quantiles[rows, i] for i in range(len(QUANTILES))]
            avro_parts: list[bytes | np.ndarray] = [*common]
            copy_parts: list[bytes | np.ndarray] = [_COPY_DOUBLE,
                                                    window.count.take(rows).astype(">i8")]
            for column in common:
                copy_parts += [_COPY_DOUBLE, column.astype(">f8")]
            for values in optional:
                avro_parts += [_NULL] if values is None else [_PRESENT, values]
                copy_parts += [_COPY_NULL] if values is None else [_COPY_DOUBLE,
                                                                   values.astype(">f8")]
            if kind == OBSERVATION and self.le_bounds:
                avro_parts.append(avro_long(len(self.le_bounds)))
                for key, bound in zip(self._le_keys, self.le_bounds, strict=True):
                    avro_parts += [key, window.count_at_most(bound).take(rows).astype(np.float64)]
            avro_parts.append(_NULL)
            for out, parts in ((avro, avro_parts), (copy, copy_parts)):
                for row, packed in zip(rows.tolist(), _pack(rows.size, parts), strict=True):
                    out[row] = packed
        return avro, copy


_KIND_COPY = [_copy_field(name.encode()) for name in KIND_NAMES]


def _enrichment(info: Mapping[str, Any] | None) -> tuple[bytes, bytes]:
    values = [info.get(k) if info else None for k in ENRICHMENT]
    avro = b"".join(_NULL if v is None else _PRESENT + avro_string(v) for v in values)
    copy = b"".join(_COPY_NULL if v is None else _copy_field(v.encode()) for v in values)
    return avro, copy


def _pack(n: int, parts: Sequence[bytes | np.ndarray]) -> list[bytes]:
    """n fixed-layout byte strings: constant bytes and arrays (in their dtype), in order."""
    fields = [(f"f{i}", f"V{len(p)}" if isinstance(p, bytes) else p.dtype.str)
              for i, p in enumerate(parts)]
    table = np.empty(n, dtype=np.dtype(fields))
    for i, part in enumerate(parts):
        table[f"f{i}"] = np.void(part) if isinstance(part, bytes) else part
    return cast(list[bytes], table.view(np.dtype((np.void, table.dtype.itemsize))).tolist())


WINDOWS_MESSAGE_BYTES = 256 * 1024
"""Target size of one internal.windows message (a record over it travels alone): far
below the broker's 1 MB limit, large enough that a message carries hundreds of records."""


def windows_messages(window: EncodedWindow, limit: int = WINDOWS_MESSAGE_BYTES
                     ) -> list[tuple[str, bytes]]:
    """(service, payload) per internal.windows message: each service's records of the
    window back to back, in row order, cut where a message would grow past `limit`."""
    by_service: dict[str, list[bytes]] = {}
    for service, record in zip(window.services, window.records, strict=True):
        by_service.setdefault(service, []).append(record)
    out = []
    for service, records in by_service.items():
        payload = b"".join(records)
        if len(payload) <= limit:
            out.append((service, payload))
            continue
        chunk: list[bytes] = []
        size = 0
        for record in records:
            if chunk and size + len(record) > limit:
                out.append((service, b"".join(chunk)))
                chunk, size = [], 0
            chunk.append(record)
            size += len(record)
        out.append((service, b"".join(chunk)))
    return out


def decode_windows(payload: bytes) -> list[dict[str, Any]]:
    """Every WindowAggregate in an internal.windows message, in order."""
    window_codec = codec("WindowAggregate")
    stream = io.BytesIO(payload)
    records: list[dict[str, Any]] = []
    while True:
        start = stream.tell()
        try:
            record = fastavro.schemaless_reader(stream, window_codec.schema, None)
        except (EOFError, IndexError, KeyError, ValueError, TypeError, AttributeError,
                OverflowError, MemoryError) as exc:
            error = window_codec.decode_error(payload[start:], exc)
            raise CodecError("WindowAggregate", f"[{len(records)}]{error.field_path}",
                             error.reason) from exc
        records.append(cast(dict[str, Any], record))
        if stream.tell() >= len(payload):
            return records
