"""Incidents: correlate firing alerts, name a probable root cause, escalate, remediate.

Input is what the alert stage publishes (AlertEvent dicts, ``Transition.to_dict()``),
feedback records and event time; output is IncidentEvent dicts (and RemediationCommand
dicts). No clock, no I/O: replaying the same input gives the same output.

**Correlation.** A firing alert of service S joins an open incident that already has a
firing alert of S, or — within ``correlation_window_ms`` of that incident's latest alert —
one whose services include S or are linked to S in the dependency graph
(:meth:`Catalog.linked`). Several candidates: the one with S firing first, then the
earliest opened. Otherwise the alert opens a new incident, unless it is suppressed
(silenced or inhibited): suppressed alerts join incidents as context but never open one
and never trigger remediation. Incidents are not merged.

**Root cause and status.** ``root_cause_service`` is :meth:`Catalog.most_upstream` of the
affected services. An incident spanning several services has a named root cause and is
IDENTIFIED; a single-service one stays INVESTIGATING. A successful remediation result makes
it MITIGATED (a new alert afterwards undoes that). It is RESOLVED when all its alerts have
resolved (resolution ``auto-remediated`` after a successful remediation, else
``alerts-resolved``), or by feedback RESOLVE (``manual``) or FALSE_POSITIVE
(``false-positive``). Resolved incidents leave the book.

**Severity and priority.** Alert severities map onto LOW < MEDIUM < HIGH < CRITICAL
(critical/page → CRITICAL, high/error → HIGH, warning/ticket/medium → MEDIUM, else LOW);
the incident takes the highest. Priority is the best over its alerts of
``PRIORITY[severity][tier of the alert's service]`` (services missing from the catalog
count as ``default_tier``)::

               CRITICAL  BUSINESS  SUPPORT  BATCH
    CRITICAL      P1        P1        P2      P3
    HIGH          P1        P2        P3      P3
    MEDIUM        P2        P3        P3      P4
    LOW           P3        P4        P4      P4

**Escalation.** L1 → L2 → L3 → MANAGEMENT: an incident neither acknowledged nor mitigated
escalates when its current level's timeout has passed, stamped at the moment it fell due.
Every entry point first applies the escalations due by ``now_ms``, so the output does not
depend on how often :meth:`IncidentBook.tick` runs.

Incident ids are ``INC-<year of event time, UTC>-<6-digit sequence per year>``; the
sequences are part of the state, so the book must see every incident it numbers (one
incident stage, or one book per key space).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.catalog import TIERS, Catalog

SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
_SEVERITY_OF = {
    "critical": "CRITICAL", "page": "CRITICAL",
    "high": "HIGH", "error": "HIGH",
    "warning": "MEDIUM", "ticket": "MEDIUM", "medium": "MEDIUM",
}
PRIORITY = {
    "CRITICAL": {"CRITICAL": "P1", "BUSINESS": "P1", "SUPPORT": "P2", "BATCH": "P3"},
    "HIGH": {"CRITICAL": "P1", "BUSINESS": "P2", "SUPPORT": "P3", "BATCH": "P3"},
    "MEDIUM": {"CRITICAL": "P2", "BUSINESS": "P3", "SUPPORT": "P3", "BATCH": "P4"},
    "LOW": {"CRITICAL": "P3", "BUSINESS": "P4", "SUPPORT": "P4", "BATCH": "P4"},
}
LEVELS = ("L1", "L2", "L3", "MANAGEMENT")
INVESTIGATING, IDENTIFIED, MITIGATED, RESOLVED = (
    "INVESTIGATING", "IDENTIFIED", "MITIGATED", "RESOLVED",
)
CREATED, UPDATED, ESCALATED, ACKNOWLEDGED = "CREATED", "UPDATED", "ESCALATED", "ACKNOWLEDGED"
MINUTE_MS = 60_000


def incident_severity(alert_severity: str) -> str:
    return _SEVERITY_OF.get(alert_severity.lower(), "LOW")


@dataclass(frozen=True, slots=True)
class Runbook:
    action: str
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IncidentConfig:
    correlation_window_ms: int = 5 * MINUTE_MS
    escalation_timeouts_ms: Mapping[str, int] = field(
        default_factory=lambda: {"L1": 15 * MINUTE_MS, "L2": 30 * MINUTE_MS, "L3": 60 * MINUTE_MS}
    )
    runbooks: Mapping[str, Runbook] = field(default_factory=dict)
    default_tier: str = "BUSINESS"
    timeline_limit: int = 200  # newest entries kept; every event is also stored in full

    def __post_init__(self) -> None:
        if self.correlation_window_ms < 0:
            raise ValueError("incidents.correlation_window_ms: must be >= 0")
        for level, timeout in self.escalation_timeouts_ms.items():
            if level not in LEVELS[:-1]:
                raise ValueError(
                    f"incidents.escalation.{level}: level must be one of {', '.join(LEVELS[:-1])}"
                )
            if timeout <= 0:
                raise ValueError(f"incidents.escalation.{level}: timeout must be positive")
        if self.default_tier not in TIERS:
            raise ValueError(f"incidents.default_tier: {self.default_tier!r} not in {TIERS}")

    @classmethod
    def from_config(cls, data: Mapping[str, Any], where: str = "incidents") -> IncidentConfig:
        """Read ``{correlation_window_s, escalation: {L1: seconds, ...}, default_tier,
        runbooks: {alertname: {action, parameters}}}``."""
        runbooks = {}
        for alertname, spec in (data.get("runbooks") or {}).items():
            if not isinstance(spec, Mapping) or not spec.get("action"):
                raise ValueError(f"{where}.runbooks.{alertname}: 'action' is required")
            params = {str(k): str(v) for k, v in (spec.get("parameters") or {}).items()}
            runbooks[str(alertname)] = Runbook(str(spec["action"]), params)
        defaults = cls()
        escalation = data.get("escalation")
        return cls(
            correlation_window_ms=int(float(data.get("correlation_window_s", 300)) * 1000),
            escalation_timeouts_ms=(
                {str(k): int(float(v) * 1000) for k, v in escalation.items()}
                if escalation is not None else defaults.escalation_timeouts_ms
            ),
            runbooks=runbooks,
            default_tier=str(data.get("default_tier", defaults.default_tier)),
        )


@dataclass(slots=True)
class AlertRef:
    """What an incident remembers of one of its alerts."""

    alertname: str
    service: str
    severity: str  # on the incident scale
    firing: bool
    suppressed: bool


@dataclass(slots=True)
class Incident:
    incident_id: str
    opened_at_ms: int
    level_since_ms: int
    last_alert_ms: int
    updated_at_ms: int
    title: str = ""
    severity: str = "LOW"
    priority: str = "P4"
    status: str = INVESTIGATING
    assigned_to: str | None = None  # team of the root-cause service, if the catalog knows
    escalation_level: str = LEVELS[0]
    services: list[str] = field(default_factory=list)
    root_cause_service: str | None = None
    alerts: dict[str, AlertRef] = field(default_factory=dict)
    acknowledged_at_ms: int | None = None
    resolved_at_ms: int | None = None
    resolution: str | None = None
    remediated: list[str] = field(default_factory=list)  # fingerprints already commanded
    event_seq: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["alerts"] = {
            fp: [r.alertname, r.service, r.severity, r.firing, r.suppressed]
            for fp, r in self.alerts.items()
        }
        data["services"] = list(self.services)
        data["remediated"] = list(self.remediated)
        data["timeline"] = [dict(e) for e in self.timeline]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Incident:
        fields = {name: data[name] for name in cls.__dataclass_fields__}
        fields["alerts"] = {fp: AlertRef(*ref) for fp, ref in data["alerts"].items()}
        fields["services"] = list(data["services"])
        fields["remediated"] = list(data["remediated"])
        fields["timeline"] = [dict(e) for e in data["timeline"]]
        return cls(**fields)


@dataclass(slots=True)
class Effects:
    """What one input caused: IncidentEvent dicts and RemediationCommand dicts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)


class IncidentBook:
    """Open incidents, indexed by alert fingerprint; see the module docstring for rules."""

    def __init__(self, config: IncidentConfig | None = None) -> None:
        self.config = config or IncidentConfig()
        self._open: dict[str, Incident] = {}  # in opening order
        self._by_fp: dict[str, str] = {}
        self._sequences: dict[int, int] = {}
        # service -> incident id -> its firing alerts of that service; derived, not stored
        self._firing: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def get(self, incident_id: str) -> Incident | None:
        return self._open.get(incident_id)

    def on_alert(self, alert: Mapping[str, Any], catalog: Catalog, now_ms: int) -> Effects:
        """Take one AlertEvent; only firing and resolved ones matter here."""
        effects = Effects(self.tick(now_ms))
        status, fp = alert["status"], alert["fingerprint"]
        if status == "resolved":
            effects.events.extend(self._alert_resolved(fp, now_ms))
            return effects
        if status != "firing":
            return effects
        service = alert["service"]
        suppressed = bool(alert.get("suppressed"))
        incident_id = self._by_fp.get(fp)
        if incident_id is not None:
            incident = self._open[incident_id]
            ref = incident.alerts[fp]
            if ref.firing:
                return effects  # replayed or duplicated event
            self._set_firing(incident, ref, True)
            self._note(incident, now_ms, "ALERT_REFIRED", f"{ref.alertname} on {service} [{fp}]")
            kind = UPDATED
        else:
            found = self._correlate(service, catalog, now_ms)
            if found is None and suppressed:
                return effects
            incident = found if found is not None else self._new_incident(now_ms)
            kind = CREATED if found is None else UPDATED
            ref = AlertRef(
                alert["alertname"], service, incident_severity(alert["severity"]), False,
                suppressed,
            )
            incident.alerts[fp] = ref
            self._set_firing(incident, ref, True)
            self._by_fp[fp] = incident.incident_id
            if service not in incident.services:
                incident.services.append(service)
            detail = f"{alert['alertname']} on {service} ({alert['severity']}) [{fp}]"
            self._note(incident, now_ms, "ALERT_FIRING", detail)
            runbook = self.config.runbooks.get(alert["alertname"])
            if runbook is not None and not suppressed and fp not in incident.remediated:
                incident.remediated.append(fp)
                effects.commands.append(self._command(incident, alert, runbook, now_ms))
        incident.last_alert_ms = now_ms
        if incident.status == MITIGATED:
            incident.status = INVESTIGATING
            incident.level_since_ms = now_ms
            self._note(incident, now_ms, "MITIGATION_UNDONE", "new alert after mitigation")
        self._refresh(incident, catalog, now_ms)
        effects.events.append(self._event(incident, kind, now_ms))
        return effects

    def on_feedback(self, feedback: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
        """Apply ACK, RESOLVE, FALSE_POSITIVE or REMEDIATION_RESULT to the incident named by
        ``target_id`` (an incident id or one of its alerts' fingerprints)."""
        events = self.tick(now_ms)
        target = str(feedback["target_id"])
        incident = self._open.get(target) or self._open.get(self._by_fp.get(target, ""))
        if incident is None:
            return events
        action, actor = feedback["action"], feedback.get("actor") or "unknown"
        comment = feedback.get("comment")
        detail = f"by {actor}" + (f": {comment}" if comment else "")
        if action == "ACK":
            if incident.acknowledged_at_ms is None:
                incident.acknowledged_at_ms = now_ms
                self._note(incident, now_ms, ACKNOWLEDGED, detail)
                events.append(self._event(incident, ACKNOWLEDGED, now_ms))
        elif action in ("RESOLVE", "FALSE_POSITIVE"):
            resolution = "manual" if action == "RESOLVE" else "false-positive"
            events.append(self._close(incident, now_ms, resolution, detail))
        elif action == "REMEDIATION_RESULT":
            if feedback.get("success") is True:
                incident.status = MITIGATED
                self._note(incident, now_ms, "REMEDIATION_SUCCEEDED", detail)
            else:
                self._note(incident, now_ms, "REMEDIATION_FAILED", detail)
            events.append(self._event(incident, UPDATED, now_ms))
        return events

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """Escalate every incident whose level timed out without ACK or mitigation."""
        events: list[dict[str, Any]] = []
        timeouts = self.config.escalation_timeouts_ms
        for incident in self._open.values():
            if incident.acknowledged_at_ms is not None or incident.status == MITIGATED:
                continue
            while incident.escalation_level != LEVELS[-1]:
                timeout = timeouts.get(incident.escalation_level)
                if timeout is None or incident.level_since_ms + timeout > now_ms:
                    break
                due = incident.level_since_ms + timeout
                level = LEVELS[LEVELS.index(incident.escalation_level) + 1]
                incident.escalation_level, incident.level_since_ms = level, due
                self._note(incident, due, ESCALATED, f"not acknowledged; escalated to {level}")
                events.append(self._event(incident, ESCALATED, due))
        return events

    def _correlate(self, service: str, catalog: Catalog, now_ms: int) -> Incident | None:
        same = self._firing.get(service)
        if same:
            return self._open[min(same, key=lambda i: self._open[i].opened_at_ms)]
        window = self.config.correlation_window_ms
        for incident in self._open.values():  # opening order breaks ties
            if now_ms - incident.last_alert_ms <= window and any(
                catalog.linked(service, other) for other in incident.services
            ):
                return incident
        return None

    def _set_firing(self, incident: Incident, ref: AlertRef, firing: bool) -> None:
        if ref.firing == firing:
            return
        ref.firing = firing
        counts = self._firing.setdefault(ref.service, {})
        n = counts.get(incident.incident_id, 0) + (1 if firing else -1)
        if n:
            counts[incident.incident_id] = n
        else:
            del counts[incident.incident_id]
            if not counts:
                del self._firing[ref.service]

    def _has_firing(self, incident: Incident) -> bool:
        return any(incident.incident_id in self._firing.get(s, ()) for s in incident.services)

    def _new_incident(self, now_ms: int) -> Incident:
        year = datetime.fromtimestamp(now_ms / 1000, tz=UTC).year
        seq = self._sequences.get(year, 0) + 1
        self._sequences[year] = seq
        incident = Incident(f"INC-{year}-{seq:06d}", now_ms, now_ms, now_ms, now_ms)
        self._open[incident.incident_id] = incident
        return incident

    def _refresh(self, incident: Incident, catalog: Catalog, now_ms: int) -> None:
        """Recompute what derives from the alerts: root cause, severity, priority, title."""
        tier_of = {s: catalog.tier(s) or self.config.default_tier for s in incident.services}
        order = {s: i for i, s in enumerate(incident.services)}
        refs = list(incident.alerts.values())
        incident.severity = max((r.severity for r in refs), key=SEVERITIES.index)
        incident.priority, _, impacted = min(
            (PRIORITY[r.severity][tier_of[r.service]], order[r.service], r.service) for r in refs
        )
        root = catalog.most_upstream(incident.services)
        names = dict.fromkeys(r.alertname for r in refs if r.service == impacted)
        incident.title = f"{impacted}: {', '.join(names)}" + (
            f" — probable root cause {root}" if root != impacted else ""
        )
        if incident.status != MITIGATED:
            incident.status = IDENTIFIED if len(incident.services) > 1 else INVESTIGATING
        if root != incident.root_cause_service:
            if incident.root_cause_service is not None:
                self._note(incident, now_ms, "ROOT_CAUSE", f"probable root cause {root}")
            incident.root_cause_service = root
        team = catalog.team(root)
        if team != incident.assigned_to:
            incident.assigned_to = team
            self._note(incident, now_ms, "ASSIGNED", f"assigned to {team or 'nobody'}")

    def _alert_resolved(self, fp: str, now_ms: int) -> list[dict[str, Any]]:
        incident_id = self._by_fp.get(fp)
        if incident_id is None:
            return []
        incident = self._open[incident_id]
        ref = incident.alerts[fp]
        if not ref.firing:
            return []
        self._set_firing(incident, ref, False)
        message = f"{ref.alertname} on {ref.service} [{fp}]"
        self._note(incident, now_ms, "ALERT_RESOLVED", message)
        if self._has_firing(incident):
            return [self._event(incident, UPDATED, now_ms)]
        resolution = "auto-remediated" if incident.status == MITIGATED else "alerts-resolved"
        return [self._close(incident, now_ms, resolution, "all alerts resolved")]

    def _close(
        self, incident: Incident, now_ms: int, resolution: str, detail: str
    ) -> dict[str, Any]:
        incident.status = RESOLVED
        incident.resolved_at_ms = now_ms
        incident.resolution = resolution
        self._note(incident, now_ms, RESOLVED, f"{resolution}, {detail}")
        del self._open[incident.incident_id]
        for fp, ref in incident.alerts.items():
            self._set_firing(incident, ref, False)
            del self._by_fp[fp]
        return self._event(incident, RESOLVED, now_ms)

    def _note(self, incident: Incident, at_ms: int, kind: str, message: str) -> None:
        incident.timeline.append({"ts_ms": at_ms, "kind": kind, "message": message})
        excess = len(incident.timeline) - self.config.timeline_limit
        if excess > 0:
            del incident.timeline[:excess]

    @staticmethod
    def _command(
        incident: Incident, alert: Mapping[str, Any], runbook: Runbook, now_ms: int
    ) -> dict[str, Any]:
        return {
            "command_id": f"{incident.incident_id}:{alert['fingerprint']}",
            "incident_id": incident.incident_id,
            "ts_ms": now_ms,
            "service": alert["service"],
            "action": runbook.action,
            "parameters": dict(runbook.parameters),
            "alert_fingerprint": alert["fingerprint"],
        }

    @staticmethod
    def _event(incident: Incident, kind: str, at_ms: int) -> dict[str, Any]:
        incident.event_seq += 1
        # Never back in time (the row's upsert keeps the newest): an escalation is dated
        # when it fell due, and a later input may be dated before that.
        incident.updated_at_ms = max(incident.updated_at_ms, at_ms)
        return {
            "event_id": f"{incident.incident_id}:{incident.event_seq}",
            "incident_id": incident.incident_id,
            "event": kind,
            "title": incident.title,
            "severity": incident.severity,
            "priority": incident.priority,
            "status": incident.status,
            "assigned_to": incident.assigned_to,
            "escalation_level": incident.escalation_level,
            "services": list(incident.services),
            "root_cause_service": incident.root_cause_service,
            "alert_fingerprints": list(incident.alerts),
            "opened_at_ms": incident.opened_at_ms,
            "acknowledged_at_ms": incident.acknowledged_at_ms,
            "resolved_at_ms": incident.resolved_at_ms,
            "resolution": incident.resolution,
            "timeline": [dict(e) for e in incident.timeline],
            "updated_at_ms": incident.updated_at_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": {str(year): seq for year, seq in sorted(self._sequences.items())},
            "incidents": [i.to_dict() for i in self._open.values()],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], config: IncidentConfig | None = None
    ) -> IncidentBook:
        book = cls(config)
        book._sequences = {int(year): seq for year, seq in data.get("sequences", {}).items()}
        for entry in data.get("incidents", ()):
            incident = Incident.from_dict(entry)
            book._open[incident.incident_id] = incident
            for fp, ref in incident.alerts.items():
                book._by_fp[fp] = incident.incident_id
                if ref.firing:
                    ref.firing = False
                    book._set_firing(incident, ref, True)
        return book
