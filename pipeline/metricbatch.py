"""Decode Avro MetricBatch bytes straight into a columnar `SampleBatch`.

fastavro builds a Python float and int per sample; this decoder walks the message once in
Python per *series* (labels, kinds, block boundaries) and decodes the samples of all series
at once with numpy: doubles are copied out of the message as little-endian float64,
timestamps are zigzag varints decoded vectorised. It reads exactly the bytes the schema in
`schemas/MetricBatch.avsc` describes (multi-block arrays included), and refuses anything
else with a `CodecError`.

A series that is well-formed Avro but unusable (no `service`, no `__name__`, more values
than timestamps) is left out of the batch and reported as a `SeriesError`, so the caller
dead-letters it alone and keeps the rest of the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.batch import KIND_NAMES, SampleBatch
from pipeline.codec import CodecError, codec

RECORD = "MetricBatch"
NAME_LABEL = "__name__"
SERVICE_LABEL = "service"


@dataclass(frozen=True, slots=True)
class SeriesError:
    """A series left out of a decoded batch.

    `payload` is a valid one-series MetricBatch holding that series' original bytes
    (and the message's source and symbol table), ready to be dead-lettered.
    """

    index: int
    reason: str  # missing_name | missing_service | duplicate_label | length_mismatch
    detail: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SeriesMeta:
    """What a series' label set resolves to; shared by every message naming that set."""

    series_id: str
    name: str
    service: str
    labels: dict[str, str]  # every label but __name__; shared, do not mutate


class _Malformed(Exception):
    """Bytes the fast walk cannot read; the codec's slow reader says exactly why."""


class MetricBatchDecoder:
    """Decodes MetricBatch messages, remembering what label sets resolve to.

    Producers repeat their series, and usually their whole symbol table, message after
    message. So a series' identity is looked up by the raw bytes of its `labels_refs`
    within the raw bytes of its symbol table: on a hit the labels are not decoded at all.
    The caches are bounded; a miss costs one label resolution, never correctness.
    """

    def __init__(self, max_tables: int = 64, max_series: int = 200_000) -> None:
        self.max_tables = max_tables
        self.max_series = max_series
        self._tables: dict[bytes, _SymbolTable] = {}
        self._metas: dict[tuple[str, ...], SeriesMeta | tuple[str, str]] = {}
        self._entries = 0  # label sets cached over all tables

    def decode(self, payload: bytes) -> tuple[SampleBatch, list[SeriesError]]:
        """Decode one message; raise `CodecError` if the bytes are not a MetricBatch."""
        try:
            return self._walk(payload)
        except (_Malformed, IndexError, UnicodeDecodeError) as exc:
            raise codec(RECORD).decode_error(payload, exc) from exc

    def _walk(self, data: bytes) -> tuple[SampleBatch, list[SeriesError]]:
        source, symbols_start = _string(data, 0)
        pos = _skip_strings(data, symbols_start)
        header_end = pos
        table = self._table(data[symbols_start:header_end])
        metas: list[SeriesMeta] = []
        kinds: list[int] = []
        counts: list[int] = []
        errors: list[SeriesError] = []
        ts_spans: list[int] = []  # start, end, start, end, ... of ts_ms blocks
        value_spans: list[int] = []  # the same for values blocks
        index = 0
        shape: re.Pattern[bytes] | None = None
        shape_samples = 0
        while True:
            n, pos = _count(data, pos)
            if not n:
                break
            for _ in range(n):
                start = pos
                marks = len(ts_spans), len(value_spans)
                # Series of a message tend to share a shape: try the last one's in one match.
                match = shape.match(data, pos) if shape is not None else None
                if match is not None:
                    refs_end, pos = match.end(1), match.end()
                    ts_spans += match.span(2)
                    value_spans += match.span(3)
                    n_ts = n_values = shape_samples
                else:
                    refs_end, n_refs = _skip_varints(data, pos, None)
                    if data[refs_end] > 4 or data[refs_end] & 1:
                        raise _kind_error(data, refs_end, index)
                    pos, n_ts = _skip_varints(data, refs_end + 1, ts_spans)
                    pos, n_values = _skip_doubles(data, pos, value_spans)
                    shape, shape_samples = _series_shape(n_refs, n_ts), n_ts
                kind = data[refs_end]
                meta = table.series.get(data[start:refs_end])
                if meta is None:
                    meta = self._resolve(table, data[start:refs_end], index)
                if n_ts == n_values and isinstance(meta, SeriesMeta):
                    metas.append(meta)
                    kinds.append(kind >> 1)
                    counts.append(n_ts)
                else:
                    del ts_spans[marks[0] :], value_spans[marks[1] :]
                    reason, detail = (
                        meta
                        if isinstance(meta, tuple)
                        else ("length_mismatch", f"{n_ts} ts_ms but {n_values} values")
                    )
                    one_series = data[:header_end] + b"\x02" + data[start:pos] + b"\x00"
                    detail = f"{RECORD}.series[{index}]: {detail}"
                    errors.append(SeriesError(index, reason, detail, one_series))
                index += 1
        if pos != len(data):
            raise _Malformed
        raw = np.frombuffer(data, dtype=np.uint8)
        ts_ms = _zigzag_varints(_gather(raw, ts_spans), sum(counts))
        if ts_ms is None:
            raise _Malformed
        batch = SampleBatch(
            source=source,
            series_ids=[m.series_id for m in metas],
            names=[m.name for m in metas],
            services=[m.service for m in metas],
            labels=[m.labels for m in metas],
            kinds=np.array(kinds, dtype=np.int8),
            series_index=np.repeat(np.arange(len(metas), dtype=np.int32), counts),
            ts_ms=ts_ms,
            values=_gather(raw, value_spans).view("<f8").astype(np.float64),
        )
        return batch, errors

    def _table(self, raw: bytes) -> _SymbolTable:
        table = self._tables.get(raw)
        if table is None:
            if len(self._tables) >= self.max_tables:
                del self._tables[next(iter(self._tables))]
            table = self._tables[raw] = _SymbolTable(raw)
        return table

    def _resolve(
        self, table: _SymbolTable, refs_raw: bytes, index: int
    ) -> SeriesMeta | tuple[str, str]:
        """Resolve a label set not seen with this symbol table; the result is cached."""
        strings = _label_strings(_decode_longs(refs_raw), table.symbols, index)
        if self._entries >= self.max_series:
            self._metas.clear()
            self._tables.clear()
            self._entries = 0
        meta = self._metas.get(strings)
        if meta is None:
            meta = self._metas[strings] = _resolve(strings)
        table.series[refs_raw] = meta
        self._entries += 1
        return meta


class _SymbolTable:
    def __init__(self, raw: bytes) -> None:
        self.symbols: list[str] = []
        pos = 0
        while True:
            n, pos = _count(raw, pos)
            if not n:
                break
            for _ in range(n):
                symbol, pos = _string(raw, pos)
                self.symbols.append(symbol)
        self.series: dict[bytes, SeriesMeta | tuple[str, str]] = {}


_default = MetricBatchDecoder()


def decode_metric_batch(payload: bytes) -> tuple[SampleBatch, list[SeriesError]]:
    """Decode one MetricBatch message with the process-wide decoder and its caches."""
    return _default.decode(payload)


def _long(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at `pos` and the position after it."""
    byte = data[pos]
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    value, shift = byte & 0x7F, 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 63:
            raise _Malformed
    if value >> 64:
        raise _Malformed
    return (value >> 1) ^ -(value & 1), pos + 1


def _count(data: bytes, pos: int) -> tuple[int, int]:
    """Item count of the array block at `pos` (skipping the byte size of a negative count)."""
    byte = data[pos]
    if byte < 0x80 and not byte & 1:
        return byte >> 1, pos + 1
    n, pos = _long(data, pos)
    if n < 0:
        size, pos = _long(data, pos)
        if size < 0:
            raise _Malformed
        n = -n
    return n, pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _long(data, pos)
    end = pos + n
    if n < 0 or end > len(data):
        raise _Malformed
    return data[pos:end].decode(), end


def _skip_strings(data: bytes, pos: int) -> int:
    """The end of the array<string> at `pos`, without decoding the strings."""
    while True:
        n, pos = _count(data, pos)
        if not n:
            return pos
        for _ in range(n):
            length, pos = _long(data, pos)
            if length < 0:
                raise _Malformed
            pos += length
        if pos > len(data):
            raise _Malformed


@lru_cache(maxsize=512)
def _varints(n: int) -> re.Pattern[bytes]:
    """Matches n consecutive varints of at most 10 bytes, so C skips them, not Python."""
    return re.compile(rb"(?:[\x80-\xff]{0,9}[\x00-\x7f]){%d}" % n)


@lru_cache(maxsize=512)
def _series_shape(n_refs: int, n_samples: int) -> re.Pattern[bytes]:
    """Matches a whole series of this shape written with one block per array.

    Groups: 1 labels_refs (with its count and end), 2 the ts_ms varints, 3 the doubles.
    """
    varints = rb"(?:[\x80-\xff]{0,9}[\x00-\x7f])"
    refs = re.escape(_zigzag(n_refs)) + varints + b"{%d}\x00" % n_refs if n_refs else b"\x00"
    count = re.escape(_zigzag(n_samples))
    if not n_samples:
        return re.compile(b"(" + refs + b")[\x00\x02\x04]()\x00()\x00")
    return re.compile(
        b"(?s)(" + refs + b")[\x00\x02\x04]"
        + count + b"(" + varints + b"{%d})\x00" % n_samples
        + count + b"(.{%d})\x00" % (8 * n_samples)
    )  # fmt: skip


def _zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _skip_varints(data: bytes, pos: int, spans: list[int] | None) -> tuple[int, int]:
    """The end and item count of the array<int|long> at `pos`; its blocks go to `spans`."""
    total = 0
    while True:
        n, pos = _count(data, pos)
        if not n:
            return pos, total
        match = _varints(n).match(data, pos) if n <= len(data) - pos else None
        if match is None:
            raise _Malformed
        if spans is not None:
            spans += (pos, match.end())
        pos = match.end()
        total += n


def _skip_doubles(data: bytes, pos: int, spans: list[int]) -> tuple[int, int]:
    """The end and item count of the array<double> at `pos`; its blocks go to `spans`."""
    total = 0
    while True:
        n, pos = _count(data, pos)
        if not n:
            return pos, total
        end = pos + 8 * n
        if end > len(data):
            raise _Malformed
        spans += (pos, end)
        pos = end
        total += n


def _decode_longs(raw: bytes) -> list[int]:
    """The items of an encoded array<int|long> (labels_refs: a few, once per new series)."""
    items: list[int] = []
    pos = 0
    while True:
        n, pos = _count(raw, pos)
        if not n:
            return items
        for _ in range(n):
            item, pos = _long(raw, pos)
            items.append(item)


def _kind_error(data: bytes, pos: int, index: int) -> CodecError:
    kind = _long(data, pos)[0]
    return CodecError(
        RECORD,
        f"series[{index}].kind",
        f"enum index {kind} at byte {pos} is not one of 0..{len(KIND_NAMES) - 1} "
        f"({'|'.join(KIND_NAMES)})",
    )


def _gather(raw: np.ndarray, spans: list[int]) -> np.ndarray:
    """The bytes of all [start, end) spans, concatenated, in one vectorised copy."""
    if len(spans) == 2:
        return raw[spans[0] : spans[1]]
    bounds = np.array(spans, dtype=np.int64).reshape(-1, 2)
    lengths = bounds[:, 1] - bounds[:, 0]
    out_starts = np.cumsum(lengths) - lengths
    index = np.arange(int(lengths.sum()), dtype=np.int64)
    index += np.repeat(bounds[:, 0] - out_starts, lengths)
    return raw[index]


_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)


def _zigzag_varints(raw: np.ndarray, count: int) -> np.ndarray | None:
    """Decode `raw`, exactly `count` varints of at most 10 bytes, into int64; None if invalid."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    ends = np.flatnonzero(raw < 0x80)
    width = raw.size // count
    last = raw[width - 1 :: width]
    if raw.size == width * count and ends.size == count and (last < 0x80).all():
        # Equal-width varints (timestamps of one era are): one row per varint.
        rows = (raw.reshape(count, width) & 0x7F).astype(np.uint64)
        unsigned = (rows << _SHIFTS[:width]).sum(axis=1, dtype=np.uint64)
    else:
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        within = np.arange(raw.size, dtype=np.int64) - np.repeat(starts, ends - starts + 1)
        parts = (raw & 0x7F).astype(np.uint64) << _SHIFTS[within]
        unsigned = np.add.reduceat(parts, starts, dtype=np.uint64)
        width = int((ends - starts).max()) + 1
        last = raw[ends[ends - starts == 9]]
    if width == 10 and (last > 1).any():
        return None  # a tenth byte above 1 overflows 64 bits
    signs = -(unsigned & np.uint64(1)).astype(np.int64)
    return (unsigned >> np.uint64(1)).astype(np.int64) ^ signs


def _label_strings(refs: list[int], symbols: list[str], index: int) -> tuple[str, ...]:
    if len(refs) % 2:
        raise CodecError(
            RECORD, f"series[{index}].labels_refs", f"odd length {len(refs)}: refs come in pairs"
        )
    if refs and (min(refs) < 0 or max(refs) >= len(symbols)):
        bad = next(r for r in refs if not 0 <= r < len(symbols))
        raise CodecError(
            RECORD,
            f"series[{index}].labels_refs",
            f"symbol index {bad} out of range 0..{len(symbols) - 1}",
        )
    return tuple([symbols[r] for r in refs])


def _resolve(strings: tuple[str, ...]) -> SeriesMeta | tuple[str, str]:
    labels = dict(zip(strings[::2], strings[1::2], strict=True))
    if len(labels) * 2 != len(strings):
        names = strings[::2]
        duplicate = next(n for n in names if names.count(n) > 1)
        return "duplicate_label", f"label {duplicate!r} appears more than once"
    name = labels.pop(NAME_LABEL, "")
    service = labels.get(SERVICE_LABEL, "")
    if not name:
        return "missing_name", f"no {NAME_LABEL} label (labels {labels})"
    if not service:
        return "missing_service", f"no {SERVICE_LABEL} label (name={name})"
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return SeriesMeta(f"{name}{{{body}}}", name, service, labels)


def _escape(value: str) -> str:
    """Label value escaping of the Prometheus text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
