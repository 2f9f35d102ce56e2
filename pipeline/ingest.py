"""Validation at the door: decode input, route it to the partition that owns its service,
and turn everything unusable into dead letters with a reason (PRODUCT.md §4)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka.partitioner import murmur2

from pipeline.aggregate import Rejected
from pipeline.batch import KIND_NAMES, SampleBatch
from pipeline.codec import CodecError, decode, encode
from pipeline.metricbatch import MetricBatchDecoder

MAX_DETAIL = 1000


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
            "detail": detail[:MAX_DETAIL]}


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

    def __init__(self) -> None:
        self._decoder = MetricBatchDecoder()
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
