"""internal.windows + vigil.health → SLO rings → every minute of event time: SloStatus to
vigil.slo and `slo_status`, burn-rate AlertConditions to internal.conditions.

Each partition tracks the SLOs whose service hashes to it. A minute of an SLO is complete
once the partition's stream time of the SLO's input passes the minute's end plus the grace:
window aggregates for metric SLOs (their stream time is the largest `window_end_ms` seen;
the aggregator emits a partition's windows in order of end, so every aggregate of a minute
is in by then), health results for health SLOs. Each SLO thus depends on one input topic
only, and a replay yields the same statuses and conditions whatever the interleaving of the
two topics. Input for a completed minute is dropped, which also drops the aggregates the
metrics stage repeats after a crash; a repeat within an open minute is recognised by its
series id.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agents.checkpoint import CheckpointedStage
from agents.ingest import check, origin_of
from pipeline.aggregate_codec import decode_windows
from pipeline.app import Vigil
from pipeline.codec import CodecError, decode, encode
from pipeline.envelope import sequence_header, wrap
from pipeline.ingest import dead_letter, partition_for
from pipeline.selfmetrics import CONSUMED_MESSAGES, PROCESSING_SECONDS
from pipeline.sinks.timescale import SLO_STATUS
from pipeline.slo import (
    MINUTE_MS,
    BurnAlert,
    HealthSide,
    SliError,
    SliFeed,
    Slo,
    SloState,
    SloStatus,
    evaluate,
    load_slos,
)

WINDOWS, HEALTH = "windows", "health"
_NO_TIME = -(2**62)
_LENGTH = np.dtype("<u4")
_PARTITION = struct.Struct("<I")


@dataclass
class Tracked:
    """One SLO on this partition: its rings, the last minute reported, the burn alerts
    whose condition holds, and the series counted per minute not yet complete."""

    slo: Slo
    state: SloState
    done: int | None = None  # minutes since the epoch
    active: set[str] = field(default_factory=set)
    seen: dict[int, set[str]] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return HEALTH if isinstance(self.slo.good, HealthSide) else WINDOWS


class SloPartition:
    """The SLOs of one partition and the outputs they owe (pure: no I/O)."""

    def __init__(self, partition: int, slos: Sequence[Slo], width_s: int, grace_ms: int
                 ) -> None:
        self.partition = partition
        self.feed = SliFeed(slos, width_s)
        self.grace_ms = max(grace_ms, 1)  # a window ending on the minute belongs to it
        self.tracked = {slo.name: Tracked(slo, SloState(slo.window_minutes)) for slo in slos}
        self.clocks = {WINDOWS: _NO_TIME, HEALTH: _NO_TIME}
        self.dropped = 0  # input for minutes already reported (late, or repeated)
        self.numbered = 0  # conditions sent so far; the alert stage drops repeats
        self.statuses: list[SloStatus] = []  # owed, drained by the caller
        self.conditions: list[BurnAlert] = []

    def window(self, aggregate: Mapping[str, Any]) -> None:
        """One closed WindowAggregate; raises SliError if it cannot feed an SLO it matches
        (then nothing of it was counted)."""
        self._advance(WINDOWS, aggregate["window_end_ms"])
        window = f"{aggregate['window_start_ms']} {aggregate['series_id']}"
        self._count(self.feed.aggregate(aggregate), window)

    def health(self, result: Mapping[str, Any]) -> None:
        self._advance(HEALTH, result["ts_ms"])
        self._count(self.feed.health(result), None)

    def _count(self, amounts: Iterable[tuple[Slo, int, float, float]], window: str | None
               ) -> None:
        for slo, minute_ms, good, total in amounts:
            tracked = self.tracked[slo.name]
            minute = minute_ms // MINUTE_MS
            if tracked.done is not None and minute <= tracked.done:
                self.dropped += 1
                continue
            if window is not None:
                seen = tracked.seen.setdefault(minute, set())
                if window in seen:
                    self.dropped += 1
                    continue
                seen.add(window)
            if not tracked.state.add(minute_ms, good, total):
                self.dropped += 1

    def _advance(self, source: str, ts_ms: int) -> None:
        if ts_ms <= self.clocks[source]:
            return
        self.clocks[source] = ts_ms
        complete = (ts_ms - self.grace_ms) // MINUTE_MS - 1  # last minute whose input is in
        for tracked in self.tracked.values():
            if tracked.source == source and tracked.state.first is not None:
                self._report(tracked, complete)

    def _report(self, tracked: Tracked, complete: int) -> None:
        state, slo = tracked.state, tracked.slo
        assert state.first is not None
        start = state.first if tracked.done is None else tracked.done + 1
        # A gap longer than the ring is skipped: every status in it would say "no events".
        for minute in range(max(start, complete - state.size + 1), complete + 1):
            status = state.status(slo, minute * MINUTE_MS)
            self.statuses.append(status)
            for alert in evaluate(status):
                if alert.active or alert.alertname in tracked.active:
                    self.conditions.append(alert)
                (tracked.active.add if alert.active else tracked.active.discard)(alert.alertname)
        if complete >= start:
            tracked.done = complete
            tracked.seen = {m: s for m, s in tracked.seen.items() if m > complete}

    def drain(self) -> tuple[list[SloStatus], list[BurnAlert]]:
        out = self.statuses, self.conditions
        self.statuses, self.conditions = [], []
        return out

    # -- snapshots: a JSON header, then each SLO's ring snapshot -----------------------

    def snapshot(self) -> bytes:
        slos = [{"name": name, "done": t.done, "active": sorted(t.active),
                 "seen": {str(m): sorted(s) for m, s in t.seen.items()}}
                for name, t in self.tracked.items()]
        header = {"clocks": self.clocks, "dropped": self.dropped, "numbered": self.numbered,
                  "slos": slos}
        rings = [t.state.to_bytes() for t in self.tracked.values()]
        parts = [json.dumps(header).encode(), *rings]
        lengths = np.array([len(p) for p in parts], dtype=_LENGTH)
        return _LENGTH.type(len(parts)).tobytes() + lengths.tobytes() + b"".join(parts)

    @classmethod
    def restore(cls, blob: bytes, partition: int, slos: Sequence[Slo], width_s: int,
                grace_ms: int) -> SloPartition:
        """The saved partition under the current `slos`: SLOs no longer defined are
        dropped, new ones start empty, and a changed window keeps the minutes it covers."""
        count = int(np.frombuffer(blob, _LENGTH, 1)[0])
        lengths = np.frombuffer(blob, _LENGTH, count, _LENGTH.itemsize).tolist()
        offset = _LENGTH.itemsize * (count + 1)
        parts = []
        for length in lengths:
            parts.append(blob[offset:offset + length])
            offset += length
        header = json.loads(parts[0])
        part = cls(partition, slos, width_s, grace_ms)
        part.clocks = header["clocks"]
        part.dropped = header["dropped"]
        part.numbered = header["numbered"]
        for saved, ring in zip(header["slos"], parts[1:], strict=True):
            tracked = part.tracked.get(saved["name"])
            if tracked is None:
                continue
            tracked.state = _fit(SloState.from_bytes(ring), tracked.slo.window_minutes)
            tracked.done = saved["done"]
            tracked.active = set(saved["active"])
            tracked.seen = {int(m): set(s) for m, s in saved["seen"].items()}
        return part


def _fit(state: SloState, window_minutes: int) -> SloState:
    """`state` in a ring sized for `window_minutes` (the same one if it already is)."""
    fitted = SloState(window_minutes)
    if fitted.size == state.size or state.head is None or state.first is None:
        return state if fitted.size == state.size else fitted
    first = max(state.first, state.head - min(state.size, fitted.size) + 1)
    minutes = np.arange(first, state.head + 1)
    fitted.good[minutes % fitted.size] = state.good[minutes % state.size]
    fitted.total[minutes % fitted.size] = state.total[minutes % state.size]
    fitted.head, fitted.first = state.head, first
    return fitted


def status_row(status: SloStatus) -> dict[str, Any]:
    """The `slo_status` row of one status (ts: the end of the minute it covers)."""
    record = status.to_record()
    exhaustion = record.pop("exhaustion_at_ms")
    return {**record, "ts": datetime.fromtimestamp(record.pop("ts_ms") / 1000, UTC),
            "exhaustion_at": None if exhaustion is None
            else datetime.fromtimestamp(exhaustion / 1000, UTC)}


def condition(alert: BurnAlert) -> dict[str, Any]:
    """The AlertCondition of one burn alert: the windows, their burn rates, budget left."""
    annotations = {
        **alert.annotations,
        "slo": alert.slo,
        "windows": f"{alert.long_window} and {alert.short_window}",
        f"burn_rate_{alert.long_window}": f"{alert.long_burn_rate:.4f}",
        f"burn_rate_{alert.short_window}": f"{alert.short_burn_rate:.4f}",
        "threshold": f"{alert.factor:g}",
    }
    return {"labels": alert.labels, "annotations": annotations, "source": "slo",
            "active": alert.active, "pulse": False, "ts_ms": alert.ts_ms, "for_ms": 0,
            "keep_firing_for_ms": 0}


class SloStage(CheckpointedStage[SloPartition]):
    name = "slo"

    def __init__(self, vigil: Vigil) -> None:
        super().__init__(vigil)
        # Snapshots hold every minute of every SLO's window (~100 KB per SLO compressed):
        # write them every slo_checkpoint_s, not every second.
        self.min_checkpoint_interval_s = self.settings.slo_checkpoint_s
        config = self.settings.config_dir
        self.slos = [slo for slo, _ in load_slos(config)] if config else []
        self.width_s = self.settings.slo_width_s
        self.grace_ms = int(self.settings.grace_s * 1000)
        self.topics = {vigil.settings.topic("internal.windows"): WINDOWS,
                       vigil.settings.topic("health"): HEALTH}
        self.rows: dict[int, list[dict[str, Any]]] = {}  # per partition, not yet durable

    def _slos_of(self, partition: int) -> list[Slo]:
        partitions = self.settings.partitions
        return [s for s in self.slos if partition_for(s.service.encode(), partitions) == partition]

    def new_state(self, partition: int) -> SloPartition:
        return SloPartition(partition, self._slos_of(partition), self.width_s, self.grace_ms)

    def restore(self, blob: bytes) -> SloPartition:
        (number,) = _PARTITION.unpack_from(blob)
        return SloPartition.restore(blob[_PARTITION.size:], number, self._slos_of(number),
                                    self.width_s, self.grace_ms)

    def snapshot(self, state: SloPartition) -> bytes:
        return _PARTITION.pack(state.partition) + state.snapshot()

    async def process(self, partition: int, state: SloPartition, event: Any) -> bool:
        started = time.perf_counter()
        source = self.topics[event.message.topic]
        CONSUMED_MESSAGES.labels(source).inc()
        record_type = "WindowAggregate" if source == WINDOWS else "HealthCheckResult"
        value = event.value or b""
        try:
            records = (decode_windows(value) if source == WINDOWS
                       else [decode(record_type, value)])
        except CodecError as exc:
            records = []
            # Bad health input is dead-lettered once, by its door: the alerts stage.
            if source == WINDOWS:
                self._reject(event, value, "undecodable", str(exc))
        for record in records:  # an internal.windows message carries many
            try:
                if source == WINDOWS:
                    state.window(record)
                elif check(self.settings, record_type, record) is None:
                    state.health(record)
            except SliError as exc:
                self._reject(event, encode(record_type, record), "sli_unusable", str(exc))
        statuses, alerts = state.drain()
        outbox = self.vigil.outbox
        for status in statuses:
            outbox.add("slo", status.slo.encode(), encode("SloStatus", status.to_record()))
        self.rows.setdefault(partition, []).extend(map(status_row, statuses))
        for alert in alerts:
            state.numbered += 1
            outbox.add("internal.conditions", alert.service.encode(),
                       wrap("AlertCondition", condition(alert)),
                       headers=sequence_header(f"{self.name}/{partition}", state.numbered))
        PROCESSING_SECONDS.labels(source).observe(time.perf_counter() - started)
        return False

    def _reject(self, event: Any, payload: bytes, reason: str, detail: str) -> None:
        origin = origin_of(event, self.settings.partitions)
        self.dead_letters.add([dead_letter(origin, payload, reason, detail)])

    async def flush(self, partition: int, state: SloPartition) -> None:
        rows = self.rows.pop(partition, [])
        await self.dead_letters.write()  # takes its letters before it first waits
        await self.vigil.database.upsert(SLO_STATUS, rows)

    def forget(self, revoked: set[int]) -> None:
        super().forget(revoked)
        for number in revoked:
            self.rows.pop(number, None)


def register(vigil: Vigil) -> None:
    stage = SloStage(vigil)
    vigil.stages["slo"] = stage
    names = tuple(stage.topics)
    channel = vigil.app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=vigil.settings.partitions)
    stage.register(channel, set(names))
