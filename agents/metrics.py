"""vigil.metrics → windows → metric_aggregates and vigil.aggregates.

Exactly-once results from at-least-once delivery: each partition's aggregation state is
checkpointed into a changelog-backed table together with the offset of the last message
it includes, and input is acknowledged only after the checkpoint. The order is always:
database rows, outbound records (flushed), snapshot, ack. After a crash the restored
snapshot says which messages it already holds; those are skipped, the rest replayed, and
the idempotent sinks absorb any repeated output.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from agents.ingest import DeadLetterBox, origin_of
from pipeline.aggregate import Aggregator, WindowAggregates
from pipeline.app import Vigil
from pipeline.codec import encode
from pipeline.ingest import MetricsDoor, rejected_dead_letters
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

CHECKPOINT_EVERY_S = 1.0
CHECKPOINT_EVERY_MESSAGES = 2000
_OFFSET = struct.Struct("<q")


@dataclass
class PartitionState:
    aggregator: Aggregator
    offset: int  # last input offset the aggregator includes; -1 for none
    pending: list[Any] = field(default_factory=list)  # events to ack at the next checkpoint
    closed: list[WindowAggregates] = field(default_factory=list)
    closable_since: float | None = None
    last_checkpoint: float = field(default_factory=time.monotonic)


class MetricsStage:
    def __init__(self, vigil: Vigil, table: Any) -> None:
        self.vigil = vigil
        self.settings = vigil.settings
        self.table = table
        self.door = MetricsDoor()
        self.dead_letters = DeadLetterBox(vigil.outbox, vigil.database)
        self.partitions: dict[int, PartitionState] = {}
        self.lock = asyncio.Lock()

    def _new_aggregator(self) -> Aggregator:
        s = self.settings
        return Aggregator(s.window_widths_s, int(s.grace_s * 1000), int(s.max_future_s * 1000),
                          idle_ms=int(s.series_idle_s * 1000))

    def state(self, partition: int) -> PartitionState:
        """The partition's state: in memory, else restored from the changelog table."""
        state = self.partitions.get(partition)
        if state is None:
            saved = self.table.get(_key(partition))
            if saved is None:
                state = PartitionState(self._new_aggregator(), -1)
            else:
                (offset,) = _OFFSET.unpack_from(saved)
                state = PartitionState(Aggregator.restore(saved[_OFFSET.size:]), offset)
            self.partitions[partition] = state
        return state

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions: their next owner restores them from the changelog."""
        for partition in partitions:
            self.partitions.pop(partition, None)

    async def on_event(self, event: Any, stream: Any) -> None:
        async with self.lock:
            started = time.perf_counter()
            message = event.message
            state = self.state(message.partition)
            state.pending.append(event)
            if message.offset <= state.offset:
                return  # already inside the restored snapshot
            CONSUMED_MESSAGES.labels("metrics").inc()
            origin = origin_of(event, self.settings.partitions)
            admitted = self.door.admit(event.value, origin)
            self.dead_letters.add(admitted.dead_letters)
            for reason, samples in admitted.dead_samples.items():
                DEAD_LETTERED_SAMPLES.labels(reason).inc(samples)
            for key, payload in admitted.rerouted:
                self.vigil.outbox.add("metrics", key, payload)
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
            state.offset = message.offset
            PROCESSING_SECONDS.labels("metrics").observe(time.perf_counter() - started)
            if (state.closed or len(state.pending) >= CHECKPOINT_EVERY_MESSAGES
                    or time.monotonic() - state.last_checkpoint >= CHECKPOINT_EVERY_S):
                await self._checkpoint(message.partition, state, stream)

    async def checkpoint_all(self, stream: Any) -> None:
        """Timer: checkpoint partitions that have gone quiet with unacked input."""
        async with self.lock:
            now = time.monotonic()
            for partition, state in list(self.partitions.items()):
                if state.pending and now - state.last_checkpoint >= CHECKPOINT_EVERY_S:
                    await self._checkpoint(partition, state, stream)

    async def _checkpoint(self, partition: int, state: PartitionState, stream: Any) -> None:
        rows = []
        for window in state.closed:
            rows.extend(self._rows(window))
            WINDOWS_CLOSED.labels(str(window.width_s)).inc(len(window))
        state.closed = []
        await self.vigil.database.upsert(METRIC_AGGREGATES, rows)
        await self.dead_letters.write()
        for row in rows:
            self.vigil.outbox.add("aggregates", row["series_id"].encode(),
                                  encode("WindowAggregate", row["record"]))
        await self.vigil.outbox.flush()
        if state.closable_since is not None:
            WINDOW_CLOSE_DELAY.observe(time.perf_counter() - state.closable_since)
            state.closable_since = None
        snapshot = _OFFSET.pack(state.offset) + state.aggregator.snapshot()
        self.table.data[_key(partition)] = snapshot
        self.table.send_changelog(partition, _key(partition), snapshot)
        for event in state.pending:
            await stream.ack(event)
        state.pending = []
        state.last_checkpoint = time.monotonic()
        ACTIVE_SERIES.set(sum(s.aggregator.series_count for s in self.partitions.values()))

    def _rows(self, window: WindowAggregates) -> list[dict[str, Any]]:
        bucket = datetime.fromtimestamp(window.window_start_ms / 1000, UTC)
        end_ms = window.window_start_ms + window.width_s * 1000
        rows = []
        for closed in window:
            info = self.vigil.catalog.get(closed.service) if self.vigil.catalog else None
            team = info["team"] if info else None
            tier = info["tier"] if info else None
            environment = info["environment"] if info else None
            values = {"count": closed.count, "sum": closed.sum, "min": closed.min,
                      "max": closed.max, "mean": closed.mean, "last": closed.last,
                      "increase": closed.increase, "rate": closed.rate, "p50": closed.p50,
                      "p90": closed.p90, "p95": closed.p95, "p99": closed.p99}
            record = {"series_id": closed.series_id, "name": closed.name,
                      "service": closed.service, "labels": closed.labels, "kind": closed.kind,
                      "width_s": closed.width_s, "window_start_ms": closed.window_start_ms,
                      "window_end_ms": end_ms, "team": team, "tier": tier,
                      "environment": environment, **values}
            rows.append({"bucket": bucket, "width_s": closed.width_s,
                         "service": closed.service, "name": closed.name,
                         "labels": Jsonb(closed.labels), "kind": closed.kind, "team": team,
                         "tier": tier, "environment": environment, "series_id": closed.series_id,
                         "record": record, **values})
        return rows


def _key(partition: int) -> bytes:
    return f"p{partition}".encode()


def register(vigil: Vigil) -> None:
    app = vigil.app
    table = app.Table("aggregate-state", default=None, partitions=vigil.settings.partitions,
                      key_type=bytes, value_type=bytes)
    stage = MetricsStage(vigil, table)
    vigil.stages["metrics"] = stage
    streams: list[Any] = []

    @app.agent(vigil.topic("metrics"), name="metrics")
    async def metrics_agent(stream: Any) -> None:
        manual = stream.noack()
        streams.append(manual)
        async for event in manual.events():
            await stage.on_event(event, manual)

    @app.timer(CHECKPOINT_EVERY_S / 2)
    async def checkpoint_quiet_partitions() -> None:
        if streams:
            await stage.checkpoint_all(streams[0])

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        stage.forget({tp.partition for tp in revoked
                      if tp.topic == vigil.settings.topic("metrics")})
