"""Validation at the door: decode input, route it to the partition that owns its service,
and turn everything unusable into dead letters with a reason (PRODUCT.md §4)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka.partitioner import murmur2

from pipeline.aggregate import Rejected
from pipeline.batch import KIND_NAMES, SampleBatch
from pipeline.codec import CodecError, decode, encode
from pipeline.metricbatch import LabelLimits, MetricBatchDecoder

MAX_DETAIL = 1000
"""Bytes (UTF-8) of a dead letter's detail: it is part of the dead_letters btree key."""
FREE_TEXT = frozenset({"description", "message"})
"""String fields of input records that are prose, stored but never a key: not bounded."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an input message came from; its Kafka timestamp makes dead letters replayable
    (a replay yields the same dead letter, not a second one)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    ts_ms: int
    partitions: int


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default (Java, aiokafka, Faust) partition of a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def dead_letter(origin: Origin, payload: bytes, reason: str, detail: str) -> dict[str, Any]:
    return {"ts_ms": origin.ts_ms, "topic": origin.topic, "partition": origin.partition,
            "offset": origin.offset, "key": origin.key, "payload": payload, "reason": reason,
            "detail": storable(detail)}


def storable(detail: str) -> str:
    """A detail fit for the dead_letters key: NUL escaped (PostgreSQL text refuses it) and
    cut to MAX_DETAIL bytes at a character boundary."""
    return detail.replace("\x00", "\\x00").encode()[:MAX_DETAIL].decode(errors="ignore")


def refused(record_type: str, record: Mapping[str, Any], max_bytes: int, latest_ms: int
            ) -> tuple[str, str] | None:
    """(reason, detail) when a decoded input record fits its schema but cannot be used:
    `invalid_timestamp` (ts_ms before the epoch) or `future` (after `latest_ms`, i.e. now +
    max future: event time drives every clock downstream); `invalid_text` (a NUL character
    anywhere: PostgreSQL text and jsonb refuse it); `label_too_long` (a name longer than
    `max_bytes`: services, instances, matchers and the like end up in btree keys). Prose
    fields (FREE_TEXT) are not bounded."""
    ts = record.get("ts_ms")
    if ts is not None and ts < 0:
        return "invalid_timestamp", f"{record_type}.ts_ms: {ts} is before 1970-01-01"
    if ts is not None and ts > latest_ms:
        return "future", f"{record_type}.ts_ms: {ts} is after now + max future ({latest_ms})"
    stack: list[tuple[str, Any]] = [(record_type, record)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return "invalid_text", f"{path}: NUL character not allowed"
            if len(value) * 4 > max_bytes and path.rpartition(".")[2] not in FREE_TEXT \
                    and len(value.encode()) > max_bytes:
                return "label_too_long", (f"{path}: {len(value.encode())} bytes, over the "
                                          f"limit of {max_bytes}")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                at = f"{path}.{key}" if value is record else f"{path}[{key[:40]!r}]"
                stack.extend(((at, key), (at, item)))  # a map key is checked like its value
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return None


@dataclass
class MetricsInput:
    """One MetricBatch message after the door: samples to aggregate here, series that belong
    to another partition (to re-produce keyed by service), and dead letters."""

    batch: SampleBatch | None = None
    rerouted: list[tuple[bytes, bytes]] = field(default_factory=list)  # (service key, payload)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    dead_samples: dict[str, int] = field(default_factory=dict)


class MetricsDoor:
    """Decodes MetricBatch messages for one worker; keeps the decoder's label caches."""

    def __init__(self, limits: LabelLimits = LabelLimits()) -> None:
        self._decoder = MetricBatchDecoder(limits=limits)
        self._owner: dict[tuple[str, int], int] = {}

    def admit(self, payload: bytes | None, origin: Origin) -> MetricsInput:
        result = MetricsInput()
        if not payload:
            result.dead_letters.append(dead_letter(origin, payload or b"", "undecodable",
                                                   "MetricBatch: empty message"))
            return result
        try:
            batch, series_errors = self._decoder.decode(payload)
        except CodecError as exc:
            result.dead_letters.append(dead_letter(origin, payload, "undecodable", str(exc)))
            return result
        for error in series_errors:
            result.dead_letters.append(dead_letter(origin, error.payload, error.reason,
                                                   error.detail))
            samples = len(decode("MetricBatch", error.payload)["series"][0]["values"])
            result.dead_samples[error.reason] = result.dead_samples.get(error.reason, 0) + samples
        foreign = self._foreign_services(batch, origin)
        if foreign:
            result.rerouted = _split_by_service(payload, foreign, series_errors)
            batch = _without_services(batch, foreign)
        result.batch = batch if batch.sample_count else None
        return result

    def _foreign_services(self, batch: SampleBatch, origin: Origin) -> set[str]:
        """Services this partition does not own (keyless or mis-partitioned messages)."""
        foreign = set()
        for service in set(batch.services):
            owner = self._owner.get((service, origin.partitions))
            if owner is None:
                owner = partition_for(service.encode(), origin.partitions)
                if len(self._owner) < 100_000:
                    self._owner[(service, origin.partitions)] = owner
            if owner != origin.partition:
                foreign.add(service)
        return foreign


def _split_by_service(payload: bytes, services: set[str],
                      series_errors: Sequence[Any]) -> list[tuple[bytes, bytes]]:
    """Re-encode the series of each foreign service as its own message (rare path)."""
    record = decode("MetricBatch", payload)
    symbols = record["symbols"]
    skipped = {error.index for error in series_errors}
    by_service: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for index, series in enumerate(record["series"]):
        if index in skipped:
            continue
        refs = series["labels_refs"]
        labels = {symbols[refs[i]]: symbols[refs[i + 1]] for i in range(0, len(refs), 2)}
        if labels.get("service") in services:
            by_service[labels["service"]].append(series)
    return [(service.encode(), encode("MetricBatch", {"source": record["source"],
                                                      "symbols": symbols, "series": series}))
            for service, series in sorted(by_service.items())]


def _without_services(batch: SampleBatch, services: set[str]) -> SampleBatch:
    keep = np.array([s not in services for s in batch.services], dtype=bool)
    kept = np.flatnonzero(keep)
    renumber = np.cumsum(keep) - 1
    sample_keep = keep[batch.series_index]
    return SampleBatch(
        source=batch.source,
        series_ids=[batch.series_ids[i] for i in kept],
        names=[batch.names[i] for i in kept],
        services=[batch.services[i] for i in kept],
        labels=[batch.labels[i] for i in kept],
        kinds=batch.kinds[kept],
        series_index=renumber[batch.series_index[sample_keep]].astype(np.int32),
        ts_ms=batch.ts_ms[sample_keep],
        values=batch.values[sample_keep],
    )


def rejected_dead_letters(batch: SampleBatch, rejected: Rejected, origin: Origin
                          ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One dead letter per (series, reason): a MetricBatch of exactly the rejected samples,
    so they can be inspected, replayed and counted; the detail names the first of them."""
    letters: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    groups: dict[tuple[int, str], list[tuple[int, str]]] = defaultdict(list)
    for position, reason, detail in rejected.details(batch):
        groups[(int(batch.series_index[position]), reason)].append((position, detail))
    for (index, reason), samples in groups.items():
        positions = [position for position, _ in samples]
        symbols = ["__name__", batch.names[index]]
        for label, value in sorted(batch.labels[index].items()):
            symbols += [label, value]
        payload = encode("MetricBatch", {
            "source": batch.source, "symbols": symbols,
            "series": [{"labels_refs": list(range(len(symbols))),
                        "kind": KIND_NAMES[int(batch.kinds[index])],
                        "ts_ms": batch.ts_ms[positions].tolist(),
                        "values": batch.values[positions].tolist()}]})
        more = f" and {len(samples) - 1} more sample(s)" if len(samples) > 1 else ""
        letters.append(dead_letter(origin, payload, reason, samples[0][1] + more))
        counts[reason] = counts.get(reason, 0) + len(samples)
    return letters, counts
