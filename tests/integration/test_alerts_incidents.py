"""Alerts and incidents end to end on the real broker and database: a dependency cascade
correlated into one incident, silences, maintenance, health, escalation stopped by ACK,
resolution; and a kill -9 mid-scenario that leaves exactly the rows of an undisturbed run.

Conditions are produced straight into internal.conditions, wrapped and keyed by service as
the detect and SLO stages do. Each step waits until its effect is on the incident feed (or
consumed) before the next one is produced, so the single-partition feed sees every run's
records in the same order and both runs must produce identical rows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from psycopg import sql
from pydantic import SecretStr

from pipeline.alerts import fingerprint
from pipeline.codec import decode, encode
from pipeline.envelope import sequence_header, wrap
from pipeline.ingest import partition_for
from pipeline.kafka import client_config, create_topics
from pipeline.local.servers import Endpoints
from pipeline.producer import producer_config
from pipeline.settings import Settings
from tests.integration.harness import Worker, wait_for

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1000
CATALOG = {  # service: (team, tier, depends_on)
    "db": ("dba", "SUPPORT", []), "orders": ("shop", "BUSINESS", ["db"]),
    "checkout": ("shop", "CRITICAL", ["db"]), "search": ("discovery", "BUSINESS", []),
    "cache": ("platform", "SUPPORT", []), "payments": ("pay", "CRITICAL", []),
    "inventory": ("shop", "BUSINESS", []),
}
DECODED = {"alerts": "AlertEvent", "incidents": "IncidentEvent",
           "remediation": "RemediationCommand"}
WRAPPED = ("internal.conditions", "internal.incident-feed")
TABLES = {  # table: the order that makes two runs comparable
    "alerts": "fingerprint", "alert_events": "fingerprint, status, ts",
    "incidents": "incident_id", "incident_events": "incident_id, ts, event, message",
}


def labels(service: str, alertname: str = "HighErrorRate", severity: str = "warning"
           ) -> dict[str, str]:
    return {"alertname": alertname, "service": service, "severity": severity}


def fp(service: str, alertname: str = "HighErrorRate", severity: str = "warning") -> str:
    return fingerprint(labels(service, alertname, severity))


class Bus:
    """The test's producer, and a consumer that keeps every record of the topics it reads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(producer_config(client_config(settings)))
        self.consumer = Consumer({**client_config(settings), "group.id": f"t-{uuid.uuid4()}",
                                  "auto.offset.reset": "earliest",
                                  "enable.auto.commit": False})
        self.short = {settings.topic(s): s for s in (*DECODED, *WRAPPED)}
        self.consumer.subscribe(list(self.short))
        self.seen: dict[str, list[tuple[Message, str, dict[str, Any] | None]]] = \
            defaultdict(list)

    def send(self, short: str, key: str, value: bytes,
             headers: list[tuple[str, str | bytes | None]] | None = None
             ) -> tuple[int, int, int]:
        """Produce and wait for it: (partition, offset, timestamp ms)."""
        done: list[Message] = []
        self.producer.produce(self.settings.topic(short), value, key.encode(), headers=headers,
                              on_delivery=lambda err, msg: done.append(msg))
        self.producer.flush(30)
        [message] = done
        assert message.error() is None, message.error()
        return message.partition(), message.offset(), message.timestamp()[1]

    def condition(self, service: str, ts_ms: int, active: bool = True,
                  alertname: str = "HighErrorRate", severity: str = "warning",
                  number: int | None = None) -> tuple[int, int, int]:
        """Sent like the detect stage's, numbered as its partition 0's if `number` is given."""
        record = {"labels": labels(service, alertname, severity),
                  "annotations": {"summary": f"{alertname} on {service}"}, "source": "rule",
                  "active": active, "pulse": False, "ts_ms": ts_ms, "for_ms": 0,
                  "keep_firing_for_ms": 0}
        return self.send("internal.conditions", service, wrap("AlertCondition", record),
                         None if number is None else sequence_header("detect/0", number))

    def poll(self) -> None:
        while (message := self.consumer.poll(0.05)) is not None:
            if message.error() is not None:
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            short = self.short[message.topic()]
            value = message.value()
            if short in DECODED:
                self.seen[short].append((message, DECODED[short], decode(DECODED[short], value)))
            else:
                envelope = decode("InternalMessage", value)
                kind, payload = envelope["kind"], envelope["payload"]
                self.seen[short].append((message, kind, decode(kind, payload) if payload
                                         else None))

    def find(self, short: str, kind: str, match: Callable[[dict[str, Any]], bool]
             ) -> list[tuple[Message, dict[str, Any]]]:
        self.poll()
        return [(m, r) for m, k, r in self.seen[short] if k == kind and r is not None
                and match(r)]

    def wait(self, short: str, kind: str, match: Callable[[dict[str, Any]], bool],
             what: str, timeout_s: float = 60) -> list[tuple[Message, dict[str, Any]]]:
        return wait_for(lambda: self.find(short, kind, match), timeout_s, what, every_s=0)

    def fed(self, fingerprint: str, status: str) -> None:
        """Wait until the alert stage put this transition on the incident feed."""
        self.wait("internal.incident-feed", "AlertEvent",
                  lambda r: r["fingerprint"] == fingerprint and r["status"] == status,
                  f"{status} {fingerprint} on the incident feed")

    def consumed(self, short: str, partition: int, offset: int) -> None:
        """Wait until the worker committed past this offset (it is processed and acked)."""
        group = Consumer({**client_config(self.settings),
                          "group.id": f"{self.settings.topic_prefix}worker"})
        tp = TopicPartition(self.settings.topic(short), partition)
        try:
            wait_for(lambda: group.committed([tp], timeout=5)[0].offset > offset, 60,
                     f"{short}[{partition}]@{offset} consumed")
        finally:
            group.close()

    def close(self) -> None:
        self.consumer.close()


def feedback(ts_ms: int, target: str, action: str, **fields: Any) -> bytes:
    return encode("Feedback", {"ts_ms": ts_ms, "target_id": target, "action": action,
                               "actor": "ana", "until_ms": None, "matchers": {},
                               "comment": None, "success": None, **fields})


def health(ts_ms: int, instance: str, status: str) -> bytes:
    return encode("HealthCheckResult", {"ts_ms": ts_ms, "service": "inventory",
                                        "instance": instance, "check": "http",
                                        "status": status, "latency_ms": 3.0, "message": None})


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "incidents.yaml").write_text(
        "correlation_window: 5m\nescalation: {L1: 1m, L2: 2m, L3: 4m}\n")
    (directory / "runbooks.yaml").write_text(
        "ServiceDown:\n  action: restart\n  parameters: {strategy: rolling}\n")
    return directory


def scenario(settings: Settings, bus: Bus, worker: Worker, crash: bool) -> Worker:
    """The whole story; returns the worker that ends it (a new one after a crash)."""
    for service, (team, tier, deps) in CATALOG.items():
        bus.send("catalog", service, encode("ServiceInfo", {
            "service": service, "team": team, "tier": tier, "environment": "prod",
            "runbook_url": None, "depends_on": deps, "channels": []}))
    wait_for(lambda: len(bus.find("internal.incident-feed", "ServiceInfo", bool)) >= len(CATALOG),
             60, "the catalog on the incident feed", every_s=0)

    # Bad input is dead-lettered, never fatal.
    bus.send("feedback", "x", b"\x00not avro")
    bus.send("feedback", "x", feedback(T0, "x", "SILENCE", matchers={"service": "=~("}))
    no_severity = {"labels": {"alertname": "HighErrorRate", "service": "db"},
                   "annotations": {}, "source": "rule", "active": True, "pulse": False,
                   "ts_ms": T0, "for_ms": 0, "keep_firing_for_ms": 0}
    bus.send("internal.conditions", "db", wrap("AlertCondition", no_severity))

    # A cascade: db fails, then its dependants.
    db = fp("db", severity="critical")
    bus.condition("db", T0, severity="critical")
    bus.fed(db, "firing")
    for service, at in (("orders", 30 * S), ("checkout", 60 * S)):
        bus.condition(service, T0 + at)
        bus.fed(fp(service), "firing")
    bus.send("feedback", db, feedback(T0 + 70 * S, db, "ACK"))
    bus.wait("incidents", "IncidentEvent", lambda r: r["event"] == "ACKNOWLEDGED",
             "the cascade acknowledged")

    # An unrelated service: a second incident. Its conditions are numbered, and repeated
    # as a restored detect stage replays them: the repeat of the older, inactive one must
    # not resolve the alert (the story has it fire and resolve once).
    bus.condition("search", T0 + 85 * S, active=False, number=1)
    bus.condition("search", T0 + 90 * S, number=2)
    bus.fed(fp("search"), "firing")
    bus.condition("search", T0 + 85 * S, active=False, number=1)
    bus.consumed("internal.conditions", *bus.condition("search", T0 + 90 * S, number=2)[:2])

    # Silenced by feedback: wait until the silence reached cache's partition first.
    bus.send("feedback", "cache", feedback(T0 + 100 * S, "cache-silence", "SILENCE",
                                           until_ms=T0 + 3_600 * S,
                                           matchers={"service": "cache"}))
    cache_partition = partition_for(b"cache", settings.partitions)
    wait_for(lambda: [m for m, _ in bus.find("internal.conditions", "Feedback", bool)
                      if m.partition() == cache_partition], 60, "the silence broadcast",
             every_s=0)
    bus.condition("cache", T0 + 110 * S, alertname="HighLatency")
    bus.fed(fp("cache", "HighLatency"), "firing")

    # A maintenance window silences payments.
    change = encode("ChangeEvent", {"ts_ms": T0 + 120 * S, "service": "payments",
                                    "kind": "MAINTENANCE_START", "description": "db upgrade",
                                    "attributes": {}})
    bus.consumed("events", *bus.send("events", "payments", change)[:2])
    bus.condition("payments", T0 + 130 * S, severity="critical")
    bus.fed(fp("payments", severity="critical"), "firing")

    # Health: both instances of inventory unhealthy → ServiceDown, an incident, a runbook.
    for at, instance, status in ((140, "i2", "HEALTHY"), (140, "i1", "UNHEALTHY"),
                                 (150, "i2", "UNHEALTHY")):
        bus.send("health", "inventory", health(T0 + at * S, instance, status))
    down = fp("inventory", "ServiceDown", "critical")
    if crash:
        bus.wait("alerts", "AlertEvent", lambda r: r["fingerprint"] == down, "ServiceDown")
        worker.kill()
        worker = Worker(settings, worker.log_path.parent, name="restarted").start()
    bus.fed(down, "firing")
    bus.wait("remediation", "RemediationCommand", lambda r: r["alert_fingerprint"] == down,
             "the runbook's command")

    # Event time passes: whoever is not acknowledged escalates.
    bus.condition("search", T0 + 400 * S)
    bus.wait("incidents", "IncidentEvent",
             lambda r: r["event"] == "ESCALATED" and r["services"] == ["inventory"]
             and r["escalation_level"] == "L3", "inventory escalated to L3")

    # Everything recovers, one at a time.
    for service, alertname, severity in (("db", "HighErrorRate", "critical"),
                                         ("orders", "HighErrorRate", "warning"),
                                         ("checkout", "HighErrorRate", "warning"),
                                         ("search", "HighErrorRate", "warning"),
                                         ("cache", "HighLatency", "warning"),
                                         ("payments", "HighErrorRate", "critical")):
        bus.condition(service, T0 + 600 * S, False, alertname, severity)
        bus.fed(fp(service, alertname, severity), "resolved")
    bus.send("health", "inventory", health(T0 + 600 * S, "i1", "HEALTHY"))
    bus.fed(down, "resolved")
    return worker


def rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(
            sql.Identifier(table), sql.SQL(order))).fetchall()
            for table, order in TABLES.items()}


def resolved_incidents(dsn: str, count: int) -> list[dict[str, Any]] | None:
    with psycopg.connect(dsn) as conn:
        conn.row_factory = psycopg.rows.dict_row
        found = conn.execute("SELECT * FROM incidents ORDER BY incident_id").fetchall()
    done = len(found) == count and all(r["status"] == "RESOLVED" for r in found)
    return found if done else None


@contextmanager
def another_database(endpoints: Endpoints) -> Iterator[str]:
    name = f"vigil_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = psycopg.conninfo.conninfo_to_dict(endpoints.database_url)
    try:
        yield psycopg.conninfo.make_conninfo(**{**base, "dbname": name})
    finally:
        with psycopg.connect(endpoints.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def check_story(dsn: str, bus: Bus) -> None:
    incidents = wait_for(lambda: resolved_incidents(dsn, 3), 60, "three resolved incidents")
    cascade, search, inventory = incidents
    assert cascade["root_cause_service"] == "db"
    assert sorted(cascade["services"]) == ["checkout", "db", "orders"]
    cascade_fps = {fp("db", severity="critical"), fp("orders"), fp("checkout")}
    assert set(cascade["alert_fingerprints"]) == cascade_fps
    assert cascade["assigned_to"] == "dba" and cascade["priority"] == "P2"  # warning×CRITICAL
    assert cascade["acknowledged_by"] == "ana"
    assert cascade["escalation_level"] == "L2"  # escalated once at T0 + 60 s, then ACKed
    assert cascade["resolution"] == "alerts-resolved"
    assert cascade["started_at"].timestamp() * 1000 == T0
    assert search["services"] == ["search"] and search["escalation_level"] == "MANAGEMENT"
    assert inventory["services"] == ["inventory"] and inventory["escalation_level"] == "MANAGEMENT"

    with psycopg.connect(dsn) as conn:
        conn.row_factory = psycopg.rows.dict_row
        alerts = {r["fingerprint"]: r for r in conn.execute("SELECT * FROM alerts")}
        timeline = conn.execute("SELECT event FROM incident_events WHERE incident_id = %s",
                                (cascade["incident_id"],)).fetchall()
        letters = conn.execute("SELECT topic, reason, detail FROM dead_letters "
                               "ORDER BY topic, reason").fetchall()
    assert [(r["topic"].split(".", 1)[1], r["reason"]) for r in letters] == [
        ("feedback", "invalid"), ("feedback", "undecodable"), ("internal.conditions", "invalid")]
    assert "severity" in letters[2]["detail"] and "regex" in letters[0]["detail"]
    assert all(a["status"] == "resolved" for a in alerts.values())
    assert {f for f, a in alerts.items() if a["incident_id"] == cascade["incident_id"]} == \
        cascade_fps
    cache = alerts[fp("cache", "HighLatency")]
    assert cache["suppressed"] and cache["suppressed_by"].startswith("sil-")
    assert cache["incident_id"] is None
    payments = alerts[fp("payments", severity="critical")]
    assert payments["suppressed_by"] == f"mnt-payments-{T0 + 120 * S}"
    assert payments["incident_id"] is None
    down = alerts[fp("inventory", "ServiceDown", "critical")]
    assert down["source"] == "health" and down["incident_id"] == inventory["incident_id"]
    events = [r["event"] for r in timeline]
    assert events.count("ALERT_FIRING") == 3 and events.count("ESCALATED") == 1
    assert "ACKNOWLEDGED" in events and "RESOLVED" in events

    on_topic = {r["event_id"] for _, r in bus.find("alerts", "AlertEvent", bool)}
    assert len(on_topic) == 2 * len(alerts)  # firing and resolved, once each
    kinds = defaultdict(set)
    for message, record in bus.find("incidents", "IncidentEvent", bool):
        assert message.key() == record["incident_id"].encode()
        kinds[record["incident_id"]].add(record["event"])
    assert kinds[cascade["incident_id"]] >= {"CREATED", "UPDATED", "ESCALATED", "ACKNOWLEDGED",
                                             "RESOLVED"}
    commands = {r["command_id"]: r for _, r in bus.find("remediation", "RemediationCommand",
                                                         bool)}
    assert [(c["service"], c["action"], c["parameters"]) for c in commands.values()] == \
        [("inventory", "restart", {"strategy": "rolling"})]


def latency_ms(bus: Bus, samples: int) -> np.ndarray:
    """Wall time from an AlertCondition entering internal.conditions to its IncidentEvent."""
    found = []
    for i in range(samples):
        service = f"latency-{i:03d}"
        sent = bus.condition(service, T0 + (700 + i) * S)[2]
        [(message, _)] = bus.wait("incidents", "IncidentEvent",
                                  lambda r, s=service: r["services"] == [s], service)
        found.append(message.timestamp()[1] - sent)
    return np.array(found)


def test_alerts_become_incidents_and_a_crash_changes_no_row(
        settings: Settings, endpoints: Endpoints, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config")
    undisturbed = settings.model_copy(update={"config_dir": config})
    create_topics(undisturbed)
    bus = Bus(undisturbed)
    try:
        worker = Worker(undisturbed, tmp_path / "undisturbed").start()
        try:
            scenario(undisturbed, bus, worker, crash=False)
            dsn = undisturbed.database_dsn() or ""
            check_story(dsn, bus)
            expected = rows(dsn)
            p = latency_ms(bus, 200)
            print(f"\nAlertCondition → IncidentEvent latency over {len(p)} alerts: "
                  f"p50 {np.percentile(p, 50):.0f} ms, p99 {np.percentile(p, 99):.0f} ms, "
                  f"max {p.max():.0f} ms")
        finally:
            worker.stop()
    finally:
        bus.close()

    with another_database(endpoints) as dsn:
        crashed = undisturbed.model_copy(update={
            "topic_prefix": f"t{uuid.uuid4().hex[:10]}.", "database_url": SecretStr(dsn),
            "home": tmp_path / "home-crashed"})
        create_topics(crashed)
        bus = Bus(crashed)
        try:
            worker = Worker(crashed, tmp_path / "crashed").start()
            try:
                worker = scenario(crashed, bus, worker, crash=True)
                check_story(dsn, bus)
                got = rows(dsn)
            finally:
                worker.stop()
        finally:
            bus.close()
    for table in TABLES:
        assert got[table] == expected[table], table
    assert all(expected.values())
