"""Alert lifecycle: one state machine for every source (rule, anomaly, deadman, slo, health).

It follows Prometheus: a condition that holds makes an alert *pending*; once it has held
for ``for_ms`` the alert is *firing* (at once when ``for_ms`` is 0); once the condition has
been false for ``keep_firing_for_ms`` the alert is *resolved* and forgotten, so a later
firing starts a new episode with a new ``starts_at_ms``. A pending alert whose condition
clears before ``for_ms`` is resolved too, without ever having fired (its episode has no
firing transition): a stored "pending" row gets closed, and the statuses stay those of
AlertEvent (pending, firing, resolved). Repeats of a firing alert emit nothing; their
annotations replace the stored ones silently.

The fingerprint covers the labels only, so two sources reporting identical labels feed
one alert (which keeps the source it was opened with): give each source its own
alertnames.

Time is event time passed in by the caller, never the wall clock. An observation is
presumed to hold until the next observation of the same alert, so time-driven transitions
are stamped at the moment they fell due, whether found by :meth:`AlertBook.tick` or by a
later observation: the output does not depend on how often ``tick`` runs. ``tick`` can be
limited to alerts of some sources, so that each source's alerts move on that source's own
clock: a faster one (health results arrive at once, rule conditions only after their
window closes) must not fire a pending rule alert before the observation that clears it.

Sources that only ever report "true" (anomalies: one event per anomalous window) use
:meth:`AlertBook.pulse`: active now, cleared at once, so the alert stays firing while new
anomalies keep arriving and resolves ``keep_firing_for_ms`` after the last one.

>>> book = AlertBook()
>>> labels = {"alertname": "HighLatency", "service": "checkout", "severity": "warning"}
>>> [t.status for t in book.observe(labels, {}, "rule", True, now_ms=0, for_ms=60_000)]
['pending']
>>> [(t.status, t.updated_at_ms) for t in book.tick(75_000)]
[('firing', 60000)]
>>> book.observe(labels, {"summary": "p99 1.2s"}, "rule", True, now_ms=80_000, for_ms=60_000)
[]
>>> [(t.status, t.ends_at_ms) for t in book.observe(labels, {}, "rule", False, 90_000)]
[('resolved', 90000)]
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

SOURCES = ("anomaly", "rule", "deadman", "slo", "health")
REQUIRED_LABELS = ("alertname", "service", "severity")
PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"

SOURCE_LABEL = "__source__"
FINGERPRINT_LABEL = "__fingerprint__"


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable identity of a label set: the first 16 hex digits (64 bits) of the SHA-256 of
    the labels as a JSON array of ``[name, value]`` pairs sorted by name, compact, UTF-8."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _checked_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for name in REQUIRED_LABELS:
        if not labels.get(name):
            raise ValueError(f"alert labels: {name!r} is required (labels={dict(labels)})")
    return dict(sorted(labels.items()))


class Labelled(Protocol):
    """What silences and inhibition match against: any alert-like thing."""

    @property
    def fingerprint(self) -> str: ...

    def match_labels(self) -> dict[str, str]: ...


def _match_labels(labels: Mapping[str, str], source: str, fp: str) -> dict[str, str]:
    # Pseudo-labels let matchers select by source ("health") or by one alert's identity.
    return {**labels, SOURCE_LABEL: source, FINGERPRINT_LABEL: fp}


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of an alert's status: everything an AlertEvent carries.

    ``starts_at_ms`` is when the condition began to hold (start of the pending period),
    the same for every transition of one episode; ``event_id`` is therefore unique and
    replay-stable. ``suppressed_by`` names the silence id or the inhibiting alert's
    fingerprint; suppression stops notifications only.
    """

    event_id: str
    fingerprint: str
    alertname: str
    service: str
    severity: str
    status: str
    source: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at_ms: int
    ends_at_ms: int | None
    updated_at_ms: int
    suppressed: bool = False
    suppressed_by: str | None = None

    def match_labels(self) -> dict[str, str]:
        return _match_labels(self.labels, self.source, self.fingerprint)

    def suppress(self, by: str) -> Transition:
        return replace(self, suppressed=True, suppressed_by=by)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "fingerprint": self.fingerprint,
            "alertname": self.alertname,
            "service": self.service,
            "severity": self.severity,
            "status": self.status,
            "source": self.source,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at_ms": self.starts_at_ms,
            "ends_at_ms": self.ends_at_ms,
            "updated_at_ms": self.updated_at_ms,
            "incident_id": None,  # the incident stage links alerts to incidents
            "suppressed": self.suppressed,
            "suppressed_by": self.suppressed_by,
        }


@dataclass(slots=True)
class Alert:
    """An open (pending or firing) alert; resolved alerts are not kept."""

    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    source: str
    state: str
    active_at_ms: int
    for_ms: int
    keep_firing_for_ms: int
    updated_at_ms: int
    cleared_at_ms: int | None = None  # first "false" observation while firing
    episode: int = 0  # earlier episodes of this alert that started and ended at active_at_ms

    @property
    def service(self) -> str:
        return self.labels["service"]

    def match_labels(self) -> dict[str, str]:
        return _match_labels(self.labels, self.source, self.fingerprint)

    def due_ms(self) -> int | None:
        """When time alone changes this alert next, if ever."""
        if self.state == PENDING:
            return self.active_at_ms + self.for_ms
        if self.cleared_at_ms is not None:
            return self.cleared_at_ms + self.keep_firing_for_ms
        return None

    def transition(self, status: str, at_ms: int) -> Transition:
        ended = at_ms if status == RESOLVED else None
        return Transition(
            event_id=f"{self.fingerprint}:{self.active_at_ms}{self._nth()}:{status}",
            fingerprint=self.fingerprint,
            alertname=self.labels["alertname"],
            service=self.labels["service"],
            severity=self.labels["severity"],
            status=status,
            source=self.source,
            labels=dict(self.labels),
            annotations=dict(self.annotations),
            starts_at_ms=self.active_at_ms,
            ends_at_ms=ended,
            updated_at_ms=at_ms,
        )

    def _nth(self) -> str:
        return f".{self.episode}" if self.episode else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "source": self.source,
            "state": self.state,
            "active_at_ms": self.active_at_ms,
            "for_ms": self.for_ms,
            "keep_firing_for_ms": self.keep_firing_for_ms,
            "updated_at_ms": self.updated_at_ms,
            "cleared_at_ms": self.cleared_at_ms,
            "episode": self.episode,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(slots=True)
class AlertBook:
    """Open alerts of one partition, with a timer heap so ``tick`` costs O(due alerts).

    Persist either the whole book (:meth:`to_dict`) or, cheaper per event, the alerts
    that :meth:`take_changes` reports (fingerprint → alert dict, ``None`` = forget) into a
    table keyed by fingerprint, and restore with ``AlertBook.from_dict({"alerts": values})``.
    """

    _alerts: dict[str, Alert] = field(default_factory=dict)
    _by_service: dict[str, dict[str, Alert]] = field(default_factory=dict)
    _timers: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # per source
    _scheduled: dict[str, int] = field(default_factory=dict)  # earliest live timer per alert
    _changed: dict[str, None] = field(default_factory=dict)  # ordered set
    # Alerts that ended the moment they started (fingerprint → start, episode, source): a
    # new episode starting that same moment gets the next number, so event ids stay unique.
    _instants: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._alerts)

    def get(self, fp: str) -> Alert | None:
        return self._alerts.get(fp)

    def firing(self, service: str) -> list[Alert]:
        """Firing alerts of one service, e.g. the candidates that may inhibit its others."""
        return [a for a in self._by_service.get(service, {}).values() if a.state == FIRING]

    def observe(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        source: str,
        active: bool,
        now_ms: int,
        for_ms: int = 0,
        keep_firing_for_ms: int = 0,
    ) -> list[Transition]:
        """Feed one evaluation of a condition; returns the transitions it caused."""
        if source not in SOURCES:
            raise ValueError(f"alert source {source!r} is not one of {', '.join(SOURCES)}")
        if for_ms < 0 or keep_firing_for_ms < 0:
            raise ValueError(
                f"alert {labels.get('alertname')!r}: for_ms and keep_firing_for_ms must be >= 0"
            )
        checked = _checked_labels(labels)
        fp = fingerprint(checked)
        out: list[Transition] = []
        alert = self._alerts.get(fp)
        if alert is not None:
            out.extend(self._advance(alert, now_ms))
            alert = self._alerts.get(fp)
        if active:
            if alert is None:
                alert = Alert(fp, checked, dict(annotations), source, PENDING, now_ms, for_ms,
                              keep_firing_for_ms, now_ms, episode=self._episode(fp, now_ms))
                self._alerts[fp] = alert
                self._by_service.setdefault(alert.service, {})[fp] = alert
                if for_ms > 0:
                    out.append(alert.transition(PENDING, now_ms))
            else:
                alert.annotations = dict(annotations)
                alert.cleared_at_ms = None
            alert.for_ms, alert.keep_firing_for_ms = for_ms, keep_firing_for_ms
            alert.updated_at_ms = now_ms
            out.extend(self._advance(alert, now_ms))
        elif alert is not None:
            alert.updated_at_ms = now_ms
            alert.for_ms, alert.keep_firing_for_ms = for_ms, keep_firing_for_ms
            if alert.state == PENDING:
                self._forget(alert, now_ms)
                out.append(alert.transition(RESOLVED, now_ms))
            else:
                if alert.cleared_at_ms is None:
                    alert.cleared_at_ms = now_ms
                out.extend(self._advance(alert, now_ms))
        else:
            return out
        self._changed[fp] = None
        self._schedule(alert)
        return out

    def pulse(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        source: str,
        now_ms: int,
        keep_firing_for_ms: int,
    ) -> list[Transition]:
        """A one-shot report (e.g. an anomaly): fire now, resolve after a quiet period."""
        out = self.observe(labels, annotations, source, True, now_ms, 0, keep_firing_for_ms)
        out += self.observe(labels, annotations, source, False, now_ms, 0, keep_firing_for_ms)
        return out

    def tick(self, now_ms: int, sources: Iterable[str] = SOURCES) -> list[Transition]:
        """Apply every transition of alerts from these sources that has fallen due by
        ``now_ms``: source by source, in (due, fingerprint) order."""
        out: list[Transition] = []
        for source in sources:
            timers = self._timers.get(source)
            if timers:
                self._tick(timers, now_ms, out)
        if self._instants:  # no new episode can start at an instant its source has passed
            self._instants = {fp: i for fp, i in self._instants.items()
                              if i[0] >= now_ms or i[2] not in sources}
        return out

    def _tick(self, timers: list[tuple[int, str]], now_ms: int, out: list[Transition]) -> None:
        while timers and timers[0][0] <= now_ms:
            due, fp = heapq.heappop(timers)
            if self._scheduled.get(fp) != due:
                continue
            del self._scheduled[fp]
            alert = self._alerts.get(fp)
            if alert is None:
                continue
            if alert.due_ms() != due:  # postponed since armed: re-arm at the real time
                self._schedule(alert)
                continue
            due_now = self._advance(alert, now_ms)
            if due_now:
                self._changed[fp] = None
                out.extend(due_now)
            self._schedule(alert)

    def take_changes(self) -> dict[str, dict[str, Any] | None]:
        """Alerts changed since the last call: fingerprint → state dict, or None if gone."""
        changes = {
            fp: (a.to_dict() if (a := self._alerts.get(fp)) is not None else None)
            for fp in self._changed
        }
        self._changed.clear()
        return changes

    def _advance(self, alert: Alert, now_ms: int) -> list[Transition]:
        out: list[Transition] = []
        if alert.state == PENDING and alert.active_at_ms + alert.for_ms <= now_ms:
            alert.state = FIRING
            out.append(alert.transition(FIRING, alert.active_at_ms + alert.for_ms))
        if alert.state == FIRING and alert.cleared_at_ms is not None:
            due = alert.cleared_at_ms + alert.keep_firing_for_ms
            if due <= now_ms:
                self._forget(alert, due)
                out.append(alert.transition(RESOLVED, due))
        return out

    def _episode(self, fp: str, start_ms: int) -> int:
        instant = self._instants.pop(fp, None)
        return instant[1] + 1 if instant is not None and instant[0] == start_ms else 0

    def _forget(self, alert: Alert, ended_ms: int) -> None:
        if ended_ms == alert.active_at_ms:
            self._instants[alert.fingerprint] = (ended_ms, alert.episode, alert.source)
        del self._alerts[alert.fingerprint]
        self._scheduled.pop(alert.fingerprint, None)  # its timer, maybe in another source's
        same_service = self._by_service[alert.service]
        del same_service[alert.fingerprint]
        if not same_service:
            del self._by_service[alert.service]
        self._changed[alert.fingerprint] = None

    def _schedule(self, alert: Alert) -> None:
        """Keep one live timer at or before the alert's due time. A timer that pops too
        early re-arms for the real due time, so later changes never need a heap removal."""
        fp = alert.fingerprint
        due = alert.due_ms()
        if due is None or fp not in self._alerts:
            return
        current = self._scheduled.get(fp)
        if current is None or due < current:
            self._scheduled[fp] = due
            heapq.heappush(self._timers.setdefault(alert.source, []), (due, fp))

    def to_dict(self) -> dict[str, Any]:
        return {"alerts": [a.to_dict() for a in self._alerts.values()],
                "instants": [[fp, *instant] for fp, instant in self._instants.items()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertBook:
        book = cls()
        for entry in data.get("alerts", ()):
            alert = Alert.from_dict(entry)
            book._alerts[alert.fingerprint] = alert
            book._by_service.setdefault(alert.service, {})[alert.fingerprint] = alert
            book._schedule(alert)
        book._instants = {fp: (start, episode, source)
                          for fp, start, episode, source in data.get("instants", ())}
        return book
