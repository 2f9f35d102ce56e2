import json
from typing import Any

import pytest

from pipeline.alerts import AlertBook, fingerprint
from pipeline.catalog import TIERS, Catalog, ServiceInfo
from pipeline.codec import codec
from pipeline.incidents import (
    PRIORITY,
    SEVERITIES,
    IncidentBook,
    IncidentConfig,
    Runbook,
    incident_severity,
)

T0 = 1_709_251_200_000  # 2024-03-01T00:00:00Z
S, M = 1_000, 60_000


def catalog() -> Catalog:
    cat = Catalog()
    for service, team, tier, deps in [
        ("checkout", "shop", "CRITICAL", ("orders", "db")),
        ("orders", "shop", "BUSINESS", ("db",)),
        ("db", "dba", "SUPPORT", ()),
        ("search", "discovery", "BUSINESS", ("index",)),
    ]:
        cat.upsert(ServiceInfo(service, team, tier, "prod", depends_on=deps))
    return cat


def labels(service: str, alertname: str = "LatencySpike", severity: str = "warning") -> dict:
    return {"alertname": alertname, "service": service, "severity": severity}


class World:
    """The alert and incident stages wired the way the agents do, minus Kafka."""

    def __init__(self, config: IncidentConfig | None = None) -> None:
        self.alerts = AlertBook()
        self.incidents = IncidentBook(config)
        self.catalog = catalog()
        self.commands: list[dict[str, Any]] = []

    def observe(self, lbl: dict, active: bool, now: int, suppressed_by: str | None = None,
                ) -> list[dict[str, Any]]:
        events = []
        for t in self.alerts.observe(lbl, {}, "rule", active, now):
            if suppressed_by:
                t = t.suppress(suppressed_by)
            effects = self.incidents.on_alert(t.to_dict(), self.catalog, now)
            events += effects.events
            self.commands += effects.commands
        return events

    def fire(self, lbl: dict, now: int, suppressed_by: str | None = None) -> list[dict]:
        return self.observe(lbl, True, now, suppressed_by)

    def clear(self, lbl: dict, now: int) -> list[dict]:
        return self.observe(lbl, False, now)

    def feedback(self, target: str, action: str, now: int, success: bool | None = None
                 ) -> list[dict]:
        return self.incidents.on_feedback(
            {"ts_ms": now, "target_id": target, "action": action, "actor": "ana",
             "until_ms": None, "matchers": {}, "comment": None, "success": success}, now)

    def snapshot(self) -> str:
        return json.dumps({"alerts": self.alerts.to_dict(), "incidents": self.incidents.to_dict(),
                           "catalog": self.catalog.to_dict()})

    def restore(self, blob: str) -> None:
        data = json.loads(blob)
        self.alerts = AlertBook.from_dict(data["alerts"])
        self.incidents = IncidentBook.from_dict(data["incidents"], self.incidents.config)
        self.catalog = Catalog.from_dict(data["catalog"])


def only(events: list[dict], kind: str | None = None) -> dict:
    assert len(events) == 1, events
    if kind is not None:
        assert events[0]["event"] == kind
    return events[0]


def test_cascade_becomes_one_incident_rooted_at_the_shared_dependency() -> None:
    w = World()
    created = only(w.fire(labels("db"), T0), "CREATED")
    only(w.fire(labels("orders", "ErrorRateIncrease"), T0 + 30 * S), "UPDATED")
    last = only(w.fire(labels("checkout"), T0 + 60 * S), "UPDATED")

    assert created["incident_id"] == last["incident_id"] == "INC-2024-000001"
    assert created["status"] == "INVESTIGATING" and created["root_cause_service"] == "db"
    assert len(last["alert_fingerprints"]) == 3
    assert last["services"] == ["db", "orders", "checkout"]
    assert last["root_cause_service"] == "db" and last["assigned_to"] == "dba"
    assert last["status"] == "IDENTIFIED"
    # All warnings: the CRITICAL-tier checkout sets the priority (MEDIUM x CRITICAL = P2;
    # db and orders alone would be P3).
    assert created["priority"] == "P3" and last["priority"] == "P2"
    assert last["severity"] == "MEDIUM"
    assert last["title"] == "checkout: LatencySpike — probable root cause db"
    assert [e["kind"] for e in last["timeline"]] == [
        "ALERT_FIRING", "ASSIGNED", "ALERT_FIRING", "ALERT_FIRING"]
    assert last["opened_at_ms"] == T0 and last["updated_at_ms"] == T0 + 60 * S


def test_downstream_first_then_root_cause_renames_and_reassigns() -> None:
    w = World()
    first = only(w.fire(labels("checkout", "ErrorRateIncrease", "critical"), T0))
    assert (first["root_cause_service"], first["assigned_to"], first["priority"]) == (
        "checkout", "shop", "P1")
    assert first["title"] == "checkout: ErrorRateIncrease"
    w.fire(labels("checkout"), T0 + 10 * S)
    joined = only(w.fire(labels("db"), T0 + 20 * S), "UPDATED")
    assert (joined["root_cause_service"], joined["assigned_to"]) == ("db", "dba")
    assert joined["severity"] == "CRITICAL" and joined["priority"] == "P1"
    assert joined["title"] == (
        "checkout: ErrorRateIncrease, LatencySpike — probable root cause db")
    assert {"ROOT_CAUSE", "ASSIGNED"} <= {e["kind"] for e in joined["timeline"]}


def test_unrelated_service_in_the_same_minute_is_a_separate_incident() -> None:
    w = World()
    a = only(w.fire(labels("db"), T0))
    b = only(w.fire(labels("search"), T0 + 20 * S), "CREATED")
    c = only(w.fire(labels("checkout"), T0 + 40 * S), "UPDATED")
    assert (a["incident_id"], b["incident_id"]) == ("INC-2024-000001", "INC-2024-000002")
    assert c["incident_id"] == a["incident_id"] and b["services"] == ["search"]
    assert b["assigned_to"] == "discovery"


def test_correlation_window_applies_to_linked_services_not_to_a_still_firing_one() -> None:
    w = World()
    first = only(w.fire(labels("checkout"), T0))
    # The same service keeps joining while the incident has its alerts firing ...
    escalated, same = w.fire(labels("checkout", "ErrorRateIncrease"), T0 + 20 * M)
    assert (escalated["event"], same["event"]) == ("ESCALATED", "UPDATED")
    assert same["incident_id"] == first["incident_id"]
    # ... but a dependency failing long after the incident's latest alert is news.
    late = only(w.fire(labels("db"), T0 + 26 * M), "CREATED")
    assert late["incident_id"] != first["incident_id"]


def test_a_service_without_firing_alerts_joins_only_within_the_window() -> None:
    w = World()
    first = only(w.fire(labels("checkout"), T0))
    w.fire(labels("checkout", "ErrorRateIncrease"), T0 + 1 * M)
    w.clear(labels("checkout"), T0 + 2 * M)
    again = only(w.fire(labels("checkout"), T0 + 4 * M))
    assert again["incident_id"] == first["incident_id"]
    assert again["timeline"][-1]["kind"] == "ALERT_REFIRED"
    assert len(again["alert_fingerprints"]) == 2


def test_incident_resolves_when_all_its_alerts_have_resolved() -> None:
    w = World()
    w.fire(labels("db"), T0)
    w.fire(labels("orders"), T0 + 10 * S)
    still = only(w.clear(labels("db"), T0 + 5 * M), "UPDATED")
    assert still["status"] == "IDENTIFIED" and still["resolved_at_ms"] is None
    done = only(w.clear(labels("orders"), T0 + 6 * M), "RESOLVED")
    assert (done["status"], done["resolution"], done["resolved_at_ms"]) == (
        "RESOLVED", "alerts-resolved", T0 + 6 * M)
    assert len(w.incidents) == 0
    # A new failure afterwards is a new incident.
    assert only(w.fire(labels("db"), T0 + 7 * M))["incident_id"] == "INC-2024-000002"


def test_escalation_without_ack_climbs_every_level_stamped_when_due() -> None:
    w = World()
    inc = only(w.fire(labels("checkout"), T0))["incident_id"]
    assert w.incidents.tick(T0 + 14 * M) == []
    events = w.incidents.tick(T0 + 3 * 60 * M)
    assert [(e["event"], e["escalation_level"], e["updated_at_ms"] - T0) for e in events] == [
        ("ESCALATED", "L2", 15 * M), ("ESCALATED", "L3", 45 * M),
        ("ESCALATED", "MANAGEMENT", 105 * M)]
    assert w.incidents.tick(T0 + 24 * 60 * M) == []
    assert events[-1]["incident_id"] == inc
    assert [e["kind"] for e in events[-1]["timeline"]][-3:] == ["ESCALATED"] * 3


def test_ack_stops_escalation() -> None:
    w = World()
    inc = only(w.fire(labels("checkout"), T0))["incident_id"]
    ack = only(w.feedback(inc, "ACK", T0 + 10 * M), "ACKNOWLEDGED")
    assert ack["acknowledged_at_ms"] == T0 + 10 * M and ack["escalation_level"] == "L1"
    assert w.incidents.tick(T0 + 5 * 60 * M) == []
    assert w.feedback(inc, "ACK", T0 + 11 * M) == []  # once only


def test_late_ack_first_applies_the_escalation_that_fell_due() -> None:
    w = World()
    w.fire(labels("checkout"), T0)
    fp = w.alerts.firing("checkout")[0].fingerprint
    events = w.feedback(fp, "ACK", T0 + 20 * M)  # by alert fingerprint, no tick ran
    assert [(e["event"], e["escalation_level"]) for e in events] == [
        ("ESCALATED", "L2"), ("ACKNOWLEDGED", "L2")]


def test_manual_resolve_and_false_positive() -> None:
    w = World()
    a = only(w.fire(labels("db"), T0))["incident_id"]
    b = only(w.fire(labels("search"), T0))["incident_id"]
    assert only(w.feedback(a, "RESOLVE", T0 + M), "RESOLVED")["resolution"] == "manual"
    fp = only(w.feedback(b, "FALSE_POSITIVE", T0 + M), "RESOLVED")
    assert fp["resolution"] == "false-positive" and fp["status"] == "RESOLVED"
    # Their alerts resolving later, or more feedback, changes nothing.
    assert w.clear(labels("db"), T0 + 2 * M) == []
    assert w.feedback(a, "ACK", T0 + 2 * M) == []


def test_auto_remediation_closes_the_incident_as_auto_remediated() -> None:
    config = IncidentConfig(runbooks={"LatencySpike": Runbook("restart", {"replicas": "1"})})
    w = World(config)
    inc = only(w.fire(labels("checkout"), T0))["incident_id"]
    w.fire(labels("checkout", "ErrorRateIncrease"), T0 + S)
    [cmd] = w.commands
    assert cmd["incident_id"] == inc and cmd["action"] == "restart"
    assert cmd["parameters"] == {"replicas": "1"} and cmd["service"] == "checkout"
    assert cmd["command_id"] == f"{inc}:{cmd['alert_fingerprint']}" and cmd["ts_ms"] == T0
    assert cmd["alert_fingerprint"] == fingerprint(labels("checkout"))

    mitigated = only(w.feedback(inc, "REMEDIATION_RESULT", T0 + 2 * M, success=True))
    assert mitigated["status"] == "MITIGATED"
    assert w.incidents.tick(T0 + 60 * M) == []  # mitigated incidents do not escalate
    # The remediated alert flaps inside the incident: no second command.
    w.clear(labels("checkout"), T0 + 3 * M)
    w.fire(labels("checkout"), T0 + 4 * M)
    assert len(w.commands) == 1
    w.feedback(inc, "REMEDIATION_RESULT", T0 + 5 * M, success=True)
    w.clear(labels("checkout"), T0 + 6 * M)
    done = only(w.clear(labels("checkout", "ErrorRateIncrease"), T0 + 7 * M), "RESOLVED")
    assert done["resolution"] == "auto-remediated"


def test_failed_remediation_keeps_the_incident_escalating() -> None:
    w = World()
    inc = only(w.fire(labels("checkout"), T0))["incident_id"]
    failed = only(w.feedback(inc, "REMEDIATION_RESULT", T0 + M, success=False))
    assert failed["status"] == "INVESTIGATING"
    assert failed["timeline"][-1]["kind"] == "REMEDIATION_FAILED"
    assert len(w.incidents.tick(T0 + 16 * M)) == 1


def test_suppressed_alerts_join_but_never_open_or_remediate() -> None:
    config = IncidentConfig(runbooks={"LatencySpike": Runbook("restart")})
    w = World(config)
    assert w.fire(labels("db"), T0, suppressed_by="mnt-db-0") == []
    assert len(w.incidents) == 0
    only(w.fire(labels("checkout", "ServiceDown", "critical"), T0 + S), "CREATED")
    joined = only(w.fire(labels("checkout"), T0 + 2 * S, suppressed_by="abc"), "UPDATED")
    assert len(joined["alert_fingerprints"]) == 2 and w.commands == []


def test_duplicate_and_non_firing_alert_events_change_nothing() -> None:
    w = World()
    [t] = w.alerts.observe(labels("db"), {}, "rule", True, T0)
    assert only(w.incidents.on_alert(t.to_dict(), w.catalog, T0).events, "CREATED")
    assert w.incidents.on_alert(t.to_dict(), w.catalog, T0).events == []
    [pending] = w.alerts.observe(labels("orders"), {}, "rule", True, T0, for_ms=M)
    assert w.incidents.on_alert(pending.to_dict(), w.catalog, T0).events == []
    assert w.feedback("INC-1999-000001", "ACK", T0) == []


def test_incident_ids_count_per_year_of_event_time() -> None:
    w = World()
    new_year = 1_735_689_600_000  # 2025-01-01T00:00:00Z
    assert only(w.fire(labels("db"), new_year - M))["incident_id"] == "INC-2024-000001"
    assert only(w.fire(labels("search"), new_year))["incident_id"] == "INC-2025-000001"


def test_event_ids_are_unique_and_ordered_per_incident() -> None:
    w = World()
    events = w.fire(labels("db"), T0) + w.fire(labels("orders"), T0)
    events += w.incidents.tick(T0 + 20 * M) + w.clear(labels("db"), T0 + 21 * M)
    assert [e["event_id"] for e in events] == [f"INC-2024-000001:{i}" for i in range(1, 5)]


SCRIPT: list[tuple[str, Any, int]] = [
    ("fire", labels("db"), 0),
    ("fire", labels("orders", "ErrorRateIncrease"), 30 * S),
    ("fire", labels("search"), 45 * S),
    ("fire", labels("checkout"), 60 * S),
    ("tick", None, 16 * M),
    ("ack", "INC-2024-000002", 17 * M),
    ("remediated", "INC-2024-000001", 20 * M),
    ("clear", labels("db"), 21 * M),
    ("fire", labels("checkout", "ErrorRateIncrease", "critical"), 22 * M),
    ("tick", None, 60 * M),
    ("clear", labels("orders", "ErrorRateIncrease"), 61 * M),
    ("clear", labels("checkout"), 62 * M),
    ("clear", labels("search"), 63 * M),
    ("clear", labels("checkout", "ErrorRateIncrease", "critical"), 64 * M),
    ("fire", labels("db"), 70 * M),
    ("tick", None, 200 * M),
]


def play(w: World, steps: list[tuple[str, Any, int]]) -> list[dict]:
    out: list[dict] = []
    for op, arg, at in steps:
        now = T0 + at
        if op == "fire":
            out += w.fire(arg, now)
        elif op == "clear":
            out += w.clear(arg, now)
        elif op == "tick":
            out += w.incidents.tick(now)
        elif op == "ack":
            out += w.feedback(arg, "ACK", now)
        else:
            out += w.feedback(arg, "REMEDIATION_RESULT", now, success=True)
    return out


@pytest.mark.parametrize("split", range(len(SCRIPT) + 1))
def test_restoring_a_snapshot_mid_scenario_gives_identical_future_events(split: int) -> None:
    config = IncidentConfig(runbooks={"LatencySpike": Runbook("restart")})
    straight = World(config)
    expected = play(straight, SCRIPT)
    resumed = World(config)
    got = play(resumed, SCRIPT[:split])
    resumed.restore(resumed.snapshot())
    got += play(resumed, SCRIPT[split:])
    assert got == expected
    assert json.loads(json.dumps(got)) == got
    assert resumed.commands == straight.commands


def test_scenario_outcome() -> None:
    w = World(IncidentConfig(runbooks={"LatencySpike": Runbook("restart")}))
    events = play(w, SCRIPT)
    resolved = {e["incident_id"]: e for e in events if e["event"] == "RESOLVED"}
    assert resolved["INC-2024-000001"]["resolution"] == "alerts-resolved"  # refired after
    assert resolved["INC-2024-000002"]["resolution"] == "alerts-resolved"
    assert resolved["INC-2024-000002"]["acknowledged_at_ms"] == T0 + 17 * M
    assert {c["incident_id"] for c in w.commands} == {
        "INC-2024-000001", "INC-2024-000002", "INC-2024-000003"}
    assert len(w.incidents) == 1


def test_priority_matrix_never_improves_for_a_lesser_severity_or_tier() -> None:
    rank = {p: i for i, p in enumerate(["P1", "P2", "P3", "P4"])}
    for s, severity in enumerate(SEVERITIES):
        for t, tier in enumerate(TIERS):
            here = rank[PRIORITY[severity][tier]]
            if s > 0:
                assert rank[PRIORITY[SEVERITIES[s - 1]][tier]] >= here
            if t > 0:
                assert rank[PRIORITY[severity][TIERS[t - 1]]] <= here
    assert PRIORITY["CRITICAL"]["CRITICAL"] == "P1" and PRIORITY["LOW"]["BATCH"] == "P4"


@pytest.mark.parametrize(
    ("given", "expected"),
    [("critical", "CRITICAL"), ("page", "CRITICAL"), ("HIGH", "HIGH"), ("warning", "MEDIUM"),
     ("ticket", "MEDIUM"), ("info", "LOW"), ("whatever", "LOW")],
)
def test_alert_severities_map_onto_the_incident_scale(given: str, expected: str) -> None:
    assert incident_severity(given) == expected


def test_config_from_yaml_shape() -> None:
    config = IncidentConfig.from_config({
        "correlation_window_s": 120,
        "escalation": {"L1": 60, "L2": 90},
        "runbooks": {"LatencySpike": {"action": "scale", "parameters": {"by": 2}}},
    })
    assert config.correlation_window_ms == 120_000
    assert config.escalation_timeouts_ms == {"L1": 60_000, "L2": 90_000}
    assert config.runbooks == {"LatencySpike": Runbook("scale", {"by": "2"})}
    assert IncidentConfig.from_config({}) == IncidentConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"runbooks": {"LatencySpike": {"parameters": {}}}}, "runbooks.LatencySpike: 'action'"),
        ({"escalation": {"L9": 60}}, "escalation.L9: level must be one of L1, L2, L3"),
        ({"escalation": {"L1": 0}}, "escalation.L1: timeout must be positive"),
        ({"default_tier": "GOLD"}, "default_tier: 'GOLD'"),
    ],
)
def test_config_errors_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IncidentConfig.from_config(data)


def test_remediation_commands_fit_their_schema() -> None:
    w = World(IncidentConfig(runbooks={"LatencySpike": Runbook("restart", {"replicas": "1"})}))
    w.fire(labels("checkout"), T0)
    schema = codec("RemediationCommand")
    [cmd] = w.commands
    schema.validate(cmd)
    assert schema.decode(schema.encode(cmd)) == cmd


def test_incident_events_fit_their_schema() -> None:
    w = World()
    events = w.fire(labels("db"), T0) + w.incidents.tick(T0 + 20 * M)
    schema = codec("IncidentEvent")
    for event in events:
        schema.validate(event)
        assert schema.decode(schema.encode(event)) == event


def test_services_missing_from_the_catalog_are_unassigned_and_of_the_default_tier() -> None:
    w = World(IncidentConfig(default_tier="CRITICAL"))
    event = only(w.fire(labels("ghost", severity="critical"), T0))
    assert event["assigned_to"] is None and event["priority"] == "P1"
    assert event["root_cause_service"] == "ghost"


def test_an_event_dated_before_an_escalation_does_not_move_the_incident_back_in_time() -> None:
    """The incidents row keeps the newest version by updated_at: a resolution applied after
    an escalation that fell due later must still be the newest."""
    w = World()
    w.fire(labels("checkout"), T0)
    (escalated,) = w.incidents.tick(T0 + 16 * M)
    done = only(w.clear(labels("checkout"), T0 + 10 * M), "RESOLVED")
    assert done["updated_at_ms"] == escalated["updated_at_ms"] == T0 + 15 * M
    assert done["resolved_at_ms"] == T0 + 10 * M
