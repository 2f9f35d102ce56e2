"""internal.windows + vigil.events → detectors, threshold and deadman rules
→ vigil.anomalies, `anomalies`; AlertCondition → internal.conditions (keyed by service).

One agent reads both topics, so a partition's windows and change events share one state
(`pipeline.anomaly.DetectState`). This stage is the door of vigil.events: change events on
the wrong partition are re-produced keyed by service, bad ones dead-lettered.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP
from psycopg.types.json import Jsonb

from agents.checkpoint import CheckpointedStage
from agents.ingest import check, origin_of
from pipeline.aggregate_codec import decode_windows
from pipeline.anomaly import DetectConfig, Detected, DetectState
from pipeline.app import Vigil
from pipeline.codec import CodecError, decode, encode
from pipeline.envelope import sequence_header, wrap
from pipeline.ingest import dead_letter, partition_for
from pipeline.rules import RuleSet, load_rules
from pipeline.selfmetrics import CONSUMED_MESSAGES, PROCESSING_SECONDS, REPARTITIONED
from pipeline.settings import Settings
from pipeline.sinks.timescale import ANOMALIES

_NUMBERED = struct.Struct("<Q")


@dataclass
class DetectPartition:
    core: DetectState
    pending: Detected = field(default_factory=Detected)  # not yet durable
    heard: bool = False  # a window record arrived since the last tick
    # Event time reached (window end + grace of the newest window) and last forwarded to
    # the alerts stage, whose timers (keep_firing_for) only move with its own input.
    stream_ms: int = 0
    forwarded_ms: int = 0
    numbered: int = 0  # AlertConditions made so far (`owe`); the alert stage drops repeats

    def owe(self, judged: Detected) -> None:
        """Output to write at the next checkpoint; its conditions are numbered now, as they
        are made, so a replay from the snapshot numbers them alike."""
        self.pending.extend(judged)
        self.numbered += len(judged.conditions)


def detect_config(settings: Settings) -> DetectConfig:
    width = settings.detect_width_s or min(settings.window_widths_s)
    if width not in settings.window_widths_s:
        raise ValueError(f"VIGIL_DETECT_WIDTH_S={width} is not one of the window widths "
                         f"{settings.window_widths_s}")
    return DetectConfig(width_s=width, sensitivity=settings.detect_sensitivity,
                        season_s=settings.detect_season_s or None,
                        grace_ms=round(settings.grace_s * 1000),
                        keep_firing_for_ms=round(settings.detect_keep_firing_s * 1000),
                        forget_ms=round(settings.detect_forget_s * 1000))


class DetectStage(CheckpointedStage[DetectPartition]):
    name = "detect"
    own_thread = True  # judging a window of ~0.2 ms a series, and megabytes of snapshot

    def __init__(self, vigil: Vigil) -> None:
        super().__init__(vigil)
        s = self.settings
        self.config = detect_config(s)
        self.windows_topic = s.topic("internal.windows")
        self.events_topic = s.topic("events")
        widths, grace_ms = s.window_widths_s, round(s.grace_s * 1000)
        rules = (load_rules(s.config_dir, widths_s=widths, grace_ms=grace_ms)
                 if s.config_dir else RuleSet([], widths_s=widths, grace_ms=grace_ms))
        self.rules = rules
        self.grace_ms = round(s.grace_s * 1000)
        self.step_ms = round(s.stream_time_step_s * 1000)

    def new_state(self, partition: int) -> DetectPartition:
        r = self.rules
        return DetectPartition(DetectState(self.config, RuleSet(r.rules, widths_s=r.widths_s,
                                                                grace_ms=r.grace_ms)))

    def restore(self, blob: bytes) -> DetectPartition:
        (numbered,) = _NUMBERED.unpack_from(blob)
        return DetectPartition(DetectState.restore(blob[_NUMBERED.size:], self.config,
                                                   self.rules), numbered=numbered)

    def snapshot(self, state: DetectPartition) -> bytes:
        return _NUMBERED.pack(state.numbered) + state.core.snapshot()

    def _catalog(self, service: str) -> dict[str, Any] | None:
        return self.vigil.catalog.get(service) if self.vigil.catalog else None

    async def process(self, partition: int, state: DetectPartition, event: Any) -> bool:
        started = time.perf_counter()
        topic = event.message.topic
        short = "internal.windows" if topic == self.windows_topic else "events"
        CONSUMED_MESSAGES.labels(short).inc()
        rerouted = False
        if short == "internal.windows":
            await self._window(state, event)
        else:
            rerouted = self._change(partition, state, event)
        PROCESSING_SECONDS.labels(short).observe(time.perf_counter() - started)
        clock_due = state.stream_ms >= state.forwarded_ms + self.step_ms
        return bool(state.pending or len(self.dead_letters) or rerouted or clock_due)

    async def _window(self, state: DetectPartition, event: Any) -> None:
        try:
            records = decode_windows(event.value or b"")
        except CodecError as exc:
            self._reject(event, "undecodable", str(exc))
            return
        state.heard = True
        await self.off_loop(self._add_windows, state, records)

    def _add_windows(self, state: DetectPartition, records: list[dict[str, Any]]) -> None:
        for record in records:
            state.stream_ms = max(state.stream_ms, record["window_end_ms"] + self.grace_ms)
            judged = state.core.add_window(record, self._catalog)
            if judged:
                state.owe(judged)

    def _change(self, partition: int, state: DetectPartition, event: Any) -> bool:
        """True when the event was re-produced to the partition that owns its service."""
        try:
            change = decode("ChangeEvent", event.value)
        except CodecError as exc:
            self._reject(event, "undecodable", str(exc))
            return False
        key = change["service"].encode()
        problem = check(self.settings, "ChangeEvent", change)
        if problem is not None:
            self._reject(event, *problem)
        elif not change["service"]:
            self._reject(event, "missing_service", "ChangeEvent.service: empty")
        elif partition_for(key, self.settings.partitions) != partition:
            self.vigil.outbox.add("events", key, event.value)
            REPARTITIONED.inc()
            return True
        else:
            state.core.add_change(change)
        return False

    def _reject(self, event: Any, reason: str, detail: str) -> None:
        origin = origin_of(event, self.settings.partitions)
        self.dead_letters.add([dead_letter(origin, event.value or b"", reason, detail)])

    async def tick(self, partition: int, state: DetectPartition) -> bool:
        """Judge a window whose records stopped arriving: nothing came since the last tick
        and the stage has read all there is, so a replay (e.g. after a restore in the middle
        of a window) still finds the window open."""
        if state.core.has_group and not state.heard and self._caught_up(partition):
            state.owe(await self.off_loop(state.core.close_group, self._catalog))
        state.heard = False
        return bool(state.pending)

    def busy(self) -> bool:
        """A window group still open is judged by `tick` once input stops."""
        return super().busy() or any(p.state.core.has_group for p in self.partitions.values())

    def _caught_up(self, partition: int) -> bool:
        consumer = self.vigil.app.consumer
        highwater = consumer.highwater(TP(self.windows_topic, partition)) if consumer else None
        done = self.partitions[partition].offsets.get(self.windows_topic, -1)
        return highwater is not None and done + 1 >= highwater

    async def flush(self, partition: int, state: DetectPartition) -> None:
        out, state.pending = state.pending, Detected()
        first = state.numbered - len(out.conditions) + 1
        clock = None
        if state.stream_ms >= state.forwarded_ms + self.step_ms:
            clock = {"source": f"{self.name}/{partition}", "ts_ms": state.stream_ms}
            state.forwarded_ms = state.stream_ms
        await self.vigil.database.upsert(ANOMALIES, [
            {**row, "labels": Jsonb(row["labels"]), "context": Jsonb(row["context"])}
            for row in out.rows])
        await self.dead_letters.write()
        outbox = self.vigil.outbox
        for record in out.anomalies:
            outbox.add("anomalies", record["affected_service"].encode(),
                       encode("PerformanceAnomalyDetectedEvent", record))
        for number, condition in enumerate(out.conditions, first):
            outbox.add("internal.conditions", condition["labels"].get("service", "").encode(),
                       wrap("AlertCondition", condition),
                       headers=sequence_header(f"{self.name}/{partition}", number))
        if clock is not None:  # after the conditions it covers; same partition number
            outbox.add("internal.conditions", None, wrap("StreamTime", clock),
                       partition=partition)


def register(vigil: Vigil) -> None:
    stage = DetectStage(vigil)
    vigil.stages["detect"] = stage
    s = vigil.settings
    topics = (s.topic("internal.windows"), s.topic("events"))
    channel = vigil.app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", allow_empty=True)
    stage.register(channel, set(topics))
