"""Decode Avro MetricBatch bytes straight into a columnar `SampleBatch`.

fastavro builds a Python float and int per sample, and a Python walk costs microseconds per
series. So the byte walk is compiled (`pipeline/_metricbatch.pyx`): it reads exactly the
bytes the schema in `schemas/MetricBatch.avsc` describes (multi-block arrays included) into
numpy columns, and refuses anything else with a `CodecError` named by the codec's reader.
Python is left with what is rare: resolving label sets not seen before, and reporting.

A series that is well-formed Avro but unusable (no `service`, no `__name__`, more values
than timestamps) is left out of the batch and reported as a `SeriesError`, so the caller
dead-letters it alone and keeps the rest of the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import pipeline._metricbatch as _walk
from pipeline.batch import SampleBatch
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
            if len(self._tables) >= self.max_tables:
                del self._tables[next(iter(self._tables))]
            table = self._tables[raw] = _SymbolTable(_walk.strings(raw))
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
            meta = self._metas[strings] = _resolve(strings)
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
