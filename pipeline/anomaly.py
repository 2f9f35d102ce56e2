"""Detection over closed windows: detector scores become anomaly events and alert conditions.

`DetectState` is one partition's detection state (PRODUCT.md §5 Detection): a `Detector`
per (series, field) of interest, the threshold and deadman `RuleSet`, recent change events
and anomalies per service for context, and the window group being received. The stage
(`agents/detect.py`) feeds it decoded records and writes what it returns.

**Windows arrive one record per series**, all series of one (width, start) window together
(the aggregate stage emits a closed window as one run). Rules and derived series need the
whole window, so records are grouped: a group is judged when a record of another window
arrives, or when the stage sees its partition go quiet (`close_group`). A group whose start
is not after the last judged one of its width is a replayed duplicate and is dropped.

**Series of interest** (`SERIES_FIELDS`): OBSERVATION → p99 and p50, COUNTER → rate,
GAUGE → mean, on windows of the detection width, each field with its own detector. The
median is there because a p99 of the few observations a quiet service makes in a window is
too noisy to show a regression that doubles every latency (it shows in the median at once);
a series whose fields break out together still makes one anomaly per window, of the first
field in that order. Plus one derived series per service and counter name
ending in `_total` whose series carry a `code` or `status` label: the error ratio, sum of
the rate of series whose code starts with 5 over the sum of all of them, named
`<name>:error_ratio` (field `ratio`). A window with no traffic has no ratio.

**Event time.** A window is judged at `start + width + grace`, the stream time at which the
aggregate stage closed it; that is the anomaly's `detected_at_ms` and the rules' `now_ms`.
Context is limited to change events at or before it, so a replay gives the same records
unless a change event itself arrived later than the windows after it.

**Ids.** `anomaly_id` hashes (series, field, width, window start): a replayed window maps to
the same row and record.

**Snapshot.** Detector state is about 10 KB a series, so each detector's compressed state
is cached as a ready-made frame and re-serialised only when it learned something since the
last snapshot; a snapshot is a small JSON header plus the concatenated frames. Restored
frames are decoded lazily, when their series next shows up.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from pipeline.aggregate import ClosedWindow
from pipeline.compress import compress, decompress
from pipeline.detect import Detector, DetectorConfig, OutOfOrder, Score, classify, severity
from pipeline.rules import RuleSet

SERIES_FIELDS: dict[str, tuple[str, ...]] = {
    "OBSERVATION": ("p99", "p50"), "COUNTER": ("rate",), "GAUGE": ("mean",)}
"""The aggregate fields scored for each metric kind, the one reported first."""
ERROR_LABELS = ("code", "status")
ERROR_RATIO_SUFFIX = ":error_ratio"
CONTEXT_KINDS = frozenset({"DEPLOYMENT", "CONFIG_CHANGE", "SCALING"})
CHANGE_HORIZON_MS = 86_400_000  # changes this recent are an anomaly's recent_deployments
MAX_CHANGES = 20  # per service, newest kept
CORRELATION_MS = 600_000  # anomalies of a service this close in time are correlated
FORGET_EVERY_MS = 3_600_000  # how often idle detectors are swept, at most
ALERT_NAMES = {"LATENCY_SPIKE": "LatencySpike", "THROUGHPUT_DROP": "ThroughputDrop",
               "ERROR_RATE_INCREASE": "ErrorRateIncrease", "SATURATION": "Saturation",
               "OTHER": "AnomalousMetric"}

Catalog = Callable[[str], Mapping[str, Any] | None]
"""Service → its ServiceInfo (tier, runbook_url, ...), or None when not in the catalog."""

_MAGIC = b"VDS1"  # bump when the snapshot layout changes; old snapshots are then refused
_U32 = struct.Struct("<I")
_FRAME = struct.Struct("<HqI")  # key length, last window start (ms), state length
_WINDOW_FIELDS = tuple(f.name for f in fields(ClosedWindow))


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """Detection settings of a stage (from `pipeline.settings.Settings`)."""

    width_s: int = 10
    sensitivity: float = 0.5
    season_s: float | None = 86_400.0
    grace_ms: int = 5_000
    keep_firing_for_ms: int = 300_000
    forget_ms: int = 172_800_000  # a detector whose series is silent this long is dropped

    def detector(self) -> DetectorConfig:
        return DetectorConfig(width_s=self.width_s, sensitivity=self.sensitivity,
                              season_s=self.season_s or None)


@dataclass(frozen=True, slots=True)
class Point:
    """One value of a series of interest in one window."""

    series_id: str
    name: str
    service: str
    labels: dict[str, str]
    field: str
    value: float


@dataclass
class Detected:
    """Output of judging windows: PerformanceAnomalyDetectedEvent records with their
    `anomalies` rows, and AlertCondition records."""

    anomalies: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: Detected) -> None:
        self.anomalies.extend(other.anomalies)
        self.rows.extend(other.rows)
        self.conditions.extend(other.conditions)

    def __bool__(self) -> bool:
        return bool(self.anomalies or self.conditions)


def window_of(record: Mapping[str, Any]) -> ClosedWindow:
    """The rules' view of a WindowAggregate record."""
    return ClosedWindow(*(record[name] for name in _WINDOW_FIELDS))


def points(windows: Iterable[ClosedWindow]) -> list[Point]:
    """Series of interest in one window, then the derived error ratios (module docstring)."""
    out: list[Point] = []
    ratios: dict[tuple[str, str], list[float]] = {}  # (service, name) → [5xx rate, all rate]
    for w in windows:
        for wanted in SERIES_FIELDS.get(w.kind, ()):
            value = getattr(w, wanted)
            if value is not None and math.isfinite(value):
                out.append(Point(w.series_id, w.name, w.service, w.labels, wanted, value))
        if w.kind == "COUNTER" and w.rate is not None and w.name.endswith("_total"):
            code = next((w.labels[k] for k in ERROR_LABELS if k in w.labels), None)
            if code is not None:
                sums = ratios.setdefault((w.service, w.name), [0.0, 0.0])
                sums[0] += w.rate if code.startswith("5") else 0.0
                sums[1] += w.rate
    for (service, name), (errors, total) in ratios.items():
        if total > 0 and math.isfinite(total):
            derived = name + ERROR_RATIO_SUFFIX
            out.append(Point(f'{derived}{{service="{service}"}}', derived, service,
                             {"service": service}, "ratio", errors / total))
    return out


def anomaly_id(series_id: str, field: str, width_s: int, window_start_ms: int) -> str:
    digest = hashlib.sha256(f"{series_id}\n{field}\n{width_s}\n{window_start_ms}".encode())
    return f"anm-{digest.hexdigest()[:24]}"


def anomaly_record(point: Point, score: Score, *, width_s: int, window_start_ms: int,
                   detected_at_ms: int, tier: str | None,
                   recent_deployments: Sequence[Mapping[str, Any]] = (),
                   correlated: Sequence[str] = ()) -> dict[str, Any]:
    """A PerformanceAnomalyDetectedEvent. `anomaly_score` is the unsquashed novelty (range
    widths outside what the series has seen); `confidence_score` is the detector score."""
    return {
        "anomaly_id": anomaly_id(point.series_id, point.field, width_s, window_start_ms),
        "detected_at_ms": detected_at_ms,
        "type": classify(point.name, point.field, score.direction),
        "severity": severity(score.score, tier),
        "affected_service": point.service,
        "metric_name": point.name,
        "series_id": point.series_id,
        "labels": dict(point.labels),
        "current_value": score.value,
        "expected_value": score.expected_value,
        "deviation_percentage": score.deviation_percentage,
        "confidence_score": score.score,
        "anomaly_score": score.score / (1.0 - score.score),
        "window_start_ms": window_start_ms,
        "width_s": width_s,
        "recent_deployments": [dict(c) for c in recent_deployments],
        "correlated_anomalies": list(correlated),
    }


def anomaly_row(record: Mapping[str, Any], field: str, feature: str) -> dict[str, Any]:
    """The `anomalies` table row of an anomaly record (`labels` and `context` are dicts for
    the caller to wrap as JSON)."""
    return {
        "detected_at": _utc(record["detected_at_ms"]), "anomaly_id": record["anomaly_id"],
        "service": record["affected_service"], "metric_name": record["metric_name"],
        "series_id": record["series_id"], "labels": record["labels"],
        "window_start": _utc(record["window_start_ms"]), "width_s": record["width_s"],
        "type": record["type"], "severity": record["severity"],
        "current_value": record["current_value"], "expected_value": record["expected_value"],
        "deviation_percentage": record["deviation_percentage"],
        "confidence_score": record["confidence_score"], "anomaly_score": record["anomaly_score"],
        "detector": f"range_novelty:{feature}",
        "context": {"recent_deployments": record["recent_deployments"],
                    "correlated_anomalies": record["correlated_anomalies"], "field": field,
                    "feature": feature},
    }


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def anomaly_condition(record: Mapping[str, Any], field: str, *, runbook_url: str | None,
                      keep_firing_for_ms: int) -> dict[str, Any]:
    """The AlertCondition pulse of an anomaly: firing now, resolved after
    `keep_firing_for_ms` without another anomaly of the same labels."""
    service, metric = record["affected_service"], record["metric_name"]
    current, expected = record["current_value"], record["expected_value"]
    annotations = {
        "summary": (f"{metric} {field} of {service} is {current:.4g}, expected "
                    f"{expected:.4g} ({record['deviation_percentage']:+.0f}%)"),
        "anomaly_id": record["anomaly_id"],
        "series_id": record["series_id"],
    }
    if record["recent_deployments"]:
        last = record["recent_deployments"][0]
        annotations["recent_change"] = f"{last['kind']}: {last['description']}"
    if runbook_url:
        annotations["runbook_url"] = runbook_url
    return {
        "labels": {"alertname": ALERT_NAMES[record["type"]], "service": service,
                   "severity": record["severity"], "metric": metric, "field": field},
        "annotations": annotations,
        "source": "anomaly",
        "active": True,
        "pulse": True,
        "ts_ms": record["detected_at_ms"],
        "for_ms": 0,
        "keep_firing_for_ms": keep_firing_for_ms,
    }


class DetectState:
    """One partition's detectors, rules, context and window group (module docstring)."""

    def __init__(self, config: DetectConfig, rules: RuleSet) -> None:
        self.config = config
        self.rules = rules
        self._detector_config = config.detector()
        self._width_ms = config.width_s * 1000
        self.stream_ms = 0
        self._last_start: dict[int, int] = {}  # width → start of the last window judged
        self._group: dict[str, dict[str, Any]] = {}  # series id → record, one window
        self._group_key: tuple[int, int] | None = None
        self._changes: dict[str, list[dict[str, Any]]] = {}  # service → newest first
        self._recent: dict[str, list[tuple[int, str]]] = {}  # service → (detected_at, id)
        self._detectors: dict[str, Detector] = {}  # decoded, by key "field:series_id"
        self._frames: dict[str, bytes] = {}  # snapshot frame per key, current unless dirty
        self._last_ms: dict[str, int] = {}  # window start a key last scored
        self._dirty: set[str] = set()
        self._swept_ms = 0
        self.duplicates = 0  # window records dropped as replays

    # -- input ---------------------------------------------------------------------------

    def add_window(self, record: Mapping[str, Any], catalog: Catalog) -> Detected | None:
        """Take one WindowAggregate record; returns the judgement of the previous window when
        this record starts another."""
        key = (record["width_s"], record["window_start_ms"])
        if key[1] <= self._last_start.get(key[0], -1):
            self.duplicates += 1
            return None
        out = None
        if key != self._group_key:
            out = self.close_group(catalog)
            self._group_key = key
        self._group[record["series_id"]] = dict(record)
        return out

    def add_change(self, change: Mapping[str, Any]) -> None:
        """Remember a ChangeEvent that gives anomalies context."""
        if change["kind"] not in CONTEXT_KINDS:
            return
        kept = self._changes.setdefault(change["service"], [])
        entry = {"ts_ms": change["ts_ms"], "kind": change["kind"],
                 "description": change["description"]}
        if entry in kept:
            return
        kept.append(entry)
        kept.sort(key=lambda c: -c["ts_ms"])
        del kept[MAX_CHANGES:]

    @property
    def has_group(self) -> bool:
        return bool(self._group)

    def close_group(self, catalog: Catalog) -> Detected:
        """Judge the window being received, if any: rules, then detectors."""
        out = Detected()
        if self._group_key is None:
            return out
        (width_s, start_ms), records = self._group_key, list(self._group.values())
        self._group_key, self._group = None, {}
        self._last_start[width_s] = start_ms
        closed_at = start_ms + width_s * 1000 + self.config.grace_ms
        self.stream_ms = max(self.stream_ms, closed_at)
        windows = [window_of(r) for r in records]
        conditions = self.rules.evaluate(windows, closed_at)
        conditions.extend(self.rules.tick(self.stream_ms))
        out.conditions.extend(c.to_record() for c in conditions)
        if width_s == self.config.width_s:
            out.extend(self._detect(points(windows), start_ms, closed_at, catalog))
        self._forget()
        return out

    # -- detection -----------------------------------------------------------------------

    def _detect(self, found: list[Point], start_ms: int, closed_at: int,
                catalog: Catalog) -> Detected:
        scored: list[tuple[Point, Score]] = []
        for point in found:
            key = f"{point.field}:{point.series_id}"
            detector = self._detector(key)
            try:
                score = detector.update(start_ms, point.value)
            except OutOfOrder:
                continue
            self._dirty.add(key)
            self._last_ms[key] = start_ms
            if score.is_anomaly and (not scored or scored[-1][0].series_id != point.series_id):
                scored.append((point, score))  # a series' fields come together, in order
        out = Detected()
        if not scored:
            return out
        ids = [anomaly_id(p.series_id, p.field, self.config.width_s, start_ms) for p, _ in scored]
        for (point, score), own in zip(scored, ids, strict=True):
            info = catalog(point.service)
            earlier = [i for t, i in self._recent.get(point.service, ())
                       if t >= closed_at - CORRELATION_MS]
            now = [i for (p, _), i in zip(scored, ids, strict=True)
                   if p.service == point.service and i != own]
            record = anomaly_record(
                point, score, width_s=self.config.width_s, window_start_ms=start_ms,
                detected_at_ms=closed_at, tier=info.get("tier") if info else None,
                recent_deployments=self._context(point.service, closed_at),
                correlated=earlier + now)
            out.anomalies.append(record)
            out.rows.append(anomaly_row(record, point.field, score.feature))
            out.conditions.append(anomaly_condition(
                record, point.field, runbook_url=info.get("runbook_url") if info else None,
                keep_firing_for_ms=self.config.keep_firing_for_ms))
        for (point, _), own in zip(scored, ids, strict=True):
            recent = self._recent.setdefault(point.service, [])
            recent.append((closed_at, own))
            recent[:] = [(t, i) for t, i in recent if t >= closed_at - CORRELATION_MS]
        return out

    def _context(self, service: str, at_ms: int) -> list[dict[str, Any]]:
        return [c for c in self._changes.get(service, ())
                if at_ms - CHANGE_HORIZON_MS <= c["ts_ms"] <= at_ms]

    def _detector(self, key: str) -> Detector:
        detector = self._detectors.get(key)
        if detector is None:
            frame = self._frames.get(key)
            if frame is None:
                detector = Detector(self._detector_config)
            else:
                size, _, _ = _FRAME.unpack_from(frame)
                detector = Detector.from_bytes(decompress(frame[_FRAME.size + size:]))
            self._detectors[key] = detector
        return detector

    def _forget(self) -> None:
        """Drop detectors, context and correlation of series and services gone quiet."""
        # A quarter of the idle time, so a detector outlives its series by at most 25 %.
        if self.stream_ms - self._swept_ms < min(FORGET_EVERY_MS, self.config.forget_ms // 4):
            return
        self._swept_ms = self.stream_ms
        horizon = self.stream_ms - self.config.forget_ms
        for key in [k for k, t in self._last_ms.items() if t < horizon]:
            for held in (self._detectors, self._frames, self._last_ms):
                held.pop(key, None)
            self._dirty.discard(key)
        for service, kept in list(self._changes.items()):
            kept[:] = [c for c in kept if c["ts_ms"] >= self.stream_ms - CHANGE_HORIZON_MS]
            if not kept:
                del self._changes[service]
        for service, recent in list(self._recent.items()):
            if recent[-1][0] < self.stream_ms - CORRELATION_MS:
                del self._recent[service]

    @property
    def detector_count(self) -> int:
        return len(self._last_ms)

    # -- persistence ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Header JSON, then one frame per detector; only dirty detectors are serialised
        (in key order: the same state gives the same bytes in every process)."""
        for key in sorted(self._dirty):
            state = compress(self._detectors[key].to_bytes())
            encoded = key.encode()
            self._frames[key] = (_FRAME.pack(len(encoded), self._last_ms[key], len(state))
                                 + encoded + state)
        self._dirty.clear()
        header = json.dumps({
            "stream_ms": self.stream_ms, "swept_ms": self._swept_ms,
            "last_start": list(self._last_start.items()),
            "group": list(self._group.values()), "group_key": self._group_key,
            "changes": self._changes, "recent": self._recent,
            "rules": self.rules.to_dict(), "duplicates": self.duplicates,
        }, separators=(",", ":")).encode()
        return b"".join((_MAGIC, _U32.pack(len(header)), header, *self._frames.values()))

    @classmethod
    def restore(cls, blob: bytes, config: DetectConfig, rules: RuleSet) -> DetectState:
        if blob[:len(_MAGIC)] != _MAGIC:
            raise ValueError(f"DetectState.restore: snapshot format {blob[:len(_MAGIC)]!r} is "
                             f"not {_MAGIC!r}")
        view = memoryview(blob)
        (size,) = _U32.unpack_from(blob, len(_MAGIC))
        at = len(_MAGIC) + _U32.size
        header = json.loads(bytes(view[at:at + size]))
        at += size
        state = cls(config, rules.from_dict(header["rules"]))
        state.stream_ms, state._swept_ms = header["stream_ms"], header["swept_ms"]
        state._last_start = {int(w): s for w, s in header["last_start"]}
        state._group = {r["series_id"]: r for r in header["group"]}
        state._group_key = tuple(header["group_key"]) if header["group_key"] else None
        state._changes = header["changes"]
        state._recent = {s: [(t, i) for t, i in r] for s, r in header["recent"].items()}
        state.duplicates = header["duplicates"]
        while at < len(blob):
            key_size, last_ms, state_size = _FRAME.unpack_from(blob, at)
            end = at + _FRAME.size + key_size + state_size
            key = bytes(view[at + _FRAME.size:at + _FRAME.size + key_size]).decode()
            state._frames[key] = bytes(view[at:end])
            state._last_ms[key] = last_ms
            at = end
        return state
