"""internal.incident-feed (one partition: every alert) → incidents → vigil.incidents, the
`incidents` and `incident_events` tables, `alerts.incident_id`, vigil.remediation.

The feed carries, wrapped (pipeline/envelope.py):
- AlertEvent and StreamTime from agents/alerts, Feedback from agents/feedback, keyed
  ``<origin>/<partition>/<n>`` with *n* increasing per origin and partition. A replay
  upstream repeats records with their keys, so a record numbered at or below the last one
  taken from its origin is a repeat and is dropped: each is applied exactly once.
- ServiceInfo from agents/catalog keyed by service; an empty payload means the service was
  removed (the compacted topic's null value). Applying one twice changes nothing.

The alert stage's partitions arrive interleaved as they happen to, but what an incident
does depends on order (is it still open when its escalation falls due?), so numbered
records are held and applied in event-time order across partitions
(`pipeline.watermark.WatermarkMerge`): the same order in every run and after a crash.
Held records are released when every partition has passed them, when the fastest is
`incident_max_skew_s` ahead, or when nothing more can come. Every alert partition is
expected from the start; one that has not spoken stops holding the others back once the
consumer group has committed everything upstream of it (`UPSTREAM`, on whichever worker
reads it) and the feed has been read as far as it reached then: whatever that partition
made is here. The same look, over every partition, decides when to release everything:
"this worker is idle" alone cannot tell a finished input from a partition another worker
(or a dead one) holds, or a broker that is away.

Stream time is the largest ts_ms applied (alert updates, feedback, forwarded event time);
correlation and escalation run on it. Incident rules live in pipeline/incidents.py; their
knobs are config-as-code: `VIGIL_CONFIG_DIR/incidents.yaml` (correlation_window,
escalation: {L1, L2, L3}, default_tier) and `runbooks.yaml` (alertname → action, parameters).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from faust.types import TP
from psycopg.types.json import Jsonb

from agents.checkpoint import CheckpointedStage
from agents.ingest import origin_of
from pipeline.app import Vigil
from pipeline.catalog import Catalog, ServiceInfo
from pipeline.codec import CodecError, decode, encode
from pipeline.envelope import first_time
from pipeline.incident_config import load_incident_config
from pipeline.incidents import (
    ACKNOWLEDGED,
    MITIGATED,
    RESOLVED,
    Effects,
    IncidentBook,
)
from pipeline.ingest import dead_letter
from pipeline.kafka import client_config, group_progress
from pipeline.selfmetrics import (
    CONSUMED_MESSAGES,
    HELD_FEED_RECORDS,
    OPEN_INCIDENTS,
    PROCESSING_SECONDS,
)
from pipeline.sinks.timescale import ALERT_INCIDENT, INCIDENT_EVENTS, INCIDENTS
from pipeline.watermark import WatermarkMerge

FEED = "internal.incident-feed"
UPSTREAM = ("metrics", "internal.windows", "internal.conditions", "health", "events")
"""What the alert stage's partition p feeds comes from partition p of these."""
LOOK_EVERY_S = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """Where the consumer group stood upstream of the feed, at one look."""

    progress: dict[tuple[str, int], tuple[int, int]]  # (topic, partition): committed, end
    feed_end: int  # the feed's end, read after the commits: it holds what they made
    started: float  # monotonic time the look began


# -- the stage ------------------------------------------------------------------------------

@dataclass
class Extra:
    """What the incidents table holds beyond an IncidentEvent."""

    started_at_ms: int  # earliest start of its alerts' conditions
    acknowledged_by: str | None = None
    mitigated_at_ms: int | None = None
    last_entry: dict[str, Any] | None = None  # newest timeline entry already stored


@dataclass
class IncidentsState:
    book: IncidentBook
    catalog: Catalog
    merge: WatermarkMerge
    stream_ms: int = 0
    taken: dict[str, int] = field(default_factory=dict)  # feed origin → last number applied
    extras: dict[str, Extra] = field(default_factory=dict)  # by open incident id
    # not yet durable:
    incidents: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)


class IncidentsStage(CheckpointedStage[IncidentsState]):
    name = "incidents"

    def __init__(self, vigil: Vigil) -> None:
        super().__init__(vigil)
        self.config = load_incident_config(vigil.settings.config_dir)
        self.max_skew_ms = round(vigil.settings.incident_max_skew_s * 1000)
        self.origins = {f"alerts/{p}": p for p in range(vigil.settings.partitions)}
        self.feed_topic = vigil.settings.topic(FEED)
        self.upstream: Upstream | None = None  # the last look, None when it failed
        self._looked = 0.0
        self._looking: asyncio.Future[None] | None = None
        self._group: Consumer | None = None
        self._idle_since: float | None = None  # this worker has been idle since

    def new_state(self, partition: int) -> IncidentsState:
        return IncidentsState(IncidentBook(self.config), Catalog(),
                              WatermarkMerge(self.max_skew_ms, self.origins))

    def restore(self, blob: bytes) -> IncidentsState:
        data = json.loads(blob)
        return IncidentsState(
            IncidentBook.from_dict(data["book"], self.config), Catalog.from_dict(data["catalog"]),
            WatermarkMerge.from_dict(data["merge"], self.max_skew_ms, self.origins),
            data["stream_ms"], data["taken"],
            {i: Extra(**extra) for i, extra in data["extras"].items()})

    def snapshot(self, state: IncidentsState) -> bytes:
        return json.dumps({
            "book": state.book.to_dict(), "catalog": state.catalog.to_dict(),
            "merge": state.merge.to_dict(), "stream_ms": state.stream_ms, "taken": state.taken,
            "extras": {i: asdict(extra) for i, extra in state.extras.items()},
        }).encode()

    async def process(self, partition: int, state: IncidentsState, event: Any) -> bool:
        started = time.perf_counter()
        self._idle_since = None  # a release needs a look begun after this record
        CONSUMED_MESSAGES.labels(FEED).inc()
        key: bytes = event.key or b""
        value: bytes = event.value or b""
        try:
            self._apply(state, key, value)
        except (CodecError, ValueError, KeyError) as exc:
            reason = "undecodable" if isinstance(exc, CodecError) else "invalid"
            letter = dead_letter(origin_of(event, 1), value, reason, f"{key!r}: {exc}")
            self.dead_letters.add([letter])
        OPEN_INCIDENTS.set(len(state.book))
        HELD_FEED_RECORDS.set(len(state.merge))
        PROCESSING_SECONDS.labels(FEED).observe(time.perf_counter() - started)
        return self._output_waiting(state)

    def busy(self) -> bool:
        return super().busy() or any(len(p.state.merge) for p in self.partitions.values())

    def _output_waiting(self, state: IncidentsState) -> bool:
        return bool(state.records or state.incidents or state.links or len(self.dead_letters))

    async def tick(self, partition: int, state: IncidentsState) -> bool:
        """Let partitions with nothing on its way stop holding the others back, and release
        everything held once nothing more can come: this worker is idle (no stage has input
        to read or output to write), and a look begun since then found no input upstream
        that no stage has taken (local highwaters can be stale: a broker just back)."""
        merge = state.merge
        if not len(merge) and not merge.unheard():
            return self._output_waiting(state)
        idle = not self.behind() and not self.vigil.busy(besides=self)
        now = time.monotonic()
        if not idle:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        upstream = self.upstream
        self._look_upstream(now, urgent=self._idle_since is not None and len(merge) > 0 and (
            upstream is None or upstream.started < self._idle_since))
        if upstream is None or self._offsets(partition).get(self.feed_topic, -1) + 1 \
                < upstream.feed_end:
            return self._output_waiting(state)
        behind = self._behind_upstream(upstream)
        merge.quiet(o for o, p in self.origins.items() if p not in behind)
        released = merge.ready()
        if self._idle_since is not None and upstream.started >= self._idle_since and not behind:
            released += merge.drain()
        for kind, record in released:
            self._take(state, kind, record)
        HELD_FEED_RECORDS.set(len(merge))
        return self._output_waiting(state)

    def _behind_upstream(self, upstream: Upstream) -> set[int]:
        """Partitions with input upstream that has not been taken all the way: not committed
        by the group, and not processed here by stages with nothing left to send either
        (commits trail the work by up to a second; this worker's own progress is known)."""
        readers: dict[str, list[CheckpointedStage[Any]]] = {}
        for stage in self.vigil.stages.values():
            for topic in getattr(stage, "input_topics", ()):
                readers.setdefault(topic, []).append(stage)
        assigned = self.vigil.app.consumer.assignment()
        behind = set()
        for (topic, p), (committed, end) in upstream.progress.items():
            if committed >= end:
                continue
            if TP(topic, p) in assigned and readers.get(topic) and all(
                    not stage.busy() and stage._offsets(p).get(topic, -1) + 1 >= end
                    for stage in readers[topic]):
                continue
            behind.add(p)
        return behind

    def _look_upstream(self, now: float, urgent: bool) -> None:
        """Every LOOK_EVERY_S (at once when `urgent`), in the background: the look is a few
        broker round trips."""
        if (self._looking is not None and not self._looking.done()) \
                or (now - self._looked < LOOK_EVERY_S and not urgent):
            return
        self._looked = now

        async def look() -> None:
            try:
                self.upstream = await asyncio.get_running_loop().run_in_executor(
                    None, self._read_upstream, now)
            except Exception as exc:  # the broker is away: release nothing on its account
                log.debug("incident stage: upstream look failed: %s", exc)
                self.upstream = None

        self._looking = asyncio.ensure_future(look())

    def _read_upstream(self, started: float) -> Upstream:
        s = self.settings
        if self._group is None:
            self._group = Consumer({**client_config(s), "group.id": f"{s.topic_prefix}worker",
                                    "enable.auto.commit": False})
        progress = group_progress(self._group, [s.topic(t) for t in UPSTREAM], s.partitions)
        _, end = self._group.get_watermark_offsets(
            TopicPartition(self.feed_topic, 0), timeout=5, cached=False)
        return Upstream(progress, end, started)

    def _apply(self, state: IncidentsState, key: bytes, value: bytes) -> None:
        message = decode("InternalMessage", value)
        kind, payload = message["kind"], message["payload"]
        if kind == "ServiceInfo":
            if payload:
                state.catalog.upsert(ServiceInfo.from_dict(decode(kind, payload)))
            else:
                state.catalog.remove(key.decode())
            return
        numbered = self._repeated(state, key)
        if numbered is None:
            return
        origin, number = numbered
        record = decode(kind, payload)
        if kind == "AlertEvent":
            state.merge.hold(origin, number, (kind, record), record["updated_at_ms"])
        elif kind == "StreamTime":
            state.merge.clock(origin, number, record["ts_ms"], (kind, record))
        elif kind == "Feedback":
            state.merge.hold_now(origin, number, (kind, record))
        else:
            raise ValueError(f"InternalMessage.kind: {kind!r} is not taken by the incident stage")
        for kind, record in state.merge.ready():
            self._take(state, kind, record)

    def _take(self, state: IncidentsState, kind: str, record: dict[str, Any]) -> None:
        """Apply one record, in merged order."""
        if kind == "AlertEvent":
            # At the alert's own time: stream time may already be past it (a partition's
            # clock step, or an origin that lagged more than the skew).
            self._advance(state, record["updated_at_ms"])
            effects = state.book.on_alert(record, state.catalog, record["updated_at_ms"])
            self._record(state, effects, alert=record)
        elif kind == "Feedback":
            now = self._advance(state, record["ts_ms"])
            effects = Effects(state.book.on_feedback(record, now))
            self._record(state, effects, actor=record["actor"])
        else:
            self._record(state, Effects(state.book.tick(self._advance(state, record["ts_ms"]))))

    @staticmethod
    def _repeated(state: IncidentsState, key: bytes) -> tuple[str, int] | None:
        """(origin, number) of a record not taken before, else None (a repeat)."""
        origin, _, number = key.decode().rpartition("/")
        if not origin or not number.isdigit():
            raise ValueError("key: expected <origin>/<partition>/<number>")
        return (origin, int(number)) if first_time(state.taken, origin, int(number)) else None

    @staticmethod
    def _advance(state: IncidentsState, ts_ms: int) -> int:
        state.stream_ms = max(state.stream_ms, ts_ms)
        return state.stream_ms

    def _record(self, state: IncidentsState, effects: Effects,
                alert: dict[str, Any] | None = None, actor: str | None = None) -> None:
        """Turn what one input caused into rows and records, in input order."""
        if alert is not None and alert["status"] == "firing":
            fp = alert["fingerprint"]
            holder = next((e for e in reversed(effects.events)
                           if fp in e["alert_fingerprints"]), None)
            if holder is not None:
                incident_id, starts = holder["incident_id"], alert["starts_at_ms"]
                extra = state.extras.setdefault(incident_id, Extra(starts))
                extra.started_at_ms = min(extra.started_at_ms, starts)
                state.links.append({"incident_id": incident_id, "fingerprint": fp,
                                    "starts_at": _time(starts)})
        for event in effects.events:
            self._event(state, event, actor)
        for command in effects.commands:
            state.records.append(("remediation", command["incident_id"].encode(),
                                  encode("RemediationCommand", command)))

    def _event(self, state: IncidentsState, event: dict[str, Any], actor: str | None) -> None:
        incident_id, status = event["incident_id"], event["status"]
        extra = state.extras.setdefault(incident_id, Extra(event["opened_at_ms"]))
        if event["event"] == ACKNOWLEDGED:
            extra.acknowledged_by = actor
        if status == MITIGATED:
            extra.mitigated_at_ms = extra.mitigated_at_ms or event["updated_at_ms"]
        elif status != RESOLVED:
            extra.mitigated_at_ms = None  # a new alert undid the mitigation
        state.incidents.append(_incident_row(event, extra))
        detail = Jsonb({k: event[k] for k in ("status", "severity", "priority",
                                              "escalation_level")} | {"event": event["event"]})
        for entry in _new_entries(event["timeline"], extra.last_entry):
            state.timeline.append({"ts": _time(entry["ts_ms"]), "incident_id": incident_id,
                                   "event_id": event["event_id"], "event": entry["kind"],
                                   "message": entry["message"], "detail": detail})
        if event["timeline"]:
            extra.last_entry = event["timeline"][-1]
        state.records.append(("incidents", incident_id.encode(),
                              encode("IncidentEvent", event)))
        if status == RESOLVED:
            del state.extras[incident_id]

    async def flush(self, partition: int, state: IncidentsState) -> None:
        database = self.vigil.database
        incidents, state.incidents = state.incidents, []
        timeline, state.timeline = state.timeline, []
        links, state.links = state.links, []
        records, state.records = state.records, []
        await database.upsert(INCIDENTS, incidents)
        await database.upsert(INCIDENT_EVENTS, timeline)
        await database.update(ALERT_INCIDENT, links)
        await self.dead_letters.write()
        for short, key, value in records:
            self.vigil.outbox.add(short, key, value)


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _new_entries(timeline: list[dict[str, Any]], last: dict[str, Any] | None
                 ) -> list[dict[str, Any]]:
    """Entries after the newest one already stored (all, if it was trimmed away)."""
    if last is not None:
        for i in range(len(timeline) - 1, -1, -1):
            if timeline[i] == last:
                return timeline[i + 1:]
    return timeline


def _incident_row(event: dict[str, Any], extra: Extra) -> dict[str, Any]:
    return {
        "incident_id": event["incident_id"], "title": event["title"],
        "severity": event["severity"], "priority": event["priority"],
        "status": event["status"], "assigned_to": event["assigned_to"],
        "services": list(event["services"]), "root_cause_service": event["root_cause_service"],
        "escalation_level": event["escalation_level"],
        "alert_fingerprints": list(event["alert_fingerprints"]),
        "started_at": _time(extra.started_at_ms), "opened_at": _time(event["opened_at_ms"]),
        "acknowledged_at": _time(event["acknowledged_at_ms"]),
        "acknowledged_by": extra.acknowledged_by, "mitigated_at": _time(extra.mitigated_at_ms),
        "resolved_at": _time(event["resolved_at_ms"]), "resolution": event["resolution"],
        "false_positive": event["resolution"] == "false-positive",
        "updated_at": _time(event["updated_at_ms"]),
    }


def register(vigil: Vigil) -> None:
    stage = IncidentsStage(vigil)
    vigil.stages["incidents"] = stage
    stage.register(vigil.topic(FEED), {vigil.settings.topic(FEED)})
