"""internal.conditions + vigil.events + vigil.health → one alert state machine per
partition → vigil.alerts, the `alerts` and `alert_events` tables, and the incident feed.

This stage is the door of vigil.health (health results on the wrong partition are
re-produced keyed by service, bad ones dead-lettered); agents/detect is that of vigil.events.

All three topics are keyed by service, so partition *p* of each holds the same services and
one state serves them: the open alerts (`AlertBook`), the silences (`SilenceBook`, from
SILENCE feedback broadcast to every partition and from maintenance windows) and the latest
health of every instance. Each transition is checked against silences, then against
inhibition by the firing alerts of its service; a suppressed alert is still recorded.

What goes to the incident feed — firing and resolved AlertEvents, and the partition's event
time every `stream_time_step_s` so escalation runs while no alert changes — is numbered
when it is made: key ``alerts/<partition>/<n>``, with *n* in the snapshot. A replay after a
crash therefore repeats records with their original keys, which the incident stage drops.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from agents.checkpoint import CheckpointedStage
from agents.ingest import check, origin_of
from pipeline.alerts import FIRING, RESOLVED, AlertBook, Transition
from pipeline.app import Vigil
from pipeline.codec import CodecError, decode, encode
from pipeline.envelope import first_time, sequence_of, unwrap, wrap, wrap_encoded
from pipeline.ingest import dead_letter, partition_for
from pipeline.inhibit import Inhibitor
from pipeline.selfmetrics import CONSUMED_MESSAGES, PROCESSING_SECONDS, REPARTITIONED
from pipeline.silence import SilenceBook
from pipeline.sinks.timescale import ALERT_EVENTS, ALERTS

CONDITIONS, EVENTS, HEALTH = "internal.conditions", "events", "health"
CLOCKS = {"detect": ("rule", "anomaly", "deadman"), "slo": ("slo",), HEALTH: ("health",)}
"""Each stage or topic that drives alerts, and the alert sources that move on its time."""
CLOCK_OF = {source: clock for clock, sources in CLOCKS.items() for source in sources}
FEED = "internal.incident-feed"
SERVICE_DOWN = "ServiceDown"


class HealthBoard:
    """Latest status of every (instance, check) per service. An instance is down while one
    of its checks is UNHEALTHY; a service is down while every instance it has is down.
    Checks not reported for `stale_ms` (event time) are forgotten, so an instance that
    went away stops holding its service up."""

    def __init__(self, stale_ms: int) -> None:
        self.stale_ms = stale_ms
        self._checks: dict[str, dict[str, tuple[str, int, bool]]] = {}
        self._down: set[str] = set()

    def report(self, result: dict[str, Any]) -> tuple[bool, int] | None:
        """Apply one HealthCheckResult: (service down, instances) if that changed, else None."""
        service, ts = result["service"], int(result["ts_ms"])
        checks = self._checks.setdefault(service, {})
        key = f"{result['instance']}\n{result['check']}"
        known = checks.get(key)
        if known is not None and known[1] > ts:
            return None  # older than what we know
        checks[key] = (result["instance"], ts, result["status"] == "UNHEALTHY")
        for stale in [k for k, (_, seen, _) in checks.items() if seen < ts - self.stale_ms]:
            del checks[stale]
        instances: dict[str, bool] = {}
        for instance, _, unhealthy in checks.values():
            instances[instance] = instances.get(instance, False) or unhealthy
        down = all(instances.values())  # never empty: this result's instance is in it
        if down == (service in self._down):
            return None
        if down:
            self._down.add(service)
        else:
            self._down.discard(service)
        return down, len(instances)

    def to_dict(self) -> dict[str, Any]:
        return {"checks": {s: [[k, *v] for k, v in c.items()] for s, c in self._checks.items()},
                "down": sorted(self._down)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], stale_ms: int) -> HealthBoard:
        board = cls(stale_ms)
        board._checks = {s: {k: (i, ts, bad) for k, i, ts, bad in entries}
                         for s, entries in data["checks"].items()}
        board._down = set(data["down"])
        return board


@dataclass
class AlertsState:
    book: AlertBook
    silences: SilenceBook
    health: HealthBoard
    stream_ms: int = 0  # largest ts_ms seen on the partition
    # Event time of each source of alerts (CLOCKS): the alerts of a source move on its time
    # alone, since sources run at different delays (see `pipeline.alerts`).
    clocks: dict[str, int] = field(default_factory=dict)
    forwarded_ms: int = 0  # event time last forwarded to the incident stage
    fed: int = 0  # records numbered for the incident feed so far
    # Condition source (a detect or SLO partition) → the last number applied: a replay
    # upstream repeats conditions, and applied again, out of time order, they would move
    # alerts back (a pending alert resolved by a condition older than the one it is at).
    taken: dict[str, int] = field(default_factory=dict)
    out: list[tuple[Transition, bytes]] = field(default_factory=list)  # not yet durable
    feed: list[tuple[bytes, bytes]] = field(default_factory=list)


class AlertsStage(CheckpointedStage[AlertsState]):
    name = "alerts"

    def __init__(self, vigil: Vigil) -> None:
        super().__init__(vigil)
        self.inhibitor = Inhibitor()
        self.short = {vigil.settings.topic(s): s for s in (CONDITIONS, EVENTS, HEALTH)}
        self.stale_ms = int(self.settings.health_stale_s * 1000)
        self.step_ms = int(self.settings.stream_time_step_s * 1000)

    def new_state(self, partition: int) -> AlertsState:
        return AlertsState(AlertBook(), SilenceBook(), HealthBoard(self.stale_ms))

    def restore(self, blob: bytes) -> AlertsState:
        data = json.loads(blob)
        return AlertsState(AlertBook.from_dict(data["book"]),
                           SilenceBook.from_dict(data["silences"]),
                           HealthBoard.from_dict(data["health"], self.stale_ms),
                           data["stream_ms"], data["clocks"], data["forwarded_ms"],
                           data["fed"], data["taken"])

    def snapshot(self, state: AlertsState) -> bytes:
        return json.dumps({"book": state.book.to_dict(), "silences": state.silences.to_dict(),
                           "health": state.health.to_dict(), "stream_ms": state.stream_ms,
                           "clocks": state.clocks,
                           "forwarded_ms": state.forwarded_ms, "fed": state.fed,
                           "taken": state.taken}).encode()

    async def process(self, partition: int, state: AlertsState, event: Any) -> bool:
        started = time.perf_counter()
        short = self.short[event.message.topic]
        CONSUMED_MESSAGES.labels(short).inc()
        origin = origin_of(event, self.settings.partitions)
        value = event.value or b""
        rerouted = False
        try:
            if short == CONDITIONS:
                sequence = sequence_of(event.message.headers)
                if sequence is None or first_time(state.taken, *sequence):
                    self._internal(partition, state, value)
            elif short == EVENTS:
                self._change(partition, state, value)
            else:
                result = decode("HealthCheckResult", value)
                key = result["service"].encode()
                problem = check(self.settings, "HealthCheckResult", result)
                if problem is not None:
                    self.dead_letters.add([dead_letter(origin, value, *problem)])
                elif partition_for(key, self.settings.partitions) != partition:
                    self.vigil.outbox.add(HEALTH, key, value)
                    REPARTITIONED.inc()
                    rerouted = True
                else:
                    self._health(partition, state, result)
        except (CodecError, ValueError) as exc:
            reason = "undecodable" if isinstance(exc, CodecError) else "invalid"
            self.dead_letters.add([dead_letter(origin, value, reason, str(exc))])
        PROCESSING_SECONDS.labels(short).observe(time.perf_counter() - started)
        return bool(state.out or state.feed or rerouted or len(self.dead_letters))

    def _internal(self, partition: int, state: AlertsState, value: bytes) -> None:
        kind, record = unwrap(value)
        if kind == "Feedback":
            state.silences.on_feedback(record)  # the broadcast only carries SILENCE
            return
        if kind == "StreamTime":  # detect's event time: one-shot alerts expire on time
            self._advance(partition, state, record["ts_ms"], record["source"].split("/")[0])
            return
        if kind != "AlertCondition":
            raise ValueError(f"InternalMessage.kind: {kind!r} is not AlertCondition, "
                             "StreamTime or Feedback")
        book, ts = state.book, record["ts_ms"]
        if record["pulse"]:
            found = book.pulse(record["labels"], record["annotations"], record["source"], ts,
                               record["keep_firing_for_ms"])
        else:
            found = book.observe(record["labels"], record["annotations"], record["source"],
                                 record["active"], ts, record["for_ms"],
                                 record["keep_firing_for_ms"])
        self._emit(partition, state, found)
        self._advance(partition, state, ts, CLOCK_OF[record["source"]])

    def _change(self, partition: int, state: AlertsState, value: bytes) -> None:
        try:
            change = decode("ChangeEvent", value)
        except CodecError:
            return  # the detect stage, door of vigil.events, dead-letters it
        if check(self.settings, "ChangeEvent", change) is not None:
            return  # likewise
        key = change["service"].encode()
        if key and partition_for(key, self.settings.partitions) == partition:
            state.silences.on_change(change)  # else detect re-produces it to its partition
            self._advance(partition, state, change["ts_ms"], None)

    def _health(self, partition: int, state: AlertsState, result: dict[str, Any]) -> None:
        changed = state.health.report(result)
        if changed is not None:
            down, instances = changed
            service = result["service"]
            labels = {"alertname": SERVICE_DOWN, "service": service, "severity": "critical"}
            summary = (f"every instance of {service} is UNHEALTHY ({instances})" if down
                       else f"{result['instance']} of {service} recovered")
            self._emit(partition, state, state.book.observe(
                labels, {"summary": summary}, "health", down, result["ts_ms"]))
        self._advance(partition, state, result["ts_ms"], HEALTH)

    def _advance(self, partition: int, state: AlertsState, ts_ms: int,
                 clock: str | None) -> None:
        """After each input: the alerts of its source (`clock`) that are due by that
        source's time change; if stream time moved on, silences that ended before every
        source's time are dropped, and the incident stage hears of it every step."""
        if clock is not None:
            now = state.clocks[clock] = max(ts_ms, state.clocks.get(clock, 0))
            self._emit(partition, state, state.book.tick(now, CLOCKS[clock]))
        if ts_ms <= state.stream_ms:
            return
        state.stream_ms = ts_ms
        if len(state.silences) and state.clocks:
            state.silences.expire(min(state.clocks.values()))
        if ts_ms >= state.forwarded_ms + self.step_ms:
            state.forwarded_ms = ts_ms
            self._feed(partition, state, wrap("StreamTime", {"source": f"{self.name}/{partition}",
                                                             "ts_ms": ts_ms}))

    def _emit(self, partition: int, state: AlertsState, found: list[Transition]) -> None:
        for transition in found:
            t = self._suppressed(state, transition)
            payload = encode("AlertEvent", t.to_dict())
            state.out.append((t, payload))
            if t.status in (FIRING, RESOLVED):  # all the incident stage acts on
                self._feed(partition, state, wrap_encoded("AlertEvent", payload))

    def _feed(self, partition: int, state: AlertsState, value: bytes) -> None:
        state.fed += 1
        state.feed.append((f"{self.name}/{partition}/{state.fed}".encode(), value))

    def _suppressed(self, state: AlertsState, t: Transition) -> Transition:
        silence = state.silences.is_silenced(t.match_labels(), t.updated_at_ms)
        if silence is not None:
            return t.suppress(silence)
        inhibitor = self.inhibitor.inhibited_by(t, state.book.firing(t.service))
        return t if inhibitor is None else t.suppress(inhibitor)

    async def flush(self, partition: int, state: AlertsState) -> None:
        out, state.out = state.out, []
        feed, state.feed = state.feed, []
        rows = [_row(t) for t, _ in out]
        await self.vigil.database.upsert(ALERTS, rows)
        await self.vigil.database.upsert(
            ALERT_EVENTS, [{**row, "ts": row["updated_at"], "event_id": t.event_id}
                           for (t, _), row in zip(out, rows, strict=True)])
        await self.dead_letters.write()
        # The feed first: the incident stage links alerts rows, which exist by now.
        for key, value in feed:
            self.vigil.outbox.add(FEED, key, value)
        for t, payload in out:
            self.vigil.outbox.add("alerts", t.fingerprint.encode(), payload)


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _row(t: Transition) -> dict[str, Any]:
    return {"fingerprint": t.fingerprint, "alertname": t.alertname, "service": t.service,
            "severity": t.severity, "status": t.status, "source": t.source,
            "labels": Jsonb(t.labels), "annotations": Jsonb(t.annotations),
            "starts_at": _time(t.starts_at_ms), "ends_at": _time(t.ends_at_ms),
            "updated_at": _time(t.updated_at_ms), "suppressed": t.suppressed,
            "suppressed_by": t.suppressed_by}


def register(vigil: Vigil) -> None:
    stage = AlertsStage(vigil)
    vigil.stages["alerts"] = stage
    names = [vigil.settings.topic(s) for s in (CONDITIONS, EVENTS, HEALTH)]
    channel = vigil.app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", allow_empty=True,
                              partitions=vigil.settings.partitions)
    stage.register(channel, set(names))
