"""Decode Avro MetricBatch bytes straight into a columnar `SampleBatch`.

fastavro builds a Python float and int per sample, and a Python walk costs microseconds per
series. So the byte walk is compiled (`pipeline/_metricbatch.pyx`): it reads exactly the
bytes the schema in `schemas/MetricBatch.avsc` describes (multi-block arrays included) into
numpy columns, and refuses anything else with a `CodecError` named by the codec's reader.
Python is left with what is rare: resolving label sets not seen before, and reporting.

A series that is well-formed Avro but unusable (no `service`, no `__name__`, more values
than timestamps, a label set over the `LabelLimits`) is left out of the batch and reported as
a `SeriesError`, so the caller dead-letters it alone and keeps the rest of the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import pipeline._metricbatch as _walk
from pipeline.batch import SampleBatch
from pipeline.codec import CodecError, codec

RECORD = "MetricBatch"
MAX_CACHED_TABLE_BYTES = 1 << 20
SIZE_REASONS = frozenset({"too_many_labels", "label_too_long", "series_too_long",
                          "invalid_text"})
NAME_LABEL = "__name__"
SERVICE_LABEL = "service"


@dataclass(frozen=True, slots=True)
class SeriesError:
    """A series left out of a decoded batch.

    `payload` is a valid one-series MetricBatch holding that series' original bytes
    (and the message's source and symbol table), ready to be dead-lettered.
    """

    index: int
    reason: str  # missing_name | missing_service | duplicate_label | length_mismatch |
    #             too_many_labels | label_too_long | series_too_long | invalid_text
    detail: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class LabelLimits:
    """Bounds on one series' labels (`__name__` included), all in UTF-8 bytes but `labels`.

    A series is a key of the metric_aggregates btree, whose entries PostgreSQL caps at
    about 2.7 kB, and of every per-series cache: past these bounds a label set would break
    the sink or memory, so it is refused at the door instead (see `Settings.max_labels`).
    """

    labels: int = 32
    label_bytes: int = 1024
    series_bytes: int = 2048


@dataclass(frozen=True, slots=True)
class SeriesMeta:
    """What a series' label set resolves to; shared by every message naming that set."""

    series_id: str
    name: str
    service: str
    labels: dict[str, str]  # every label but __name__; shared, do not mutate


class MetricBatchDecoder:
    """Decodes MetricBatch messages, remembering what label sets resolve to.

    Producers repeat their series, and usually their whole symbol table, message after
    message. So a series' identity is looked up by the raw bytes of its `labels_refs`
    within the raw bytes of its symbol table: on a hit the labels are not decoded at all.
    The caches are bounded; a miss costs one label resolution, never correctness.
    """

    def __init__(self, max_tables: int = 64, max_series: int = 200_000,
                 limits: LabelLimits = LabelLimits()) -> None:
        self.max_tables = max_tables
        self.max_series = max_series
        self.limits = limits
        self._tables: dict[bytes, _SymbolTable] = {}
        self._metas: dict[tuple[str, ...], SeriesMeta | tuple[str, str]] = {}
        self._entries = 0  # label sets cached over all tables

    def decode(self, payload: bytes) -> tuple[SampleBatch, list[SeriesError]]:
        """Decode one message; raise `CodecError` if the bytes are not a MetricBatch."""
        try:
            source, symbols_start, header_end = _walk.header(payload)
            table = self._table(payload[symbols_start:header_end])
            columns, rejects = _walk.series(payload, header_end, table, self._resolve)
        except (_walk.Malformed, UnicodeDecodeError) as exc:
            raise codec(RECORD).decode_error(payload, exc) from exc
        errors = [_series_error(payload, header_end, *reject) for reject in rejects]
        return SampleBatch(source, *columns), errors

    def _table(self, raw: bytes) -> _SymbolTable:
        table = self._tables.get(raw)
        if table is None:
            table = _SymbolTable(_walk.strings(raw))
            if len(raw) <= MAX_CACHED_TABLE_BYTES:  # else one message could pin megabytes
                if len(self._tables) >= self.max_tables:
                    del self._tables[next(iter(self._tables))]
                self._tables[raw] = table
        return table

    def _resolve(
        self, table: _SymbolTable, refs_raw: bytes, refs: list[int], index: int
    ) -> SeriesMeta | tuple[str, str]:
        """Resolve a label set not seen with this symbol table; the result is cached."""
        strings = _label_strings(refs, table.symbols, index)
        if self._entries >= self.max_series:
            self._metas.clear()
            self._tables.clear()
            self._entries = 0
        meta = self._metas.get(strings)
        if meta is None:
            meta = _resolve(strings, self.limits)
            if not (isinstance(meta, tuple) and meta[0] in SIZE_REASONS):
                self._metas[strings] = meta  # a huge refused label set is not kept
        table.series[refs_raw] = meta
        self._entries += 1
        return meta


class _SymbolTable:
    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols
        self.series: dict[bytes, SeriesMeta | tuple[str, str]] = {}


_default = MetricBatchDecoder()


def decode_metric_batch(payload: bytes) -> tuple[SampleBatch, list[SeriesError]]:
    """Decode one MetricBatch message with the process-wide decoder and its caches."""
    return _default.decode(payload)


def _series_error(
    data: bytes,
    header_end: int,
    index: int,
    meta: SeriesMeta | tuple[str, str],
    n_ts: int,
    n_values: int,
    start: int,
    end: int,
) -> SeriesError:
    """A series the walk left out (bytes `start:end`), as its own one-series message."""
    reason, detail = (
        meta
        if isinstance(meta, tuple)
        else ("length_mismatch", f"{n_ts} ts_ms but {n_values} values")
    )
    one_series = data[:header_end] + b"\x02" + data[start:end] + b"\x00"
    return SeriesError(index, reason, f"{RECORD}.series[{index}]: {detail}", one_series)


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


def _resolve(strings: tuple[str, ...], limits: LabelLimits) -> SeriesMeta | tuple[str, str]:
    labels = dict(zip(strings[::2], strings[1::2], strict=True))
    too_big = _over_limits(labels, limits)
    if too_big is not None:
        return too_big
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


def _over_limits(labels: dict[str, str], limits: LabelLimits) -> tuple[str, str] | None:
    """Why a label set is too big to keep, naming it without echoing what is too long."""
    name = _shown(labels.get(NAME_LABEL, ""))
    where = f"name={name}, service={_shown(labels.get(SERVICE_LABEL, ''))}"
    if len(labels) > limits.labels:
        return "too_many_labels", (f"{len(labels)} labels, over the limit of {limits.labels} "
                                   f"({where})")
    total = 0
    for key, value in labels.items():
        for part, text in (("name", key), ("value", value)):
            if "\x00" in text:  # PostgreSQL text and jsonb refuse it
                return "invalid_text", f"label {_shown(key)} {part}: NUL character ({where})"
            size = len(text.encode())
            if size > limits.label_bytes:
                return "label_too_long", (f"label {_shown(key)} {part} is {size} bytes, "
                                          f"over the limit of {limits.label_bytes} ({where})")
            total += size
    if total > limits.series_bytes:
        return "series_too_long", (f"labels total {total} bytes, over the limit of "
                                   f"{limits.series_bytes} ({where})")
    return None


def _shown(text: str) -> str:
    """A label for a detail: short ones whole, long ones cut (the payload keeps them)."""
    return repr(text if len(text) <= 64 else text[:61] + "...")


def _escape(value: str) -> str:
    """Label value escaping of the Prometheus text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
