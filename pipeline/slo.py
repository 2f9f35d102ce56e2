"""SLOs as code: OpenSLO v1 documents, rolling good/total counts, burn rates, burn alerts.

An SLO counts good and total events per minute of event time in two numpy rings that
cover its rolling window (30 d = 43,200 minutes). Closed window aggregates feed the rings,
one `add` per aggregate, never per event. From the rings, `status` derives:

- `sli` = good / total over the SLO window (1.0 while there are no events: nothing failed);
- burn rate over a window = (bad / total in it) / (1 - objective), 0.0 with no events; while
  less history than the window exists the window is what exists, which a ratio of counts
  gives for free since minutes before the first event hold zeros;
- `error_budget_remaining` = 1 - (bad / total) / (1 - objective) over the SLO window,
  i.e. 1 - the window's burn rate: 1.0 untouched, 0.0 spent, negative once overspent
  (-1.0 means twice the budget was spent);
- time to exhaustion at the current 1 h burn rate = remaining × window / burn_1h; None while
  nothing burns, zero once the budget is spent.

Burn-rate alert conditions follow the SRE workbook's multi-window, multi-burn-rate alerts
(both the long and the short window must burn faster than the factor, so an alert stops as
soon as the short window recovers). Turning conditions into pending/firing/resolved alerts
is the alert state machine's job, not this module's.

>>> requests = parse_selector('http_requests_total{service="api"}')
>>> slo = Slo("api", "api", 0.999, 30 * 1440, MetricSide(requests), MetricSide(requests))
>>> state = SloState(slo.window_minutes)
>>> for minute in range(60):
...     _ = state.add(minute * MINUTE_MS, good=990.0, total=1000.0)
>>> status = state.status(slo, 59 * MINUTE_MS)
>>> round(status.burn_rates["1h"], 9), [a.alertname for a in evaluate(status) if a.active]
(10.0, ['SLOBurnRatePageSlow', 'SLOBurnRateTicketFast', 'SLOBurnRateTicketSlow'])
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from pipeline.compress import compress, decompress
from pipeline.configfile import ConfigError, Location, load_dir
from pipeline.selector import Selector, parse_selector

MINUTE_MS = 60_000
BURN_WINDOWS: dict[str, int] = {
    "5m": 5,
    "30m": 30,
    "1h": 60,
    "2h": 120,
    "6h": 360,
    "1d": 1440,
    "3d": 4320,
}
MAX_WINDOW_MINUTES = 90 * 1440
_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080}
_DURATION = re.compile(r"([1-9][0-9]*)([mhdw])")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?")


# --- the OpenSLO v1 document -------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


def duration_minutes(text: str) -> int:
    """`30d` -> 43200; units m, h, d, w (OpenSLO duration shorthand)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValueError("expected a duration such as 30d, 28d, 7d or 1h (units m, h, d, w)")
    return int(found[1]) * _UNIT_MINUTES[found[2]]


def _slo_selector(value: object) -> Selector:
    if isinstance(value, Selector):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a series selector such as 'http_requests_total{code!~\"5..\"}'")
    selector = parse_selector(value)
    if "service" in selector.labels_matched():
        raise ValueError("spec.service already selects the service; drop the service matcher")
    return selector


SelectorField = Annotated[
    Selector, PlainValidator(_slo_selector), PlainSerializer(str, return_type=str)
]


class Metadata(_Strict):
    name: str
    display_name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_is_a_key(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be lower-case letters, digits, '-', '_' or '.'")
        return value


class VigilQuery(_Strict):
    query: SelectorField
    le: float | None = None

    @field_validator("le")
    @classmethod
    def _le_positive(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError("must be a positive number (the latency bound, in the unit observed)")
        return value


class VigilSource(_Strict):
    type: Literal["vigil"]
    spec: VigilQuery


class HealthQuery(_Strict):
    check: str | None = None


class HealthSource(_Strict):
    """Health-check results of the SLO's service: healthy results / all results."""

    type: Literal["vigil-health"]
    spec: HealthQuery = Field(default_factory=HealthQuery)


class RatioPart(_Strict):
    metric_source: Annotated[VigilSource | HealthSource, Field(discriminator="type")]


class RatioMetric(_Strict):
    counter: bool
    good: RatioPart
    total: RatioPart

    @field_validator("counter")
    @classmethod
    def _counts(cls, value: bool) -> bool:
        if not value:
            raise ValueError("only counter ratios are supported (counter: true)")
        return value

    @model_validator(mode="after")
    def _sides_agree(self) -> RatioMetric:
        good, total = self.good.metric_source, self.total.metric_source
        if good.type != total.type:
            raise ValueError("good and total must use the same metricSource type")
        if isinstance(total, VigilSource) and total.spec.le is not None:
            raise ValueError("le belongs on good (observations <= le) not on total")
        return self


class IndicatorSpec(_Strict):
    ratio_metric: RatioMetric


class Indicator(_Strict):
    metadata: Metadata | None = None
    spec: IndicatorSpec


class TimeWindow(_Strict):
    duration: str
    is_rolling: bool

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        minutes = duration_minutes(value)
        if not 60 <= minutes <= MAX_WINDOW_MINUTES:
            raise ValueError(f"must be between 1h and {MAX_WINDOW_MINUTES // 1440}d")
        return value

    @field_validator("is_rolling")
    @classmethod
    def _rolling(cls, value: bool) -> bool:
        if not value:
            raise ValueError("only rolling windows are supported (isRolling: true)")
        return value


class Objective(_Strict):
    display_name: str | None = None
    target: float

    @field_validator("target")
    @classmethod
    def _target(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError("must be in (0, 1)")
        return value


class SloSpec(_Strict):
    description: str | None = None
    service: str = Field(min_length=1)
    indicator: Indicator
    budgeting_method: Literal["Occurrences"]
    time_window: list[TimeWindow]
    objectives: list[Objective]

    @field_validator("time_window")
    @classmethod
    def _one_window(cls, value: list[TimeWindow]) -> list[TimeWindow]:
        if len(value) != 1:
            raise ValueError("exactly one time window is supported")
        return value

    @field_validator("objectives")
    @classmethod
    def _one_objective(cls, value: list[Objective]) -> list[Objective]:
        if len(value) != 1:
            raise ValueError("exactly one objective is supported; write one SLO per objective")
        return value


class SloDocument(_Strict):
    api_version: Literal["openslo/v1"]
    kind: Literal["SLO"]
    metadata: Metadata
    spec: SloSpec


# --- the runtime definition --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricSide:
    """Aggregates matching `selector` (narrowed to the SLO's service); with `le`, only the
    observations <= le of OBSERVATION series count."""

    selector: Selector
    le: float | None = None


@dataclass(frozen=True, slots=True)
class HealthSide:
    """Health-check results of the service (of one `check` if set); `healthy_only` on the
    good side, where DEGRADED counts as not healthy."""

    check: str | None
    healthy_only: bool


Side = MetricSide | HealthSide


@dataclass(frozen=True, slots=True)
class Slo:
    name: str
    service: str
    objective: float
    window_minutes: int
    good: Side
    total: Side
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def error_budget(self) -> float:
        # Objectives are written as decimals: rounding 1 - 0.999 to 0.001 keeps a burn of
        # exactly 10 at 1 % errors instead of 9.999999999999991.
        return round(1.0 - self.objective, 12)

    @classmethod
    def from_document(cls, doc: SloDocument) -> Slo:
        spec = doc.spec
        ratio = spec.indicator.spec.ratio_metric
        return cls(
            name=doc.metadata.name,
            service=spec.service,
            objective=spec.objectives[0].target,
            window_minutes=duration_minutes(spec.time_window[0].duration),
            good=_side(ratio.good, spec.service, good=True),
            total=_side(ratio.total, spec.service, good=False),
            labels=dict(doc.metadata.labels),
        )


def _side(part: RatioPart, service: str, *, good: bool) -> Side:
    source = part.metric_source
    if isinstance(source, HealthSource):
        return HealthSide(source.spec.check, healthy_only=good)
    return MetricSide(source.spec.query.and_equal("service", service), source.spec.le)


def load_slos(config_dir: Path) -> list[tuple[Slo, Location]]:
    """Every SLO in `config_dir/slos/`; raises ConfigError (file:line) for any problem,
    including the same SLO name defined twice."""
    loaded = load_dir(config_dir / "slos", SloDocument, root=config_dir, kind="SLO")
    seen: dict[str, Location] = {}
    problems = []
    for doc, location in loaded:
        first = seen.setdefault(doc.metadata.name, location)
        if first is not location:
            message = f"SLO {doc.metadata.name!r} is already defined at {first}"
            problems.append(location.problem(("metadata", "name"), message))
    if problems:
        raise ConfigError(problems)
    return [(Slo.from_document(doc), location) for doc, location in loaded]


# --- what feeds an SLO -------------------------------------------------------------------


class SliError(ValueError):
    """An aggregate lacks what an SLO needs from it (e.g. `le_counts` for a latency SLI)."""


def le_key(le: float) -> str:
    """How a bound is written as a key of `le_counts` where keys must be strings (Avro)."""
    return repr(float(le))


def le_bounds(slos: Iterable[Slo]) -> tuple[float, ...]:
    """The bounds for which the aggregator must put `le_counts` on OBSERVATION aggregates."""
    bounds = {s.good.le for s in slos if isinstance(s.good, MetricSide) and s.good.le is not None}
    return tuple(sorted(bounds))


def side_amount(side: MetricSide, aggregate: Mapping[str, Any]) -> float | None:
    """What one closed aggregate adds to one side, or None if it does not feed it.

    COUNTER series add their `increase`; OBSERVATION series add their `count`, or with `le`
    the number of observations <= le, which only the aggregator's sketch knows: it must
    supply `le_counts` {le: count} (keys floats, or `le_key(le)` strings) for every bound in
    `le_bounds`. GAUGE series never count events.
    """
    if not side.selector.matches(aggregate["name"], aggregate["labels"]):
        return None
    kind = aggregate["kind"]
    if side.le is not None:
        if kind != "OBSERVATION":
            return None
        counts = aggregate.get("le_counts") or {}
        count = counts.get(side.le, counts.get(le_key(side.le)))
        if count is None:
            series = aggregate.get("series_id", aggregate["name"])
            raise SliError(f"{series}: aggregate has no le_counts for le={side.le}")
        return float(count)
    if kind == "COUNTER":
        return float(aggregate.get("increase") or 0.0)
    if kind == "OBSERVATION":
        return float(aggregate["count"])
    return None


def good_total_for(slo: Slo, aggregate: Mapping[str, Any]) -> tuple[float, float] | None:
    """(good, total) that one closed aggregate adds to `slo`, or None if it feeds neither."""
    if not isinstance(slo.good, MetricSide) or not isinstance(slo.total, MetricSide):
        return None
    good = side_amount(slo.good, aggregate)
    total = side_amount(slo.total, aggregate)
    if good is None and total is None:
        return None
    return good or 0.0, total or 0.0


def health_good_total(slo: Slo, result: Mapping[str, Any]) -> tuple[float, float] | None:
    """(good, total) that one HealthCheckResult adds to a health SLO, or None."""
    good, total = slo.good, slo.total
    if not isinstance(good, HealthSide) or not isinstance(total, HealthSide):
        return None
    if result["service"] != slo.service:
        return None
    check = result["check"]
    g = float(good.check in (None, check) and result["status"] == "HEALTHY")
    t = float(total.check in (None, check))
    return (g, t) if g or t else None


class SliFeed:
    """Routes closed aggregates and health results to the SLOs they feed.

    Only aggregates `width_s` wide are taken (the pipeline emits several widths of the same
    series; counting two would count events twice). Candidates are looked up by
    (service, metric name), so an aggregate costs a dict lookup unless an SLO reads it.
    """

    def __init__(self, slos: Sequence[Slo], width_s: int = 60) -> None:
        if width_s <= 0 or 60 % width_s:
            raise ValueError(f"width_s={width_s}: SLO minutes need a window width dividing 60")
        self.width_s = width_s
        self._by_name: dict[tuple[str, str], list[Slo]] = {}
        self._any_name: dict[str, list[Slo]] = {}
        self._health: dict[str, list[Slo]] = {}
        for slo in slos:
            if isinstance(slo.good, HealthSide):
                self._health.setdefault(slo.service, []).append(slo)
                continue
            sides = [side for side in (slo.good, slo.total) if isinstance(side, MetricSide)]
            for name in {side.selector.name for side in sides}:
                if name is None:
                    self._any_name.setdefault(slo.service, []).append(slo)
                else:
                    self._by_name.setdefault((slo.service, name), []).append(slo)

    def aggregate(self, aggregate: Mapping[str, Any]) -> list[tuple[Slo, int, float, float]]:
        """[(slo, minute_ms, good, total)] that this closed aggregate adds."""
        if aggregate["width_s"] != self.width_s:
            return []
        service = aggregate["labels"].get("service", "")
        candidates = self._by_name.get((service, aggregate["name"]), [])
        candidates = candidates + self._any_name.get(service, [])
        minute = aggregate["window_start_ms"] // MINUTE_MS * MINUTE_MS
        out = []
        for slo in {id(s): s for s in candidates}.values():
            amounts = good_total_for(slo, aggregate)
            if amounts is not None:
                out.append((slo, minute, *amounts))
        return out

    def health(self, result: Mapping[str, Any]) -> list[tuple[Slo, int, float, float]]:
        """[(slo, minute_ms, good, total)] that one HealthCheckResult adds."""
        minute = result["ts_ms"] // MINUTE_MS * MINUTE_MS
        out = []
        for slo in self._health.get(result["service"], []):
            amounts = health_good_total(slo, result)
            if amounts is not None:
                out.append((slo, minute, *amounts))
        return out


# --- rolling state -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SloStatus:
    slo: str
    service: str
    ts_ms: int  # end of the last minute counted
    objective: float
    window_minutes: int
    history_minutes: int  # minutes since the first event, capped at what the ring holds
    good: float  # over the SLO window
    total: float
    sli: float
    error_budget_remaining: float
    burn_rate_window: float  # over the whole SLO window
    burn_rates: Mapping[str, float]  # keyed like BURN_WINDOWS
    time_to_exhaustion_s: float | None
    exhaustion_at_ms: int | None

    def to_record(self) -> dict[str, Any]:
        """The `SloStatus` record of schemas/SloStatus.avsc."""
        record: dict[str, Any] = {
            "slo": self.slo,
            "service": self.service,
            "ts_ms": self.ts_ms,
            "objective": self.objective,
            "sli": self.sli,
            "error_budget_remaining": self.error_budget_remaining,
        }
        record.update({f"burn_rate_{w}": self.burn_rates[w] for w in BURN_WINDOWS})
        record["exhaustion_at_ms"] = self.exhaustion_at_ms
        return record


_HEADER = struct.Struct("<4sBBiqqi")
_MAGIC = b"VSLO"
_FLOAT64, _UINT32 = 0, 1


class SloState:
    """Good and total counts per event-time minute, in rings covering the SLO window.

    The ring also covers the longest burn window (3 d) for SLOs with shorter windows.
    Advancing the newest minute clears the minutes that scroll out; minutes older than the
    ring are refused. Window sums are numpy sums over at most two slices, computed when a
    status is asked for, so they never drift the way running sums of floats do.
    """

    __slots__ = ("first", "good", "head", "size", "total")

    def __init__(self, window_minutes: int) -> None:
        self.size = max(window_minutes, max(BURN_WINDOWS.values()))
        self.good = np.zeros(self.size)
        self.total = np.zeros(self.size)
        self.head: int | None = None  # newest minute seen (minutes since the epoch)
        self.first: int | None = None  # oldest minute seen

    def add(self, minute_ms: int, good: float, total: float) -> bool:
        """Count `good` of `total` events in the minute starting at `minute_ms`.

        Returns False (and counts nothing) for a minute older than the ring holds.
        """
        minute = minute_ms // MINUTE_MS
        if self.head is None or self.first is None:
            self.head = self.first = minute
        elif minute > self.head:
            self._advance(minute)
        elif minute <= self.head - self.size:
            return False
        self.first = min(self.first, minute)
        slot = minute % self.size
        self.good[slot] += good
        self.total[slot] += total
        return True

    def _advance(self, minute: int) -> None:
        assert self.head is not None
        gap = minute - self.head
        if gap >= self.size:
            self.good[:] = 0.0
            self.total[:] = 0.0
        else:
            for lo, hi in _slices(self.head + 1, minute, self.size):
                self.good[lo:hi] = 0.0
                self.total[lo:hi] = 0.0
        self.head = minute

    def sums(self, end_minute: int, minutes: int) -> tuple[float, float]:
        """(good, total) over the `minutes` minutes ending with `end_minute` (inclusive)."""
        if self.head is None:
            return 0.0, 0.0
        lo = max(end_minute - minutes + 1, self.head - self.size + 1)
        hi = min(end_minute, self.head)
        good = total = 0.0
        for a, b in _slices(lo, hi, self.size):
            good += float(self.good[a:b].sum())
            total += float(self.total[a:b].sum())
        return good, total

    def status(self, slo: Slo, minute_ms: int) -> SloStatus:
        """The SLO as of the end of the minute starting at `minute_ms` (the last closed one)."""
        now = minute_ms // MINUTE_MS
        budget = slo.error_budget

        def burn(good: float, total: float) -> float:
            return (total - good) / total / budget if total > 0 else 0.0

        rates = {w: burn(*self.sums(now, m)) for w, m in BURN_WINDOWS.items()}
        good, total = self.sums(now, slo.window_minutes)
        window_burn = burn(good, total)
        remaining = 1.0 - window_burn
        window_s = slo.window_minutes * 60.0
        tte: float | None
        if remaining <= 0:
            tte = 0.0
        elif rates["1h"] > 0:
            tte = remaining * window_s / rates["1h"]
        else:
            tte = None
        ts_ms = (now + 1) * MINUTE_MS
        history = 0 if self.first is None else max(0, min(now - self.first + 1, self.size))
        return SloStatus(
            slo=slo.name,
            service=slo.service,
            ts_ms=ts_ms,
            objective=slo.objective,
            window_minutes=slo.window_minutes,
            history_minutes=history,
            good=good,
            total=total,
            sli=good / total if total > 0 else 1.0,
            error_budget_remaining=remaining,
            burn_rate_window=window_burn,
            burn_rates=rates,
            time_to_exhaustion_s=tte,
            exhaustion_at_ms=None if tte is None else ts_ms + round(tte * 1000),
        )

    def to_bytes(self) -> bytes:
        """Compact snapshot: only the minutes since the first event, chronologically, as
        uint32 when every count is a whole number below 2**32, split into byte planes
        (the high bytes of counts are mostly zero) and compressed."""
        if self.head is None or self.first is None:
            return _HEADER.pack(_MAGIC, 1, _FLOAT64, self.size, 0, 0, 0)
        n = min(self.head - self.first + 1, self.size)
        start = self.head - n + 1
        spans = _slices(start, self.head, self.size)
        values = np.concatenate([arr[a:b] for arr in (self.good, self.total) for a, b in spans])
        whole = bool(np.all((values >= 0) & (values < 2**32) & (values == np.floor(values))))
        dtype = _UINT32 if whole else _FLOAT64
        packed = values.astype("<u4" if whole else "<f8")
        planes = packed.view(np.uint8).reshape(-1, packed.itemsize).T.tobytes()
        header = _HEADER.pack(_MAGIC, 1, dtype, self.size, self.head, self.first, n)
        return header + compress(planes)

    @classmethod
    def from_bytes(cls, data: bytes) -> SloState:
        magic, version, dtype, size, head, first, n = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != 1:
            raise ValueError(f"not an SLO state snapshot (magic {magic!r}, version {version})")
        state = cls(size)  # a ring of `size` minutes, whatever window it was made for
        if n:
            packed = np.dtype("<u4" if dtype == _UINT32 else "<f8")
            planes = np.frombuffer(decompress(data[_HEADER.size :]), dtype=np.uint8)
            values = planes.reshape(packed.itemsize, -1).T.copy().view(packed).ravel()
            start = head - n + 1
            offset = 0
            for a, b in _slices(start, head, size):
                state.good[a:b] = values[offset : offset + b - a]
                state.total[a:b] = values[n + offset : n + offset + b - a]
                offset += b - a
            state.head, state.first = head, first
        return state


def _slices(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """Ring index slices covering minutes lo..hi inclusive (empty if hi < lo)."""
    if hi < lo:
        return []
    a, b = lo % size, hi % size + 1
    return [(a, b)] if a < b else [(a, size), (0, b)]


# --- burn-rate alert conditions ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BurnRule:
    alertname: str
    severity: Literal["page", "ticket"]
    factor: float
    long_window: str
    short_window: str


# SRE workbook, "Multiwindow, Multi-Burn-Rate Alerts": for a 30 d window these spend 2 %
# (1 h), 5 % (6 h), 10 % (1 d) and 10 % (3 d) of the budget before they fire.
BURN_RULES: tuple[BurnRule, ...] = (
    BurnRule("SLOBurnRatePageFast", "page", 14.4, "1h", "5m"),
    BurnRule("SLOBurnRatePageSlow", "page", 6.0, "6h", "30m"),
    BurnRule("SLOBurnRateTicketFast", "ticket", 3.0, "1d", "2h"),
    BurnRule("SLOBurnRateTicketSlow", "ticket", 1.0, "3d", "6h"),
)


@dataclass(frozen=True, slots=True)
class BurnAlert:
    slo: str
    service: str
    alertname: str
    severity: Literal["page", "ticket"]
    factor: float
    long_window: str
    short_window: str
    long_burn_rate: float
    short_burn_rate: float
    error_budget_remaining: float
    ts_ms: int
    active: bool

    @property
    def labels(self) -> dict[str, str]:
        return {
            "alertname": self.alertname,
            "service": self.service,
            "slo": self.slo,
            "severity": self.severity,
        }

    @property
    def annotations(self) -> dict[str, str]:
        return {
            "summary": (
                f"SLO {self.slo} is burning its error budget {self.long_burn_rate:.1f}x over "
                f"{self.long_window} ({self.short_burn_rate:.1f}x over {self.short_window}); "
                f"threshold {self.factor:g}x"
            ),
            "error_budget_remaining": f"{self.error_budget_remaining:.4f}",
        }


def evaluate(status: SloStatus, rules: Sequence[BurnRule] = BURN_RULES) -> list[BurnAlert]:
    """One BurnAlert per rule; `active` when both its windows burn faster than the factor."""
    rates = status.burn_rates
    return [
        BurnAlert(
            slo=status.slo,
            service=status.service,
            alertname=rule.alertname,
            severity=rule.severity,
            factor=rule.factor,
            long_window=rule.long_window,
            short_window=rule.short_window,
            long_burn_rate=rates[rule.long_window],
            short_burn_rate=rates[rule.short_window],
            error_budget_remaining=status.error_budget_remaining,
            ts_ms=status.ts_ms,
            active=rates[rule.long_window] > rule.factor and rates[rule.short_window] > rule.factor,
        )
        for rule in rules
    ]
