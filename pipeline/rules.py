"""Threshold, dynamic-threshold and deadman rules over closed window aggregates.

Rules turn closed windows into *conditions* for the alert state machine (`AlertBook`):
each `Condition` carries exactly the arguments of `AlertBook.observe`. Rules keep no alert
lifecycle (pending, firing, `for`); they only know whether their condition holds.

**Rule files.** `VIGIL_CONFIG_DIR/rules/*.yaml`, each holding one or more YAML documents
(separated by `---`), one rule per document, told apart by `kind`::

    kind: ThresholdRule               # value compared with a fixed threshold
    name: HighLatencyP99              # becomes the alertname label
    selector: 'http_request_duration_seconds{route!~"/health.*"}'
    field: p99                        # count sum min max mean last increase rate p50 p90 p95 p99
    op: '>'                           # > >= < <= == !=
    value: 0.5
    width_s: 60                       # window width evaluated (default: the smallest)
    for: 2m                           # Prometheus durations: 500ms 30s 5m 1h 1d 1w, or 1h30m
    keep_firing_for: 1m
    severity: warning                 # critical | warning | info (deadman default: critical)
    labels: {team: payments}          # added to the alert's labels
    annotations:
      summary: 'p99 of {{ service }} is {{ value | round(3) }}s (> {{ threshold }})'
    ---
    kind: ThresholdRule               # a ratio instead of selector + field
    name: ErrorRatioHigh
    ratio: {numerator: 'http_requests_total{code=~"5.."}',
            denominator: 'http_requests_total', field: increase}
    op: '>'
    value: 0.05
    ---
    kind: DynamicThresholdRule        # threshold from the series' own history
    name: LatencyUnusual
    selector: http_request_duration_seconds
    field: p99
    direction: above                  # above | below | both
    k: 3                              # band: EWMA mean ± max(k × EWMA stddev, min_deviation)
    history: 30                       # EWMA span, in windows
    min_history: 10                   # windows learned before the rule may fire
    forget_after: 1d                  # a series silent this long starts learning afresh
    ---
    kind: DeadmanRule
    name: NoMetrics
    selector: '{__name__=~".+"}'
    scope: service                    # service: nothing matching from the service at all;
    windows: 3                        # series: per series. Fires after this many closed
    forget_after: 1d                  # windows without data; after forget_after of silence
                                      # the service counts as gone and the alert resolves.

Annotations are tiny templates, never code: `{{ var }}` or `{{ var | round(n) }}` with var
one of `service, value, threshold, name, field, labels.<label>` (deadman rules have no
`field`; their `value` is the silence and `threshold` the allowed silence, in seconds).
Anything else is a config error. A rule without a `summary` annotation gets one.

**Evaluation.** `RuleSet.evaluate(windows, now_ms)` takes a batch of closed windows, e.g.
one or more `WindowAggregates` (each holds every series of one (width, start) window, and
a service's series all live on one partition). A selector rule judges each matching series
window on its own. A ratio rule sums the field over the numerator's and the denominator's
matching series per (service, window start) group of the batch and judges the quotient
once the batch is done; a group is judged when some denominator series is present
(numerator series absent count as 0; x/0 is +Inf and 0/0 NaN, as in PromQL, and NaN never
holds). A series whose kind lacks the field (e.g. `increase` of a GAUGE) is skipped.

An alert's labels are the series' labels (all but `__name__`; for ratio rules and
service-scope deadman rules just `service`), then the rule's `labels`, `alertname` (the
rule's name) and `severity`. Two rules may share a name, e.g. a warning and a critical
threshold: their severities tell the alerts apart.

Threshold conditions are reported at every evaluation while they hold (refreshing the
annotations) and once when they stop holding, so traffic scales with trouble, not with
series count; a holding key that goes quiet is reported cleared after `STALE_MS` of stream
time, like Prometheus staleness. A deadman condition is reported once when a key falls
silent and once when its data returns (or it is forgotten).

`RuleSet.tick(stream_time_ms)` does the time-driven work: deadman detection, staleness,
forgetting. Time-driven conditions are stamped with the moment they fell due (e.g. when the
N-th missing window closed), so output does not depend on how often `tick` runs. Call
`evaluate` with a batch before `tick` with the stream time that closed it.

**State.** `to_dict()` is JSON-able (for a Faust changelog table); `from_dict(data)` resumes
with identical output. State is keyed by a digest of each rule's definition minus its
annotations: editing a runbook link keeps baselines, changing a threshold starts afresh, and
alerts still held by a rule that no longer exists are cleared by the next `tick`.

>>> rules = RuleSet([ThresholdRule(name="Slow", selector=parse_selector("latency"),
...     field="p99", op=">", value=0.5)])
>>> row = ClosedWindow("latency{service=\\"api\\"}", "latency", "api", {"service": "api"},
...     "OBSERVATION", 10, 0, 5, 4.0, 0.1, 1.5, 0.8, 0.2, None, None, 0.5, 1.0, 1.2, 1.4)
>>> [c.active for c in rules.evaluate([row], now_ms=15_000)]
[True]
>>> rules.evaluate([row], now_ms=15_000)[0].annotations["summary"]
'Slow: p99 of latency is 1.4 (> 0.5), service api'
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    RootModel,
    field_validator,
)

from pipeline.aggregate import ClosedWindow
from pipeline.alerts import AlertBook, Transition
from pipeline.configfile import ConfigError, ConfigProblem, Location, load_dir
from pipeline.selector import Selector, parse_selector

STALE_MS = 300_000
"""A holding condition whose key shows no window for this long is reported cleared."""

DEFAULT_WIDTHS_S = (10, 60)
DEFAULT_GRACE_MS = 5_000
VALUE_FIELDS = (
    "count", "sum", "min", "max", "mean", "last", "increase", "rate", "p50", "p90", "p95", "p99",
)
RESERVED_LABELS = ("alertname", "service", "severity")
_STATE_VERSION = 1
_ROUTE_CACHE_LIMIT = 1 << 17

FieldName = Literal[
    "count", "sum", "min", "max", "mean", "last", "increase", "rate", "p50", "p90", "p95", "p99"
]
Op = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["critical", "warning", "info"]
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt,
    "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
_ALERT_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?"
)
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


# --- durations and templates ---------------------------------------------------------------


def parse_duration_ms(text: object) -> int:
    """Prometheus duration (`30s`, `5m`, `1h30m`, `0`) in milliseconds."""
    if isinstance(text, str):
        found = _DURATION.fullmatch(text.strip())
        if text.strip() == "0":
            return 0
        if found is not None and any(found.groups()):
            return sum(int(n) * unit for n, unit in
                       zip(found.groups(), _DURATION_UNITS_MS, strict=True) if n)
    raise ValueError("expected a duration such as 30s, 5m, 1h or 1h30m (units ms s m h d w y)")


def format_value(value: object) -> str:
    """Numbers as an on-call engineer reads them: `3`, `0.25`, `NaN`, `+Inf`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


VALUE_VARIABLES = frozenset({"service", "value", "threshold", "name", "field", "labels"})
DEADMAN_VARIABLES = VALUE_VARIABLES - {"field"}
_NUMERIC_VARIABLES = frozenset({"value", "threshold"})
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_EXPRESSION = re.compile(
    r"\s*([a-z_]+)(?:\.([a-zA-Z_][a-zA-Z0-9_]*))?\s*(?:\|\s*round\(\s*(\d{1,2})\s*\)\s*)?"
)


@dataclass(frozen=True, slots=True)
class Var:
    """`{{ name }}`, `{{ labels.team }}` or `{{ value | round(3) }}`."""

    name: str
    label: str | None = None
    digits: int | None = None

    def __str__(self) -> str:
        name = self.name if self.label is None else f"{self.name}.{self.label}"
        return "{{ " + name + ("" if self.digits is None else f" | round({self.digits})") + " }}"


@dataclass(frozen=True, slots=True)
class Template:
    """A fixed-vocabulary text template: substitution only, nothing is ever evaluated."""

    source: str
    parts: tuple[str | Var, ...]

    @classmethod
    def parse(cls, text: object) -> Template:
        if isinstance(text, Template):
            return text
        if not isinstance(text, str):
            raise ValueError("expected a text template")
        parts: list[str | Var] = []
        at = 0
        for found in _PLACEHOLDER.finditer(text):
            parts.append(_literal(text[at:found.start()]))
            parts.append(_variable(found[1]))
            at = found.end()
        parts.append(_literal(text[at:]))
        return cls(text, tuple(p for p in parts if p != ""))

    @classmethod
    def of(cls, *parts: str | Var) -> Template:
        """A template built from parts, so literal text needs no escaping."""
        return cls("".join(p if isinstance(p, str) else str(p) for p in parts), parts)

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if isinstance(p, Var))

    def render(self, values: Mapping[str, object], labels: Mapping[str, str]) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.label is not None:
                out.append(labels.get(part.label, ""))
            else:
                value = values[part.name]
                if part.digits is not None and isinstance(value, float):
                    value = round(value, part.digits)
                out.append(format_value(value))
        return "".join(out)


def _literal(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise ValueError("unbalanced '{{' or '}}' in template")
    return text


def _variable(expression: str) -> Var:
    found = _EXPRESSION.fullmatch(expression)
    if found is None:
        raise ValueError(
            f"template expression {{{{{expression}}}}} not allowed: use {{{{ var }}}} or "
            f"{{{{ var | round(n) }}}} with var one of {_known(VALUE_VARIABLES)}"
        )
    name, label, digits = found[1], found[2], found[3]
    if name not in VALUE_VARIABLES:
        raise ValueError(
            f"unknown template variable {name!r} (known: {_known(VALUE_VARIABLES)})"
        )
    if (name == "labels") != (label is not None):
        raise ValueError(
            "write labels.<label name>, e.g. {{ labels.team }}" if name == "labels"
            else f"template variable {name!r} has no fields"
        )
    if digits is not None and name not in _NUMERIC_VARIABLES:
        raise ValueError(f"round() applies to value and threshold, not {name!r}")
    return Var(name, label, None if digits is None else int(digits))


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(n + ".<label>" if n == "labels" else n for n in names))


# --- the rule documents --------------------------------------------------------------------


def _selector(value: object) -> Selector:
    if isinstance(value, Selector):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a series selector such as 'http_requests_total{code=~\"5..\"}'")
    return parse_selector(value)


SelectorField = Annotated[
    Selector, PlainValidator(_selector), PlainSerializer(str, return_type=str)
]
DurationMs = Annotated[int, PlainValidator(parse_duration_ms)]
TemplateField = Annotated[
    Template, PlainValidator(Template.parse), PlainSerializer(lambda t: t.source, return_type=str)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Ratio(_Strict):
    numerator: SelectorField
    denominator: SelectorField
    field: FieldName


class _Rule(_Strict):
    name: str
    width_s: int | None = Field(default=None, gt=0)
    for_ms: DurationMs = Field(default=0, alias="for")
    keep_firing_for_ms: DurationMs = Field(default=0, alias="keep_firing_for")
    severity: Severity = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, TemplateField] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ALERT_NAME.fullmatch(value):
            raise ValueError("must be letters, digits and '_', not starting with a digit")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for label, text in value.items():
            if not _ALERT_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a label name (letters, digits, '_')")
            if label in RESERVED_LABELS:
                raise ValueError(f"{label!r} is set by Vigil; it cannot be a rule label")
            if not text:
                raise ValueError(f"label {label!r} needs a non-empty value")
        return value


class _ValueRule(_Rule):
    selector: SelectorField | None = None
    field: FieldName | None = None
    ratio: Ratio | None = None


class ThresholdRule(_ValueRule):
    kind: Literal["ThresholdRule"] = "ThresholdRule"
    op: Op
    value: float

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class DynamicThresholdRule(_ValueRule):
    kind: Literal["DynamicThresholdRule"] = "DynamicThresholdRule"
    direction: Literal["above", "below", "both"] = "above"
    k: float = Field(default=3.0, gt=0, allow_inf_nan=False)
    history: int = Field(default=30, ge=2)
    min_history: int = Field(default=10, ge=2)
    min_deviation: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    forget_after: DurationMs = 86_400_000


class DeadmanRule(_Rule):
    kind: Literal["DeadmanRule"] = "DeadmanRule"
    selector: SelectorField
    scope: Literal["service", "series"] = "service"
    windows: int = Field(default=3, ge=1)
    severity: Severity = "critical"
    forget_after: DurationMs = 86_400_000


Rule = ThresholdRule | DynamicThresholdRule | DeadmanRule


class RuleDocument(RootModel[Annotated[Rule, Field(discriminator="kind")]]):
    """One YAML document of a rule file."""


def load_rules(
    config_dir: Path,
    *,
    widths_s: Sequence[int] = DEFAULT_WIDTHS_S,
    grace_ms: int = DEFAULT_GRACE_MS,
) -> RuleSet:
    """Every rule in `config_dir/rules/`; raises ConfigError (file:line) for any problem.

    `widths_s` and `grace_ms` are the aggregator's window widths and grace.
    """
    loaded = load_dir(config_dir / "rules", RuleDocument, root=config_dir)
    problems: list[ConfigProblem] = []
    seen: dict[str, Location] = {}
    for doc, location in loaded:
        rule = doc.root
        checked = _check(rule, widths_s, grace_ms)
        problems.extend(location.problem(path, message) for path, message in checked)
        first = seen.setdefault(_state_key(rule), location)
        if first is not location:
            message = f"rule {rule.name!r} is defined identically (but for annotations) at {first}"
            problems.append(location.problem(("name",), message))
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.file, p.line)))
    return RuleSet([doc.root for doc, _ in loaded], widths_s=widths_s, grace_ms=grace_ms)


def _check(
    rule: Rule, widths_s: Sequence[int], grace_ms: int
) -> list[tuple[tuple[str, ...], str]]:
    """What pydantic cannot see: fields that depend on each other or on the settings."""
    out: list[tuple[tuple[str, ...], str]] = []
    if rule.width_s is not None and rule.width_s not in widths_s:
        out.append((("width_s",), f"{rule.width_s} is not a configured window width "
                    f"({', '.join(map(str, widths_s))})"))
    if isinstance(rule, DeadmanRule):
        for key, template in rule.annotations.items():
            for name in sorted(template.variables - DEADMAN_VARIABLES):
                out.append((("annotations", key), f"unknown template variable {name!r} in a "
                            f"DeadmanRule (known: {_known(DEADMAN_VARIABLES)})"))
        # Otherwise a silent key would be forgotten before its alert could fire.
        least = (rule.windows + 1) * 1000 * (rule.width_s or min(widths_s)) + grace_ms
        if rule.forget_after <= least:
            out.append((("forget_after",), "must be longer than (windows + 1) × width_s + "
                        f"grace ({format_value(least / 1000)}s)"))
        return out
    if rule.selector is not None and rule.ratio is not None:
        out.append((("ratio",), "give either selector (with field) or ratio, not both"))
    elif rule.selector is None and rule.ratio is None:
        out.append(((), "needs selector and field, or ratio"))
    elif rule.ratio is not None and rule.field is not None:
        out.append((("field",), "with ratio, field goes inside ratio"))
    elif rule.selector is not None and rule.field is None:
        out.append((("field",), f"required with selector (one of {', '.join(VALUE_FIELDS)})"))
    return out


def _state_key(rule: Rule) -> str:
    """Identity of a rule's state: its definition without the annotations."""
    definition = rule.model_dump(mode="json", by_alias=True, exclude={"annotations"})
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return f"{rule.name}/{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# --- conditions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """One evaluation of one rule for one key: the arguments of `AlertBook.observe`.

    Cleared conditions carry no annotations; the alert keeps those of its last active one.
    """

    labels: dict[str, str]
    annotations: dict[str, str]
    source: str
    active: bool
    now_ms: int
    for_ms: int
    keep_firing_for_ms: int

    def observe(self, book: AlertBook) -> list[Transition]:
        return book.observe(self.labels, self.annotations, self.source, self.active,
                            self.now_ms, self.for_ms, self.keep_firing_for_ms)

    def to_record(self) -> dict[str, Any]:
        """As an `AlertCondition` record (schemas/AlertCondition.avsc)."""
        return {"labels": self.labels, "annotations": self.annotations, "source": self.source,
                "active": self.active, "pulse": False, "ts_ms": self.now_ms,
                "for_ms": self.for_ms, "keep_firing_for_ms": self.keep_firing_for_ms}


class _Timeline:
    """Keys due at given times; each key is due at most once (moving it drops the old time)."""

    def __init__(self) -> None:
        self._buckets: dict[int, set[str]] = {}
        self._heap: list[int] = []

    def set(self, key: str, due: int, old: int | None = None) -> None:
        if old == due:
            return
        if old is not None:
            self.discard(key, old)
        bucket = self._buckets.get(due)
        if bucket is None:
            bucket = self._buckets[due] = set()
            heapq.heappush(self._heap, due)
        bucket.add(key)

    def discard(self, key: str, due: int) -> None:
        bucket = self._buckets.get(due)
        if bucket is not None:
            bucket.discard(key)
            if not bucket:
                del self._buckets[due]

    def pop(self, now_ms: int) -> tuple[int, list[str]] | None:
        """The earliest time ≤ now_ms and its keys (sorted, so output is reproducible)."""
        while self._heap and self._heap[0] <= now_ms:
            due = heapq.heappop(self._heap)
            keys = self._buckets.pop(due, None)
            if keys:
                return due, sorted(keys)
        return None


@dataclass(slots=True)
class _Active:
    labels: dict[str, str]
    last_ms: int  # start of the last window the condition held in (deadman: last report)


_Out = list[Condition]


class _Evaluator:
    """A compiled rule: routing, per-window work, end-of-batch work, timers, state."""

    source = "rule"

    def __init__(self, rule: Rule, width_s: int) -> None:
        self.rule = rule
        self.key = _state_key(rule)
        self.width_s = width_s
        self.width_ms = width_s * 1000
        self.annotations = dict(rule.annotations)
        self.annotations.setdefault("summary", self._default_summary())
        self.active: dict[str, _Active] = {}

    def route(self, name: str, labels: Mapping[str, str]) -> int:
        """Non-zero when a window of this series concerns the rule (a bit mask for ratios)."""
        raise NotImplementedError

    def add(self, window: ClosedWindow, mask: int, now_ms: int, out: _Out) -> None:
        raise NotImplementedError

    def flush(self, now_ms: int, out: _Out) -> None:
        """End of a batch."""

    def tick(self, stream_time_ms: int, out: _Out) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        active = {k: [a.labels, a.last_ms] for k, a in self.active.items()}
        return {"source": self.source, "active": active}

    def restore(self, data: Mapping[str, Any]) -> None:
        self.active = {k: _Active(dict(labels), int(last)) for k, (labels, last)
                       in data["active"].items()}

    def _default_summary(self) -> Template:
        raise NotImplementedError

    def _labels(self, base: Mapping[str, str]) -> dict[str, str]:
        rule = self.rule
        return {**base, **rule.labels, "alertname": rule.name, "severity": rule.severity}

    def _condition(self, labels: dict[str, str], annotations: dict[str, str], active: bool,
                   now_ms: int) -> Condition:
        rule = self.rule
        return Condition(labels, annotations, self.source, active, now_ms, rule.for_ms,
                         rule.keep_firing_for_ms)

    def _render(self, labels: dict[str, str], values: dict[str, object]) -> dict[str, str]:
        return {key: t.render(values, labels) for key, t in self.annotations.items()}


def _divide(numerator: float, denominator: float) -> float:
    if denominator:
        return numerator / denominator
    return math.inf if numerator > 0 else (-math.inf if numerator < 0 else math.nan)


class _ValueEvaluator(_Evaluator):
    """Selector + field, or ratio, judged per key; holding keys go stale after STALE_MS."""

    rule: ThresholdRule | DynamicThresholdRule

    def __init__(self, rule: ThresholdRule | DynamicThresholdRule, width_s: int) -> None:
        self.field: str = rule.ratio.field if rule.ratio is not None else rule.field or ""
        super().__init__(rule, width_s)
        self._groups: dict[tuple[str, int], list[float]] = {}
        self._stale = _Timeline()

    def route(self, name: str, labels: Mapping[str, str]) -> int:
        ratio = self.rule.ratio
        if ratio is None:
            assert self.rule.selector is not None
            return int(self.rule.selector.matches(name, labels))
        return ratio.numerator.matches(name, labels) | ratio.denominator.matches(name, labels) << 1

    def add(self, window: ClosedWindow, mask: int, now_ms: int, out: _Out) -> None:
        value = getattr(window, self.field)
        if value is None:
            return
        if self.rule.ratio is None:
            self._judge(window.series_id, window.labels, window.service, float(value),
                        window.window_start_ms, now_ms, out)
            return
        group = self._groups.get((window.service, window.window_start_ms))
        if group is None:
            group = self._groups[(window.service, window.window_start_ms)] = [0.0, 0.0, 0.0]
        if mask & 1:
            group[0] += value
        if mask & 2:
            group[1] += value
            group[2] = 1.0

    def flush(self, now_ms: int, out: _Out) -> None:
        for (service, start), (numerator, denominator, seen) in self._groups.items():
            if seen:
                value = _divide(numerator, denominator)
                self._judge(service, {"service": service}, service, value, start, now_ms, out)
        self._groups.clear()

    def tick(self, stream_time_ms: int, out: _Out) -> None:
        while (due := self._stale.pop(stream_time_ms - STALE_MS - self.width_ms)) is not None:
            for key in due[1]:
                entry = self.active.pop(key)
                out.append(self._condition(entry.labels, {}, False,
                                           due[0] + STALE_MS + self.width_ms))

    def restore(self, data: Mapping[str, Any]) -> None:
        super().restore(data)
        for key, entry in self.active.items():
            self._stale.set(key, entry.last_ms)

    def _verdict(self, key: str, value: float, start_ms: int) -> tuple[bool, float] | None:
        """(holds, threshold), or None to leave the key alone (e.g. a window seen before)."""
        raise NotImplementedError

    def _judge(self, key: str, base: Mapping[str, str], service: str, value: float,
               start_ms: int, now_ms: int, out: _Out) -> None:
        verdict = self._verdict(key, value, start_ms)
        if verdict is None:
            return
        holds, threshold = verdict
        entry = self.active.get(key)
        if holds:
            labels = self._labels(base)
            values = {"service": service, "value": value, "threshold": threshold,
                      "name": self.rule.name, "field": self.field}
            out.append(self._condition(labels, self._render(labels, values), True, now_ms))
            if entry is None:
                self.active[key] = _Active(labels, start_ms)
                self._stale.set(key, start_ms)
            elif start_ms > entry.last_ms:
                self._stale.set(key, start_ms, entry.last_ms)
                entry.labels, entry.last_ms = labels, start_ms
        elif entry is not None:
            del self.active[key]
            self._stale.discard(key, entry.last_ms)
            out.append(self._condition(entry.labels, {}, False, now_ms))

    def _signal(self) -> str:
        ratio = self.rule.ratio
        if ratio is None:
            return f"{self.field} of {self.rule.selector}"
        return f"{self.field} ratio {ratio.numerator} / {ratio.denominator}"


class _ThresholdEvaluator(_ValueEvaluator):
    rule: ThresholdRule

    def __init__(self, rule: ThresholdRule, width_s: int) -> None:
        super().__init__(rule, width_s)
        self._op = _OPS[rule.op]

    def _verdict(self, key: str, value: float, start_ms: int) -> tuple[bool, float]:
        return self._op(value, self.rule.value), self.rule.value

    def _default_summary(self) -> Template:
        return Template.of(Var("name"), f": {self._signal()} is ", Var("value", digits=4),
                           f" ({self.rule.op} ", Var("threshold"), "), service ", Var("service"))


class _DynamicEvaluator(_ValueEvaluator):
    """EWMA mean and variance per key, learned after judging each window (so a lasting
    shift becomes the new normal within about `history` windows)."""

    rule: DynamicThresholdRule

    def __init__(self, rule: DynamicThresholdRule, width_s: int) -> None:
        super().__init__(rule, width_s)
        self._alpha = 2.0 / (rule.history + 1)
        self.baseline: dict[str, list[float]] = {}  # key -> [n, mean, var, last start]
        self._forget = _Timeline()

    def _verdict(self, key: str, value: float, start_ms: int) -> tuple[bool, float] | None:
        rule = self.rule
        state = self.baseline.get(key)
        if state is not None and start_ms <= state[3]:
            return None
        if not math.isfinite(value):
            return False, math.nan
        if state is None:
            state = self.baseline[key] = [0.0, 0.0, 0.0, -math.inf]
        n, mean, var, last = state
        verdict = (False, math.nan)
        if n >= rule.min_history:
            spread = max(rule.k * math.sqrt(var), rule.min_deviation)
            upper = value > mean + spread and rule.direction != "below"
            lower = value < mean - spread and rule.direction != "above"
            use_upper = rule.direction == "above" or (rule.direction == "both" and value >= mean)
            verdict = (upper or lower, mean + spread if use_upper else mean - spread)
        # Exact running mean/variance until 1/n falls below alpha, then exponential decay.
        n += 1
        weight = max(self._alpha, 1.0 / n)
        diff = value - mean
        mean += weight * diff
        var = (1.0 - weight) * (var + weight * diff * diff)
        state[:] = [n, mean, var, float(start_ms)]
        self._forget.set(key, start_ms, None if math.isinf(last) else int(last))
        return verdict

    def tick(self, stream_time_ms: int, out: _Out) -> None:
        super().tick(stream_time_ms, out)
        limit = stream_time_ms - self.rule.forget_after - self.width_ms
        while (due := self._forget.pop(limit)) is not None:
            for key in due[1]:
                del self.baseline[key]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "baseline": {k: list(v) for k, v in self.baseline.items()}}

    def restore(self, data: Mapping[str, Any]) -> None:
        super().restore(data)
        self.baseline = {k: [float(x) for x in v] for k, v in data["baseline"].items()}
        for key, state in self.baseline.items():
            self._forget.set(key, int(state[3]))

    def _default_summary(self) -> Template:
        return Template.of(Var("name"), f": {self._signal()} is ", Var("value", digits=4),
                           ", outside its usual range (threshold ", Var("threshold", digits=4),
                           "), service ", Var("service"))


class _DeadmanEvaluator(_Evaluator):
    """Last window seen per key; due when the `windows`-th window after it has closed.

    `seen[key]` = [base labels, last window start, 1 if firing else 0]. A firing key is
    reported once, not once per missing window: a long outage of many services would
    otherwise flood the alert stage with repeats that change nothing.
    """

    source = "deadman"
    rule: DeadmanRule

    def __init__(self, rule: DeadmanRule, width_s: int, grace_ms: int) -> None:
        super().__init__(rule, width_s)
        self.grace_ms = grace_ms
        self.seen: dict[str, list[Any]] = {}
        self._due = _Timeline()

    def route(self, name: str, labels: Mapping[str, str]) -> int:
        return int(self.rule.selector.matches(name, labels))

    def add(self, window: ClosedWindow, mask: int, now_ms: int, out: _Out) -> None:
        by_service = self.rule.scope == "service"
        key = window.service if by_service else window.series_id
        start = window.window_start_ms
        entry = self.seen.get(key)
        if entry is None:
            base = {"service": window.service} if by_service else window.labels
            entry = self.seen[key] = [base, start, 0]
            self._due.set(key, self._next_due(entry))
        elif start > entry[1]:
            old = self._next_due(entry)
            entry[1], entry[2] = start, 0
            self._due.set(key, self._next_due(entry), old)
            gone = self.active.pop(key, None)
            if gone is not None:
                out.append(self._condition(gone.labels, {}, False, now_ms))

    def _next_due(self, entry: list[Any]) -> int:
        """When the key starts firing, or (once firing) when it is forgotten."""
        last, firing = entry[1], entry[2]
        forget = last + self.width_ms + self.rule.forget_after
        if firing:
            return forget
        return min(last + (self.rule.windows + 1) * self.width_ms + self.grace_ms, forget)

    def tick(self, stream_time_ms: int, out: _Out) -> None:
        rule, width = self.rule, self.width_ms
        while (due := self._due.pop(stream_time_ms)) is not None:
            now, keys = due
            for key in keys:
                entry = self.seen[key]
                if now >= entry[1] + width + rule.forget_after:
                    del self.seen[key]
                    gone = self.active.pop(key, None)
                    if gone is not None:
                        out.append(self._condition(gone.labels, {}, False, now))
                    continue
                entry[2] = 1
                labels = self._labels(entry[0])
                self.active[key] = _Active(labels, now)
                silent_s = ((now - self.grace_ms - entry[1]) // width - 1) * self.width_s
                values = {"service": labels["service"], "value": silent_s,
                          "threshold": rule.windows * self.width_s, "name": rule.name}
                out.append(self._condition(labels, self._render(labels, values), True, now))
                self._due.set(key, self._next_due(entry))

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "seen": {k: list(v) for k, v in self.seen.items()}}

    def restore(self, data: Mapping[str, Any]) -> None:
        super().restore(data)
        self.seen = {k: [dict(labels), int(last), int(firing)]
                     for k, (labels, last, firing) in data["seen"].items()}
        for key, entry in self.seen.items():
            self._due.set(key, self._next_due(entry))

    def _default_summary(self) -> Template:
        what = "service " if self.rule.scope == "service" else f"series {self.rule.selector} of "
        return Template.of(Var("name"), f": no data from {what}", Var("service"), " for ",
                           Var("value"), "s")


# --- the rule set --------------------------------------------------------------------------


class RuleSet:
    """All rules of one partition's worth of services, and their state."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        widths_s: Sequence[int] = DEFAULT_WIDTHS_S,
        grace_ms: int = DEFAULT_GRACE_MS,
    ) -> None:
        self.rules = list(rules)
        self.widths_s = tuple(sorted(widths_s))
        self.grace_ms = grace_ms
        self._evaluators = [self._compile(rule) for rule in self.rules]
        self._by_width: dict[int, list[_Evaluator]] = {}
        for ev in self._evaluators:
            self._by_width.setdefault(ev.width_s, []).append(ev)
        self._routes: dict[tuple[int, str], tuple[tuple[_Evaluator, int], ...]] = {}
        self._orphans: list[tuple[dict[str, str], str]] = []

    def _compile(self, rule: Rule) -> _Evaluator:
        width_s = rule.width_s or self.widths_s[0]
        if width_s not in self.widths_s:
            raise ValueError(f"rule {rule.name!r}: width_s {width_s} is not configured")
        if isinstance(rule, DeadmanRule):
            return _DeadmanEvaluator(rule, width_s, self.grace_ms)
        if isinstance(rule, DynamicThresholdRule):
            return _DynamicEvaluator(rule, width_s)
        return _ThresholdEvaluator(rule, width_s)

    def __len__(self) -> int:
        return len(self.rules)

    def evaluate(self, windows: Iterable[ClosedWindow], now_ms: int) -> list[Condition]:
        """Conditions from one batch of closed windows (see the module docstring)."""
        out: list[Condition] = []
        routes = self._routes
        for window in windows:
            route = routes.get((window.width_s, window.series_id))
            if route is None:
                route = self._route(window)
            for evaluator, mask in route:
                evaluator.add(window, mask, now_ms, out)
        for evaluator in self._evaluators:
            evaluator.flush(now_ms, out)
        return out

    def _route(self, window: ClosedWindow) -> tuple[tuple[_Evaluator, int], ...]:
        if len(self._routes) >= _ROUTE_CACHE_LIMIT:
            self._routes.clear()
        route = tuple(
            (ev, mask) for ev in self._by_width.get(window.width_s, ())
            if (mask := ev.route(window.name, window.labels))
        )
        self._routes[(window.width_s, window.series_id)] = route
        return route

    def tick(self, stream_time_ms: int) -> list[Condition]:
        """Conditions that fell due by `stream_time_ms`: deadman, staleness, forgetting."""
        out = [Condition(labels, {}, source, False, stream_time_ms, 0, 0)
               for labels, source in self._orphans]
        self._orphans.clear()
        for evaluator in self._evaluators:
            evaluator.tick(stream_time_ms, out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The evaluation state (not the rules), JSON-able."""
        return {
            "version": _STATE_VERSION,
            "rules": {ev.key: ev.to_dict() for ev in self._evaluators},
            "orphans": [[labels, source] for labels, source in self._orphans],
        }

    def from_dict(self, data: Mapping[str, Any]) -> RuleSet:
        """A RuleSet with these rules resuming from `to_dict` output. State of rules not
        configured any more is dropped, their held alerts cleared by the next `tick`."""
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"rule state version {data.get('version')!r} is not "
                             f"{_STATE_VERSION}")
        fresh = RuleSet(self.rules, widths_s=self.widths_s, grace_ms=self.grace_ms)
        states = dict(data["rules"])
        for evaluator in fresh._evaluators:
            state = states.pop(evaluator.key, None)
            if state is not None:
                evaluator.restore(state)
        fresh._orphans = [(dict(labels), source) for labels, source in data["orphans"]]
        for state in states.values():
            fresh._orphans.extend((dict(labels), state["source"])
                                  for labels, _ in state["active"].values())
        return fresh
