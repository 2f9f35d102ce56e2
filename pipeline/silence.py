"""Silences: label matchers plus a time range [starts, ends) that mute notifications.

Matchers follow Alertmanager: ``=``, ``!=``, ``=~``, ``!~``; regexes are anchored at both
ends; a missing label matches as the empty string. Besides an alert's labels, matchers
may test the pseudo-labels ``__source__`` and ``__fingerprint__`` (see ``pipeline.alerts``).

Silences come from two places:

- ``Feedback`` with action SILENCE. ``matchers`` maps a label name to a value; a plain
  value means equality, and a value may start with an operator: ``"=~db|cache"``,
  ``"!~canary-.*"``, ``"!=staging"``, ``"=value"`` (write ``"="`` first to match a literal
  value that itself starts with ``=`` or ``!``). With no matchers the silence mutes the
  one alert whose fingerprint is ``target_id``. ``until_ms`` null means a default
  duration (2 h).
- ``ChangeEvent`` MAINTENANCE_START mutes every alert of its service until the matching
  MAINTENANCE_END, or at most a maximum duration (4 h by default, or the event's
  ``until_ms`` attribute).

>>> book = SilenceBook()
>>> sil = book.on_feedback({"ts_ms": 0, "target_id": "x", "action": "SILENCE", "actor": "ana",
...                         "until_ms": 60_000, "matchers": {"service": "checkout",
...                         "alertname": "=~Latency.*"}, "comment": None})
>>> book.is_silenced({"service": "checkout", "alertname": "LatencySpike"}, 30_000) == sil.silence_id
True
>>> book.is_silenced({"service": "checkout", "alertname": "LatencySpike"}, 60_000) is None
True
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from pipeline.alerts import FINGERPRINT_LABEL

OPS = ("=", "!=", "=~", "!~")
_MATCHER_TEXT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")

HOUR_MS = 3_600_000
MAINTENANCE = "maintenance"  # created_by of maintenance-window silences


_GLOBAL_FLAGS = re.compile(r"^\(\?[aimsux]+\)")


@lru_cache(maxsize=4096)
def _anchored(pattern: str) -> re.Pattern[str]:
    # Python accepts global flags such as (?i) only at the very start, so keep them there.
    flags = _GLOBAL_FLAGS.match(pattern)
    head = flags.group() if flags else ""
    return re.compile(f"{head}^(?:{pattern[len(head):]})$")


@dataclass(frozen=True, slots=True)
class Matcher:
    """One label test. ``str(m)`` is Alertmanager's text form and :meth:`parse` reads it."""

    name: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"matcher {self.name!r}: operator {self.op!r} is not one of {OPS}")
        if self.op in ("=~", "!~"):
            try:
                _anchored(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self}: invalid regex: {exc}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = _anchored(self.value).match(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value, ensure_ascii=False)}"

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Read ``name="value"``, ``name=~"regex"`` … (quotes optional for simple values)."""
        found = _MATCHER_TEXT.match(text)
        if found is None:
            raise ValueError(f"matcher {text!r}: expected name, one of {OPS}, value")
        name, op, value = found.groups()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"matcher {text!r}: badly quoted value") from None
        return cls(name, op, value)

    @classmethod
    def from_entry(cls, name: str, spec: str) -> Matcher:
        """Read one entry of a Feedback ``matchers`` map (operator-prefix convention)."""
        for op in ("=~", "!~", "!=", "="):
            if spec.startswith(op):
                return cls(name, op, spec[len(op):])
        return cls(name, "=", spec)


def matches_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


@dataclass(frozen=True, slots=True)
class Silence:
    silence_id: str
    matchers: tuple[Matcher, ...]
    starts_at_ms: int
    ends_at_ms: int
    created_by: str
    comment: str | None = None

    def active(self, now_ms: int) -> bool:
        return self.starts_at_ms <= now_ms < self.ends_at_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "silence_id": self.silence_id,
            "matchers": [str(m) for m in self.matchers],
            "starts_at_ms": self.starts_at_ms,
            "ends_at_ms": self.ends_at_ms,
            "created_by": self.created_by,
            "comment": self.comment,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silence:
        return cls(
            silence_id=data["silence_id"],
            matchers=tuple(Matcher.parse(m) for m in data["matchers"]),
            starts_at_ms=data["starts_at_ms"],
            ends_at_ms=data["ends_at_ms"],
            created_by=data["created_by"],
            comment=data.get("comment"),
        )


class SilenceBook:
    """Active and future silences; ids are derived from their input, so a replayed
    feedback or change event replaces its own silence instead of adding another."""

    def __init__(
        self, default_duration_ms: int = 2 * HOUR_MS, max_maintenance_ms: int = 4 * HOUR_MS
    ) -> None:
        self.default_duration_ms = default_duration_ms
        self.max_maintenance_ms = max_maintenance_ms
        self._silences: dict[str, Silence] = {}

    def __len__(self) -> int:
        return len(self._silences)

    def add(self, silence: Silence) -> None:
        self._silences[silence.silence_id] = silence

    def on_feedback(self, feedback: Mapping[str, Any]) -> Silence | None:
        """Create the silence a SILENCE feedback asks for; other actions are not ours."""
        if feedback["action"] != "SILENCE":
            return None
        ts = int(feedback["ts_ms"])
        until = feedback.get("until_ms")
        ends = ts + self.default_duration_ms if until is None else int(until)
        if ends <= ts:
            raise ValueError(
                f"Feedback SILENCE (target_id={feedback.get('target_id')}): "
                f"until_ms {until} must be after ts_ms {ts}"
            )
        entries = sorted((feedback.get("matchers") or {}).items())
        if entries:
            matchers = tuple(Matcher.from_entry(name, spec) for name, spec in entries)
        else:
            matchers = (Matcher(FINGERPRINT_LABEL, "=", str(feedback["target_id"])),)
        digest = hashlib.sha256(
            json.dumps([ts, feedback.get("target_id"), feedback.get("actor"), entries])
            .encode()
        ).hexdigest()[:12]
        silence = Silence(
            f"sil-{digest}", matchers, ts, ends, str(feedback.get("actor") or ""),
            feedback.get("comment"),
        )
        self.add(silence)
        return silence

    def on_change(self, event: Mapping[str, Any]) -> Silence | None:
        """Open or close a maintenance silence; returns the silence created or ended."""
        kind, service, ts = event["kind"], event["service"], int(event["ts_ms"])
        if kind == "MAINTENANCE_START":
            until = (event.get("attributes") or {}).get("until_ms")
            ends = ts + self.max_maintenance_ms
            if until is not None:
                ends = min(ends, int(until))
            silence = Silence(
                f"mnt-{service}-{ts}", (Matcher("service", "=", service),), ts, ends,
                MAINTENANCE, event.get("description"),
            )
            self.add(silence)
            return silence
        if kind == "MAINTENANCE_END":
            scope = (Matcher("service", "=", service),)
            ended = None
            for sid, silence in list(self._silences.items()):
                if (silence.created_by == MAINTENANCE and silence.matchers == scope
                        and silence.starts_at_ms <= ts < silence.ends_at_ms):
                    ended = replace(silence, ends_at_ms=ts)
                    self._silences[sid] = ended
            return ended
        return None

    def is_silenced(self, labels: Mapping[str, str], now_ms: int) -> str | None:
        """The id of the first active silence matching ``labels`` (pass an alert's
        ``match_labels()`` so fingerprint silences work), or None."""
        for silence in self._silences.values():
            if silence.active(now_ms) and matches_all(silence.matchers, labels):
                return silence.silence_id
        return None

    def expire(self, now_ms: int) -> list[str]:
        """Drop silences that have ended; returns their ids."""
        gone = [sid for sid, s in self._silences.items() if s.ends_at_ms <= now_ms]
        for sid in gone:
            del self._silences[sid]
        return gone

    def to_dict(self) -> dict[str, Any]:
        return {"silences": [s.to_dict() for s in self._silences.values()]}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], default_duration_ms: int = 2 * HOUR_MS,
        max_maintenance_ms: int = 4 * HOUR_MS,
    ) -> SilenceBook:
        book = cls(default_duration_ms, max_maintenance_ms)
        for entry in data.get("silences", ()):
            book.add(Silence.from_dict(entry))
        return book
