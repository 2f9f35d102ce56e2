"""Inhibition: a firing alert mutes notifications of related, less important alerts.

Rules are Alertmanager's: a *target* alert is inhibited while some other firing alert
matches the rule's *source* matchers and has the same values for the ``equal`` labels.
The inhibited alert is still recorded; only its notification is suppressed.

Alert state is partitioned by service, so the firing alerts handed to
:meth:`Inhibitor.inhibited_by` are normally those of the target's service
(``AlertBook.firing(service)``): rules should keep ``service`` in ``equal``.
Inhibition is decided when a transition happens; a source that starts firing later does
not retract notifications already sent.

>>> from pipeline.alerts import AlertBook
>>> book = AlertBook()
>>> down = {"alertname": "ServiceDown", "service": "db", "severity": "critical"}
>>> slow = {"alertname": "LatencySpike", "service": "db", "severity": "warning"}
>>> _ = book.observe(down, {}, "health", True, 0)
>>> [t] = book.observe(slow, {}, "anomaly", True, 0)
>>> Inhibitor().inhibited_by(t, book.firing("db")) == book.firing("db")[0].fingerprint
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.alerts import Labelled
from pipeline.silence import Matcher, matches_all


@dataclass(frozen=True, slots=True)
class InhibitRule:
    name: str
    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ("service",)

    @classmethod
    def from_config(cls, data: Mapping[str, Any], where: str = "inhibit_rules") -> InhibitRule:
        """Read ``{name, source_matchers: ['alertname="ServiceDown"'], target_matchers,
        equal}`` as in Alertmanager's configuration."""

        def matchers(key: str) -> tuple[Matcher, ...]:
            items = data.get(key)
            if not items or not isinstance(items, list):
                raise ValueError(f"{where}.{key}: a non-empty list of matchers is required")
            try:
                return tuple(Matcher.parse(str(text)) for text in items)
            except ValueError as exc:
                raise ValueError(f"{where}.{key}: {exc}") from None

        return cls(
            name=str(data.get("name") or where),
            source_matchers=matchers("source_matchers"),
            target_matchers=matchers("target_matchers"),
            equal=tuple(data.get("equal", ("service",))),
        )


_LATENCY_NOTICE = (
    Matcher("severity", "=~", "warning|info"),
    Matcher("alertname", "=~", "(?i).*latency.*"),
)
DEFAULT_RULES = (
    InhibitRule("service-down", (Matcher("alertname", "=", "ServiceDown"),), _LATENCY_NOTICE),
    InhibitRule(
        "health-critical",
        (Matcher("__source__", "=", "health"), Matcher("severity", "=", "critical")),
        _LATENCY_NOTICE,
    ),
)


class Inhibitor:
    def __init__(self, rules: Sequence[InhibitRule] = DEFAULT_RULES) -> None:
        self.rules = tuple(rules)

    def inhibited_by(self, alert: Labelled, firing: Iterable[Labelled]) -> str | None:
        """Fingerprint of the alert inhibiting ``alert`` (the smallest, if several), or None."""
        target = alert.match_labels()
        rules = [r for r in self.rules if matches_all(r.target_matchers, target)]
        if not rules:
            return None
        found: str | None = None
        for source in firing:
            fp = source.fingerprint
            if fp == alert.fingerprint or (found is not None and fp >= found):
                continue
            labels = source.match_labels()
            for rule in rules:
                if matches_all(rule.source_matchers, labels) and all(
                    labels.get(name, "") == target.get(name, "") for name in rule.equal
                ):
                    found = fp
                    break
        return found
