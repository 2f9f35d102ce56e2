"""Detection state: series of interest, anomaly records and conditions, context, snapshots."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipeline.anomaly
from pipeline.aggregate import ClosedWindow
from pipeline.anomaly import (
    DetectConfig,
    Detected,
    DetectState,
    anomaly_id,
    points,
    window_of,
)
from pipeline.codec import decode, encode
from pipeline.detect import Detector
from pipeline.envelope import unwrap, wrap
from pipeline.rules import RuleSet, ThresholdRule
from pipeline.selector import parse_selector

W = 10_000
GRACE = 5_000
T0 = 1_767_225_600_000
CONFIG = DetectConfig(width_s=10, season_s=None, grace_ms=GRACE)
CATALOG = {"checkout": {"tier": "CRITICAL", "runbook_url": "https://runbooks/checkout"}}
WARMUP = 150  # windows; the detector needs 120 before it may alert


def record(name: str, service: str, start_ms: int, kind: str = "OBSERVATION",
           width_s: int = 10, labels: dict[str, str] | None = None,
           **values: float) -> dict[str, Any]:
    every = {"service": service, **(labels or {})}
    series_id = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(every.items())) + "}"
    row: dict[str, Any] = {
        "series_id": series_id, "name": name, "service": service, "labels": every,
        "kind": kind, "width_s": width_s, "window_start_ms": start_ms,
        "window_end_ms": start_ms + width_s * 1000, "team": None, "tier": None,
        "environment": None, "count": 10, "sum": 1.0, "min": 0.0, "max": 1.0, "mean": 0.1,
        "last": 0.1, "increase": None, "rate": None, "p50": None, "p90": None, "p95": None,
        "p99": None}
    row.update(values)
    return row


def latency(service: str, start_ms: int, p99: float) -> dict[str, Any]:
    return record("http_request_duration_seconds", service, start_ms, p99=p99, p50=p99 / 3,
                  p90=p99 / 2, p95=p99 / 1.5)


def requests(service: str, start_ms: int, code: str, rate: float) -> dict[str, Any]:
    return record("http_requests_total", service, start_ms, "COUNTER", labels={"code": code},
                  increase=rate * 10, rate=rate)


def run(state: DetectState, windows: list[list[dict[str, Any]]]) -> Detected:
    """Feed windows (each a list of records) in order and judge the last one too."""
    out = Detected()
    for window in windows:
        for rec in window:
            judged = state.add_window(rec, CATALOG.get)
            if judged:
                out.extend(judged)
    out.extend(state.close_group(CATALOG.get))
    return out


def normal(seed: int, n: int, start: int = 0) -> list[list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    return [[latency("checkout", T0 + i * W, float(rng.uniform(0.20, 0.24))),
             latency("orders", T0 + i * W, float(rng.uniform(0.05, 0.06)))]
            for i in range(start, start + n)]


def fresh(rules: RuleSet | None = None) -> DetectState:
    return DetectState(CONFIG, rules or RuleSet([]))


def test_docstrings_run() -> None:
    assert doctest.testmod(pipeline.anomaly).failed == 0


def test_series_of_interest_and_error_ratios() -> None:
    windows = [window_of(r) for r in (
        latency("checkout", T0, 0.3),
        record("cpu_utilization", "checkout", T0, "GAUGE", mean=0.4),
        requests("checkout", T0, "200", 90.0),
        requests("checkout", T0, "503", 10.0),
        requests("idle", T0, "200", 0.0),
        record("jobs_total", "checkout", T0, "COUNTER", increase=5.0, rate=0.5),
    )]
    found = {(p.series_id, p.field): p.value for p in points(windows)}
    assert found == {
        ('http_request_duration_seconds{service="checkout"}', "p99"): 0.3,
        ('http_request_duration_seconds{service="checkout"}', "p50"): pytest.approx(0.1),
        ('cpu_utilization{service="checkout"}', "mean"): 0.4,
        ('http_requests_total{code="200",service="checkout"}', "rate"): 90.0,
        ('http_requests_total{code="503",service="checkout"}', "rate"): 10.0,
        ('http_requests_total{code="200",service="idle"}', "rate"): 0.0,
        ('jobs_total{service="checkout"}', "rate"): 0.5,
        ('http_requests_total:error_ratio{service="checkout"}', "ratio"): pytest.approx(0.1),
    }  # no traffic means no error ratio for "idle"; jobs_total has no code label


@given(st.text(), st.sampled_from(["p99", "rate"]), st.sampled_from([10, 60]),
       st.integers(0, 2**53))
def test_anomaly_ids_are_deterministic_and_name_the_window(series: str, field: str,
                                                           width: int, start: int) -> None:
    first = anomaly_id(series, field, width, start)
    assert first == anomaly_id(series, field, width, start)
    assert first != anomaly_id(series, field, width, start + width * 1000)
    assert first != anomaly_id(series + "x", field, width, start)


def test_no_anomaly_in_warmup_then_a_spike_with_its_deployment() -> None:
    state = fresh()
    warm = run(state, normal(1, WARMUP))
    assert warm.anomalies == [] and warm.conditions == []
    spike_start = T0 + WARMUP * W
    state.add_change({"ts_ms": spike_start - 2_000, "service": "checkout",
                      "kind": "DEPLOYMENT", "description": "checkout v2.3.1", "attributes": {}})
    state.add_change({"ts_ms": spike_start - 1_000, "service": "checkout",
                      "kind": "MAINTENANCE_START", "description": "not context",
                      "attributes": {}})
    state.add_change({"ts_ms": spike_start + 60_000, "service": "checkout",
                      "kind": "CONFIG_CHANGE", "description": "after the anomaly",
                      "attributes": {}})
    out = run(state, [[latency("checkout", spike_start, 2.0),
                       latency("orders", spike_start, 0.055)]])
    assert len(out.anomalies) == 1
    anomaly = out.anomalies[0]
    assert decode("PerformanceAnomalyDetectedEvent",
                  encode("PerformanceAnomalyDetectedEvent", anomaly)) == anomaly
    assert anomaly["type"] == "LATENCY_SPIKE"
    assert anomaly["affected_service"] == "checkout"
    assert anomaly["metric_name"] == "http_request_duration_seconds"
    assert anomaly["detected_at_ms"] == spike_start + W + GRACE
    assert anomaly["anomaly_id"] == anomaly_id(anomaly["series_id"], "p99", 10, spike_start)
    assert anomaly["current_value"] == 2.0
    assert 0.2 <= anomaly["expected_value"] <= 0.24
    assert anomaly["deviation_percentage"] > 700
    assert anomaly["recent_deployments"] == [
        {"ts_ms": spike_start - 2_000, "kind": "DEPLOYMENT", "description": "checkout v2.3.1"}]
    assert anomaly["severity"] == "critical"  # a CRITICAL-tier service, a score near 1
    row = out.rows[0]
    assert row["anomaly_id"] == anomaly["anomaly_id"] and row["type"] == "LATENCY_SPIKE"
    assert row["context"]["recent_deployments"] == anomaly["recent_deployments"]
    (condition,) = out.conditions
    assert unwrap(wrap("AlertCondition", condition)) == ("AlertCondition", condition)
    assert condition["labels"] == {"alertname": "LatencySpike", "service": "checkout",
                                   "severity": "critical",
                                   "metric": "http_request_duration_seconds", "field": "p99"}
    assert condition["pulse"] and condition["active"] and condition["source"] == "anomaly"
    assert condition["annotations"]["runbook_url"] == "https://runbooks/checkout"
    assert "2" in condition["annotations"]["summary"]
    assert condition["annotations"]["recent_change"] == "DEPLOYMENT: checkout v2.3.1"


def test_error_ratio_increase_and_correlated_anomalies() -> None:
    rng = np.random.default_rng(3)
    windows = []
    for i in range(WARMUP + 1):
        start = T0 + i * W
        errors = 40.0 if i == WARMUP else float(rng.uniform(0.5, 1.0))
        p99 = 3.0 if i == WARMUP else float(rng.uniform(0.2, 0.24))
        windows.append([requests("checkout", start, "200", float(rng.uniform(95, 105))),
                        requests("checkout", start, "500", errors),
                        latency("checkout", start, p99)])
    out = run(fresh(), windows)
    by_type = {a["type"]: a for a in out.anomalies}
    assert "ERROR_RATE_INCREASE" in by_type and "LATENCY_SPIKE" in by_type
    ratio = by_type["ERROR_RATE_INCREASE"]
    assert ratio["metric_name"] == "http_requests_total:error_ratio"
    assert ratio["series_id"] == 'http_requests_total:error_ratio{service="checkout"}'
    others = {a["anomaly_id"] for a in out.anomalies} - {ratio["anomaly_id"]}
    assert set(ratio["correlated_anomalies"]) == others
    assert {c["labels"]["alertname"] for c in out.conditions} >= {"ErrorRateIncrease",
                                                                  "LatencySpike"}


def test_a_median_regression_is_an_anomaly_of_p50_and_fields_breaking_together_one() -> None:
    rng = np.random.default_rng(4)
    windows = [[record("http_request_duration_seconds", "checkout", T0 + i * W,
                       p99=float(rng.uniform(0.2, 0.6)), p50=float(rng.uniform(0.08, 0.1)))]
               for i in range(WARMUP)]
    # The median doubles; the p99 stays inside its (noisy) range.
    windows.append([record("http_request_duration_seconds", "checkout", T0 + WARMUP * W,
                           p99=0.5, p50=0.2)])
    # Later both break out at once: one anomaly, reported on the p99.
    windows += [[record("http_request_duration_seconds", "checkout", T0 + i * W,
                        p99=float(rng.uniform(0.2, 0.6)), p50=float(rng.uniform(0.08, 0.1)))]
                for i in range(WARMUP + 1, WARMUP + 60)]
    windows.append([record("http_request_duration_seconds", "checkout",
                           T0 + (WARMUP + 60) * W, p99=5.0, p50=2.0)])
    out = run(fresh(), windows)
    assert [(a["window_start_ms"], a["type"]) for a in out.anomalies] == [
        (T0 + WARMUP * W, "LATENCY_SPIKE"), (T0 + (WARMUP + 60) * W, "LATENCY_SPIKE")]
    assert [c["labels"]["field"] for c in out.conditions] == ["p50", "p99"]
    assert [r["context"]["field"] for r in out.rows] == ["p50", "p99"]


def test_rules_are_judged_per_window_and_their_conditions_are_alert_conditions() -> None:
    rules = RuleSet([ThresholdRule(kind="ThresholdRule", name="Slow",
                                   selector=parse_selector("http_request_duration_seconds"),
                                   field="p99", op=">", value=0.5)])
    state = fresh(rules)
    out = run(state, [[latency("checkout", T0, 0.9), latency("orders", T0, 0.1)],
                      [latency("checkout", T0 + W, 0.1), latency("orders", T0 + W, 0.1)]])
    assert [(c["labels"]["service"], c["active"], c["ts_ms"]) for c in out.conditions] == [
        ("checkout", True, T0 + W + GRACE), ("checkout", False, T0 + 2 * W + GRACE)]
    for condition in out.conditions:
        assert condition["source"] == "rule" and not condition["pulse"]
        assert unwrap(wrap("AlertCondition", condition))[1] == condition


def test_replayed_windows_are_dropped() -> None:
    state = fresh()
    windows = normal(5, 3)
    run(state, windows)
    assert not run(state, windows[1:])
    assert state.duplicates == 4


def test_snapshot_restore_continues_identically_and_reuses_untouched_frames(
        monkeypatch: pytest.MonkeyPatch) -> None:
    windows = normal(7, WARMUP) + [[latency("checkout", T0 + WARMUP * W, 5.0)]]
    straight = run(fresh(), windows)
    assert len(straight.anomalies) == 1

    state = fresh()
    first = run(state, windows[:100])
    state.add_change({"ts_ms": T0, "service": "checkout", "kind": "SCALING",
                      "description": "3 → 6 replicas", "attributes": {}})
    blob = state.snapshot()
    restored = DetectState.restore(blob, CONFIG, RuleSet([]))
    assert restored.snapshot() == blob
    rest = run(restored, windows[100:])
    assert first.anomalies == [] and len(rest.anomalies) == 1
    resumed = rest.anomalies[0]
    assert resumed == {**straight.anomalies[0], "recent_deployments": [
        {"ts_ms": T0, "kind": "SCALING", "description": "3 → 6 replicas"}]}

    restored.snapshot()
    calls = []
    to_bytes = Detector.to_bytes

    def counted(self: Detector) -> bytes:
        calls.append(1)
        return to_bytes(self)

    monkeypatch.setattr(Detector, "to_bytes", counted)
    run(restored, [[latency("checkout", T0 + (WARMUP + 1) * W, 0.2)]])
    after = restored.snapshot()
    assert calls == [1, 1]  # only checkout's detectors (p99, p50) learned since the last one
    assert restored.snapshot() == after and calls == [1, 1]


def test_snapshot_keeps_the_window_being_received() -> None:
    state = fresh()
    state.add_window(latency("checkout", T0, 0.2), CATALOG.get)
    restored = DetectState.restore(state.snapshot(), CONFIG, RuleSet([]))
    assert restored.has_group
    assert restored.add_window(latency("checkout", T0 + W, 0.2), CATALOG.get) is not None
    assert restored.detector_count == 2  # p99 and p50


def test_a_foreign_snapshot_is_refused() -> None:
    with pytest.raises(ValueError, match="snapshot format"):
        DetectState.restore(b"XXXX", CONFIG, RuleSet([]))


def test_windows_of_another_width_feed_rules_only() -> None:
    state = fresh()
    run(state, [[record("http_request_duration_seconds", "checkout", T0, width_s=60, p99=1.0)]])
    assert state.detector_count == 0
    assert isinstance(window_of(latency("checkout", T0, 0.1)), ClosedWindow)


def test_detectors_of_series_gone_quiet_are_dropped_within_a_quarter_of_the_idle_time() -> None:
    """Series churn: cohorts of services replace each other; detectors never outnumber the
    cohorts seen within forget_ms (+25 % between sweeps)."""
    forget_ms = 120_000
    state = DetectState(DetectConfig(width_s=10, season_s=None, grace_ms=GRACE,
                                     forget_ms=forget_ms), RuleSet([]))
    per_cohort, windows = 2, 6  # p99 and p50 per series; each cohort reports for a minute
    most = 0
    for cohort in range(30):
        for i in range(windows):
            start = T0 + (cohort * windows + i) * W
            run(state, [[latency(f"svc-{cohort}", start, 0.2)]])
            most = max(most, state.detector_count)
    lived = -(-(forget_ms * 5 // 4 + W) // (windows * W)) + 1  # cohorts within reach
    assert most <= lived * per_cohort
    assert state.detector_count >= per_cohort  # the cohort still reporting is kept
