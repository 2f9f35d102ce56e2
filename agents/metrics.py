"""vigil.metrics → event-time windows → metric_aggregates, vigil.aggregates, and the
internal windows topic (keyed by service; each message a window's records of one service, back
to back) that detection and SLOs read."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.checkpoint import CheckpointedStage
from agents.ingest import origin_of
from pipeline.aggregate import Aggregator, WindowAggregates
from pipeline.aggregate_codec import COPY_COLUMNS, AggregateEncoder, windows_messages
from pipeline.app import Vigil
from pipeline.envelope import first_time, header
from pipeline.ingest import MetricsDoor, rejected_dead_letters
from pipeline.metricbatch import LabelLimits
from pipeline.selfmetrics import (
    ACTIVE_SERIES,
    AGGREGATED_SAMPLES,
    CONSUMED_MESSAGES,
    CONSUMED_SAMPLES,
    DEAD_LETTERED_SAMPLES,
    LATE_SAMPLES,
    PROCESSING_SECONDS,
    REPARTITIONED,
    WINDOW_CLOSE_DELAY,
    WINDOWS_CLOSED,
)
from pipeline.sinks.timescale import METRIC_AGGREGATES
from pipeline.slo import le_bounds, load_slos


@dataclass
class MetricsState:
    aggregator: Aggregator
    # Per source partition, the last source offset whose re-routed series this partition
    # took: a source replayed after a crash re-routes them again, and those copies are
    # dropped here instead of being counted twice.
    rerouted_upto: dict[int, int] = field(default_factory=dict)
    closed: list[WindowAggregates] = field(default_factory=list)  # not yet durable
    closable_since: float | None = None


class MetricsStage(CheckpointedStage[MetricsState]):
    name = "aggregate"
    output_at_cut = True  # see `flush_all`

    def __init__(self, vigil: Vigil) -> None:
        super().__init__(vigil)
        s = vigil.settings
        self.door = MetricsDoor(LabelLimits(s.max_labels, s.max_label_bytes,
                                            s.max_series_bytes))
        # Latency SLIs need "observations <= le", which only the window's sketch knows.
        config = vigil.settings.config_dir
        self.encoder = AggregateEncoder(
            le_bounds(slo for slo, _ in load_slos(config)) if config else ())

    def new_state(self, partition: int) -> MetricsState:
        s = self.settings
        return MetricsState(Aggregator(s.window_widths_s, int(s.grace_s * 1000),
                                       int(s.max_future_s * 1000),
                                       idle_ms=int(s.series_idle_s * 1000)))

    def restore(self, blob: bytes) -> MetricsState:
        (size,) = _MARKS.unpack_from(blob)
        marks = json.loads(blob[_MARKS.size:_MARKS.size + size])
        return MetricsState(Aggregator.restore(blob[_MARKS.size + size:]),
                            {int(k): v for k, v in marks.items()})

    def snapshot(self, state: MetricsState) -> bytes:
        marks = json.dumps(state.rerouted_upto).encode()
        return _MARKS.pack(len(marks)) + marks + state.aggregator.snapshot()

    async def process(self, partition: int, state: MetricsState, event: Any) -> bool:
        started = time.perf_counter()
        _CONSUMED.inc()
        origin = origin_of(event, self.settings.partitions)
        source = rerouted_from(event.message.headers)
        if source is not None and not first_time(state.rerouted_upto, *source):
            return False  # a copy re-routed again by a replayed source
        admitted = self.door.admit(event.value, origin)
        self.dead_letters.add(admitted.dead_letters)
        for reason, samples in admitted.dead_samples.items():
            DEAD_LETTERED_SAMPLES.labels(reason).inc(samples)
        if admitted.rerouted:
            header: list[tuple[str, str | bytes | None]] = [
                (REROUTED_HEADER, f"{origin.partition}:{origin.offset}".encode())]
            for key, payload in admitted.rerouted:
                self.vigil.outbox.add("metrics", key, payload, headers=header)
                REPARTITIONED.inc()
        batch = admitted.batch
        if batch is not None:
            CONSUMED_SAMPLES.inc(batch.sample_count)
            rejected = state.aggregator.add(batch, int(time.time() * 1000))
            AGGREGATED_SAMPLES.inc(batch.sample_count - len(rejected))
            if len(rejected):
                letters, counts = rejected_dead_letters(batch, rejected, origin)
                self.dead_letters.add(letters)
                for reason, samples in counts.items():
                    DEAD_LETTERED_SAMPLES.labels(reason).inc(samples)
                LATE_SAMPLES.inc(counts.get("late", 0))
            closed = state.aggregator.close_due()
            if closed:
                state.closed.extend(closed)
                state.closable_since = state.closable_since or started
        _PROCESSING.observe(time.perf_counter() - started)
        return bool(state.closed or len(self.dead_letters) or admitted.rerouted)

    async def flush_all(self, cut: list[tuple[int, MetricsState]]) -> None:
        """Every partition's closed windows in one COPY: windows of all partitions close
        within milliseconds of each other, and one write each would queue them behind one
        another (window close → outbound record is a latency target). The records are
        produced first, before any `await`: they leave in checkpoint order and travel to
        the broker while the COPY runs. Input is acknowledged only once both are durable;
        a crash in between repeats records with the same key and content."""
        closed = [window for _, state in cut for window in state.closed]
        closable_since = [state.closable_since for _, state in cut
                          if state.closable_since is not None]
        for _, state in cut:
            state.closed, state.closable_since = [], None
        encoded = [self.encoder.encode(window, self._catalog) for window in closed]
        outbox = self.vigil.outbox
        for window, out in zip(closed, encoded, strict=True):
            WINDOWS_CLOSED.labels(str(window.width_s)).inc(len(window))
            outbox.add_many("aggregates", zip([s.encode() for s in out.series_ids],
                                              out.records, strict=True))
            outbox.add_many("internal.windows", ((service.encode(), payload)
                                                 for service, payload in windows_messages(out)))
        await self.vigil.database.upsert_copy(
            METRIC_AGGREGATES, COPY_COLUMNS, [r for e in encoded for r in e.rows])
        await self.dead_letters.write()
        finished = time.perf_counter()
        for since in closable_since:
            WINDOW_CLOSE_DELAY.observe(finished - since)
        ACTIVE_SERIES.set(sum(p.state.aggregator.series_count
                              for p in self.partitions.values()))

    def _catalog(self, service: str) -> Mapping[str, Any] | None:
        return self.vigil.catalog.get(service) if self.vigil.catalog else None


REROUTED_HEADER = "vigil-rerouted-from"
_CONSUMED = CONSUMED_MESSAGES.labels("metrics")  # label lookups cost a microsecond or two
_PROCESSING = PROCESSING_SECONDS.labels("metrics")
_MARKS = struct.Struct("<I")


def rerouted_from(headers: Any) -> tuple[int, int] | None:
    """(source partition, source offset) of a re-routed copy, from its header."""
    value = header(headers, REROUTED_HEADER)
    if not value:
        return None
    partition, _, offset = value.decode().partition(":")
    return int(partition), int(offset)


def register(vigil: Vigil) -> None:
    stage = MetricsStage(vigil)
    vigil.stages["metrics"] = stage
    stage.register(vigil.topic("metrics"), {vigil.settings.topic("metrics")})
