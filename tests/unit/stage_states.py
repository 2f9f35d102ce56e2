"""A representative state of each checkpointed stage: golden fixtures of snapshot layouts.

A snapshot layout is only pinned down by a state that holds something of every part it
writes, so the states are not written by hand: half an hour of config/demo's services is
played through the stages' own pure code (the door, the aggregator, the encoder, detection,
SLOs, the alert and incident books), the way the agents wire it minus Kafka and the
database. checkout, db and inventory hash to partition 2, which holds both demo SLOs.

The story: steady traffic for 27 minutes (long enough for the detectors to warm up), then
db's latency spikes and checkout answers 40 % 5xx; db's health checks fail, inventory goes
into maintenance and stops sending metrics, someone silences checkout's SLO tickets, orders
(alert partition 0) goes down, the on-call acknowledges the incident and a remediation
succeeds; db starts answering 5xx in the last minutes. Downstream stages see their input
one step (5 s) late, as they would behind a checkpoint, so every state is cut mid-flight:
a rule alert still pending, an SLO minute partly counted, a window group being received,
feed records held for ordering.

Everything is event time from T0, with seeded randomness and settings from their defaults
(not the environment): the same states in every run.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from agents.alerts import AlertsStage, AlertsState
from agents.checkpoint import CheckpointedStage
from agents.detect import DetectPartition, DetectStage
from agents.incidents import IncidentsStage, IncidentsState
from agents.metrics import MetricsStage, MetricsState
from agents.slo import SloPartition, SloStage, condition
from pipeline import ROOT
from pipeline.aggregate_codec import decode_windows, windows_messages
from pipeline.codec import encode
from pipeline.envelope import first_time, wrap
from pipeline.ingest import MetricsInput, Origin
from pipeline.scenarios import load_catalog
from pipeline.settings import Settings

T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z
S, M = 1_000, 60_000
PARTITION = 2  # checkout, db and inventory; 0 holds orders
DEMO = ROOT / "config" / "demo"
SEASON_S = 300.0
"""The detectors' season. At the default (a day) they need a day of windows before they
judge anything; five minutes lets half an hour warm them up, so anomalies happen."""
STEP_MS = 5 * S
END_MS = 31 * M + 10 * S
"""Minute 30's 60 s window closed a step ago: SLOs counted it without completing the
minute, detection received it without judging it."""
INCIDENT_MS = 27 * M
INVENTORY_QUIET_MS = 28 * M
DB_DOWN_MS = 28 * M
ORDERS_DOWN_MS = 29 * M
DB_ERRORS_MS = 29 * M
REPEATED_MS = 20 * M + 5 * S
"""The step whose windows the metrics stage sends again (`REPEAT_MS`), as after a crash."""
REPEAT_MS = 20 * M + 30 * S
INCIDENT_ID = "INC-2026-000001"  # what the on-call types in

_Series = tuple[str, dict[str, str], str, list[int], list[float]]
"""name, labels (service included), kind, ts_ms, values"""


def representative_states() -> dict[str, tuple[CheckpointedStage[Any], Any]]:
    """name → (stage, a state of that stage holding something of every part its snapshot
    carries)"""
    story = _Story()
    story.play()
    return {"metrics": (story.metrics, story.aggregate),
            "detect": (story.detect, story.detection),
            "slo": (story.slo, story.slos),
            "alerts": (story.alerts, story.book),
            "incidents": (story.incidents, story.feed)}


class _Stand:
    """The parts of the app, outbox and database a stage touches outside a flush."""

    def Table(self, *args: Any, **kwargs: Any) -> dict[bytes, bytes]:
        return {}


class _Story:
    """The five stages and their partition's states, fed as the agents feed them."""

    def __init__(self) -> None:
        settings = Settings.model_construct(config_dir=DEMO, detect_season_s=SEASON_S)
        catalog = {info["service"]: info for info in load_catalog(DEMO / "catalog.yaml")}
        stand = _Stand()
        vigil: Any = SimpleNamespace(app=stand, settings=settings, outbox=stand,
                                     database=stand, catalog=catalog)
        self.metrics = MetricsStage(vigil)
        self.detect = DetectStage(vigil)
        self.slo = SloStage(vigil)
        self.alerts = AlertsStage(vigil)
        self.incidents = IncidentsStage(vigil)
        self.aggregate: MetricsState = self.metrics.new_state(PARTITION)
        self.detection: DetectPartition = self.detect.new_state(PARTITION)
        self.slos: SloPartition = self.slo.new_state(PARTITION)
        self.book: AlertsState = self.alerts.new_state(PARTITION)
        self.orders_book: AlertsState = self.alerts.new_state(0)
        self.feed: IncidentsState = self.incidents.new_state(0)
        # Alert partitions without services never speak: the stage's look upstream finds
        # nothing there, so they do not hold the others back.
        self.feed.merge.quiet(self.feed.merge.expected - {f"alerts/{p}" for p in (0, PARTITION)})
        self.rng = np.random.default_rng(20261001)
        self.totals: dict[str, float] = {}
        self.offsets = {0: 0, PARTITION: 0}  # next offset of vigil.metrics per partition
        self.feedback_offset = 0
        self.step = T0
        self.repeated: list[list[dict[str, Any]]] = []  # internal.windows messages sent twice
        self.conditions: list[tuple[str, int, bytes]] = []  # on their way to the alert stage
        self.feed_records: list[tuple[bytes, bytes]] = []  # on their way to the incident stage
        for info in catalog.values():  # agents/catalog forwards the catalog to the feed
            self.incidents._apply(self.feed, info["service"].encode(),
                                  wrap("ServiceInfo", info))
        # A call seen in spans. No stage records these yet, but the catalog's snapshot
        # carries them (`Catalog.to_dict`), so the fixture holds one.
        self.feed.catalog.add_edge("checkout", "inventory", T0)

    def play(self) -> None:
        for ts in range(T0, T0 + END_MS + 1, STEP_MS):
            self.step = ts
            self._deliver()
            self._scrape(ts)
            if (ts - T0) % (30 * S) == 0:
                self._health(ts)
            self._events(ts - T0)
        self._check()

    # -- what reaches the downstream stages a step late ----------------------------------

    def _deliver(self) -> None:
        for key, value in self.feed_records:
            self.incidents._apply(self.feed, key, value)
        self.feed_records = []
        for origin, number, value in self.conditions:
            if first_time(self.book.taken, origin, number):
                self.alerts._internal(PARTITION, self.book, value)
        self.conditions = []
        for book in (self.book, self.orders_book):
            self.feed_records += book.feed
            book.feed, book.out = [], []

    # -- metrics → windows → detection and SLOs ------------------------------------------

    def _scrape(self, ts: int) -> None:
        """One scrape of each service: partition 2's own batch, and a node exporter's on
        partition 0 whose inventory series the door re-routes here."""
        incident = ts - T0 >= INCIDENT_MS
        own = [*self._requests("checkout", ts, 300, 200 if incident else 3),
               *self._requests("db", ts, 2000, 200 if ts - T0 >= DB_ERRORS_MS else 5),
               self._latency("db", ts, 0.12 if incident else 0.008)]
        if ts - T0 < 2 * M:  # a replaced instance: idle long enough to be evicted
            own.append(self._gauge("db", ts, "db-9", 0.4))
        self._aggregate(self._admit(_metric_batch("scraper", own), PARTITION, ts))
        node = [self._gauge("orders", ts, "orders-0", 0.55)]
        if ts - T0 < INVENTORY_QUIET_MS:
            node.append(self._gauge("inventory", ts, "inventory-0", 0.62))
        source = self.offsets[0]
        admitted = self._admit(_metric_batch("node", node), 0, ts)
        for _, payload in admitted.rerouted:
            if first_time(self.aggregate.rerouted_upto, 0, source):
                self._aggregate(self._admit(payload, PARTITION, ts))

    def _admit(self, payload: bytes, partition: int, ts: int) -> MetricsInput:
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        origin = Origin("vigil.metrics", partition, offset, None, ts, 4)
        return self.metrics.door.admit(payload, origin)

    def _aggregate(self, admitted: MetricsInput) -> None:
        """`MetricsStage.process` at the scrape's own time (it reads the wall clock)."""
        batch, aggregator = admitted.batch, self.aggregate.aggregator
        assert batch is not None and not admitted.dead_letters
        rejected = aggregator.add(batch, int(batch.ts_ms.max()))
        assert not len(rejected), rejected.reason_counts()
        for window in aggregator.close_due():
            encoded = self.metrics.encoder.encode(window, self.metrics._catalog)
            for _, payload in windows_messages(encoded):
                records = decode_windows(payload)
                if self.step - T0 == REPEATED_MS:
                    self.repeated.append(records)
                self._windows(records)

    def _windows(self, records: list[dict[str, Any]]) -> None:
        state = self.detection
        made = len(state.pending.conditions)
        self.detect._add_windows(state, records)
        first = state.numbered - (len(state.pending.conditions) - made) + 1
        for number, record in enumerate(state.pending.conditions[made:], first):
            self.conditions.append((f"detect/{PARTITION}", number, wrap("AlertCondition", record)))
        for record in records:
            self.slos.window(record)
        _, alerts = self.slos.drain()
        for alert in alerts:
            self.slos.numbered += 1
            self.conditions.append((f"slo/{PARTITION}", self.slos.numbered,
                                    wrap("AlertCondition", condition(alert))))

    def _requests(self, service: str, ts: int, ok: float, bad: float) -> list[_Series]:
        return [self._counter(service, "200", ts, ok), self._counter(service, "500", ts, bad)]

    def _counter(self, service: str, code: str, ts: int, per_step: float) -> _Series:
        key = f"{service}/{code}"
        self.totals[key] = self.totals.get(key, 0.0) + float(self.rng.poisson(per_step))
        return ("http_requests_total", {"service": service, "code": code}, "COUNTER", [ts],
                [self.totals[key]])

    def _latency(self, service: str, ts: int, median_s: float) -> _Series:
        seconds = median_s * self.rng.lognormal(0.0, 0.25, 20)
        return ("http_request_duration_seconds", {"service": service}, "OBSERVATION",
                [ts + 250 * i for i in range(20)], seconds.tolist())

    def _gauge(self, service: str, ts: int, instance: str, level: float) -> _Series:
        value = level + 0.02 * float(self.rng.standard_normal())
        return ("process_memory_utilization", {"service": service, "instance": instance},
                "GAUGE", [ts], [value])

    # -- health, changes, people and a crash ----------------------------------------------

    def _health(self, ts: int) -> None:
        since = ts - T0
        for instance in ("db-0", "db-1"):
            self._check_result(ts, "db", instance, "tcp", since < DB_DOWN_MS)
        self._check_result(ts, "inventory", "inventory-0", "http", True)
        orders = _health_result(ts, "orders", "orders-0", "http", since < ORDERS_DOWN_MS)
        self.alerts._health(0, self.orders_book, orders)
        if ts == T0 + END_MS - END_MS % (30 * S):
            # A duplicated probe reporting both ways at once: ServiceDown starts and ends in
            # the same millisecond, which the book remembers (`instants`).
            self._check_result(ts, "inventory", "inventory-0", "http", False)
            self._check_result(ts, "inventory", "inventory-0", "http", True)

    def _check_result(self, ts: int, service: str, instance: str, check: str,
                      healthy: bool) -> None:
        result = _health_result(ts, service, instance, check, healthy)
        self.alerts._health(PARTITION, self.book, result)
        self.slos.health(result)

    def _events(self, at: int) -> None:
        """What happens once, `at` ms into the story."""
        ts = T0 + at
        if at == 26 * M + 30 * S:
            self._change(ts, "checkout", "DEPLOYMENT", "checkout v2.14.0", {})
        elif at == REPEAT_MS:
            for records in self.repeated:
                self._windows(records)
        elif at == 27 * M + 50 * S:
            self._change(ts, "inventory", "MAINTENANCE_START", "inventory host patching",
                         {"until_ms": str(ts + 3_600_000)})
        elif at == 28 * M + 30 * S:
            silence = _feedback(ts, "checkout", "SILENCE", until_ms=ts + 7_200_000,
                                matchers={"service": "checkout",
                                          "alertname": "=~SLOBurnRateTicket.*"},
                                comment="known: v2.14.0 rollback under way")
            self.alerts._internal(PARTITION, self.book, wrap("Feedback", silence))
        elif at == 29 * M + 30 * S:
            self._feedback(_feedback(ts, INCIDENT_ID, "ACK"))
        elif at == 30 * M + 30 * S:
            self._feedback(_feedback(ts, INCIDENT_ID, "REMEDIATION_RESULT", success=True,
                                     comment="scaled out db by 2"))

    def _change(self, ts: int, service: str, kind: str, description: str,
                attributes: dict[str, str]) -> None:
        """A ChangeEvent, applied as detection and the alert stage apply it once checked
        (their checks read the wall clock for `future`)."""
        change = {"ts_ms": ts, "service": service, "kind": kind, "description": description,
                  "attributes": attributes}
        self.detection.core.add_change(change)
        self.book.silences.on_change(change)
        self.alerts._advance(PARTITION, self.book, ts, None)

    def _feedback(self, record: dict[str, Any]) -> None:
        key = f"feedback/0/{self.feedback_offset}".encode()
        self.feedback_offset += 1
        self.feed_records.append((key, wrap("Feedback", record)))

    def _check(self) -> None:
        """The states are fixtures only while they hold every part: say which part the
        story stopped producing, should a change to a stage make it so."""
        aggregator, core = self.aggregate.aggregator, self.detection.core
        rules = core.rules.to_dict()["rules"].values()
        alerts = self.book.book.to_dict()
        held = [kind for _, _, _, (kind, _) in self.feed.merge.to_dict()["held"]]
        extra = self.feed.extras.get(INCIDENT_ID)
        parts = {
            "metrics: open windows": aggregator.open_windows,
            "metrics: a freed series slot": aggregator._free,
            "metrics: re-routed marks": self.aggregate.rerouted_upto,
            "detect: numbered conditions": self.detection.numbered,
            "detect: a window group being received": core.has_group,
            "detect: repeated windows dropped": core.duplicates,
            "detect: change events": core._changes,
            "detect: recent anomalies": core._recent,
            "detect: every rule holding a key": all(rule["active"] for rule in rules),
            "slo: every SLO with minutes done, seen and burning": all(
                t.done is not None and t.seen and t.active for t in self.slos.tracked.values()),
            "slo: repeated windows dropped": self.slos.dropped,
            "alerts: pending and firing alerts": {"pending", "firing"} <= {
                alert["state"] for alert in alerts["alerts"]},
            "alerts: an alert that ended as it started": alerts["instants"],
            "alerts: a feedback and a maintenance silence": len(self.book.silences) == 2,
            "alerts: a service down": self.book.health.to_dict()["down"],
            "alerts: conditions taken from detect and SLOs": len(self.book.taken) == 2,
            "incidents: an open incident": len(self.feed.book),
            "incidents: alert events held": "AlertEvent" in held,
            "incidents: acknowledged and mitigated": extra is not None
            and extra.acknowledged_by and extra.mitigated_at_ms,
        }
        missing = [name for name, present in parts.items() if not present]
        assert not missing, f"the story no longer produces: {'; '.join(missing)}"


def _metric_batch(source: str, series: list[_Series]) -> bytes:
    """A MetricBatch as producers send it: labels as pairs of indexes into `symbols`."""
    symbols: dict[str, int] = {}

    def refs(name: str, labels: dict[str, str]) -> list[int]:
        texts = ["__name__", name, *(t for pair in sorted(labels.items()) for t in pair)]
        return [symbols.setdefault(text, len(symbols)) for text in texts]

    records = [{"labels_refs": refs(name, labels), "kind": kind, "ts_ms": ts, "values": values}
               for name, labels, kind, ts, values in series]
    return encode("MetricBatch", {"source": source, "symbols": list(symbols),
                                  "series": records})


def _health_result(ts: int, service: str, instance: str, check: str,
                   healthy: bool) -> dict[str, Any]:
    return {"ts_ms": ts, "service": service, "instance": instance, "check": check,
            "status": "HEALTHY" if healthy else "UNHEALTHY", "latency_ms": 3.0,
            "message": None if healthy else "connection refused"}


def _feedback(ts: int, target: str, action: str, *, until_ms: int | None = None,
              matchers: dict[str, str] | None = None, comment: str | None = None,
              success: bool | None = None) -> dict[str, Any]:
    return {"ts_ms": ts, "target_id": target, "action": action, "actor": "ana",
            "until_ms": until_ms, "matchers": matchers or {}, "comment": comment,
            "success": success}

