"""SLO documents, rolling state, burn-rate arithmetic and alert conditions.

Counts are whole numbers, so window sums are exact; ratios are compared within 1e-9.
"""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.slo
from pipeline.configfile import ConfigError
from pipeline.selector import parse_selector
from pipeline.slo import (
    BURN_WINDOWS,
    MINUTE_MS,
    HealthSide,
    MetricSide,
    SliError,
    SliFeed,
    Slo,
    SloState,
    SloStatus,
    evaluate,
    le_bounds,
    le_key,
    load_slos,
)

DAY = 1440
EXAMPLE = """\
apiVersion: openslo/v1
kind: SLO
metadata: {name: checkout-availability, labels: {team: payments}}
spec:
  service: checkout
  budgetingMethod: Occurrences
  timeWindow: [{duration: 30d, isRolling: true}]
  objectives: [{target: 0.999}]
  indicator:
    spec:
      ratioMetric:
        counter: true
        good:  {metricSource: {type: vigil, spec: {query: 'http_requests_total{code!~"5.."}'}}}
        total: {metricSource: {type: vigil, spec: {query: 'http_requests_total'}}}
"""
LATENCY = """\
apiVersion: openslo/v1
kind: SLO
metadata:
  name: checkout-latency
spec:
  service: checkout
  budgetingMethod: Occurrences
  timeWindow:
    - duration: 7d
      isRolling: true
  objectives:
    - target: 0.99
  indicator:
    spec:
      ratioMetric:
        counter: true
        good:
          metricSource:
            type: vigil
            spec:
              query: http_request_duration_seconds
              le: 0.3
        total:
          metricSource:
            type: vigil
            spec: {query: http_request_duration_seconds}
"""
HEALTH = """\
apiVersion: openslo/v1
kind: SLO
metadata: {name: checkout-health}
spec:
  service: checkout
  budgetingMethod: Occurrences
  timeWindow: [{duration: 1d, isRolling: true}]
  objectives: [{target: 0.99}]
  indicator:
    spec:
      ratioMetric:
        counter: true
        good: {metricSource: {type: vigil-health, spec: {check: db}}}
        total: {metricSource: {type: vigil-health, spec: {check: db}}}
"""
REQUESTS = parse_selector("http_requests_total")
SLO = Slo("api", "api", 0.999, 30 * DAY, MetricSide(REQUESTS), MetricSide(REQUESTS))


def _run(state: SloState, start: int, minutes: int, total: int, bad: int) -> int:
    """`minutes` minutes of `total` events with `bad` failures each; returns the next minute."""
    for minute in range(start, start + minutes):
        assert state.add(minute * MINUTE_MS, float(total - bad), float(total))
    return start + minutes


def _status(state: SloState, next_minute: int, slo: Slo = SLO) -> SloStatus:
    return state.status(slo, (next_minute - 1) * MINUTE_MS)


def _active(status: SloStatus) -> list[str]:
    return [a.alertname for a in evaluate(status) if a.active]


def _config(tmp_path: Path, **files: str) -> Path:
    (tmp_path / "slos").mkdir()
    for name, text in files.items():
        (tmp_path / "slos" / name).write_text(text)
    return tmp_path


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_slos(_config(tmp_path, **{"checkout.yaml": text}))
    return [str(p) for p in info.value.problems]


def test_module_examples_run() -> None:
    assert doctest.testmod(pipeline.slo).failed == 0


# --- documents ---------------------------------------------------------------------------


def test_documents_load_into_definitions(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"a.yaml": EXAMPLE + "---\n" + LATENCY, "b.yml": HEALTH})
    loaded = load_slos(config)
    assert [(s.name, str(loc), loc.document) for s, loc in loaded] == [
        ("checkout-availability", "slos/a.yaml:1", 0),
        ("checkout-latency", "slos/a.yaml:16", 1),
        ("checkout-health", "slos/b.yml:1", 0),
    ]
    avail, latency, health = (s for s, _ in loaded)
    assert (avail.objective, avail.window_minutes) == (0.999, 30 * DAY)
    assert avail.labels == {"team": "payments"}
    assert isinstance(avail.good, MetricSide) and isinstance(avail.total, MetricSide)
    assert str(avail.good.selector) == 'http_requests_total{code!~"5..",service="checkout"}'
    assert str(avail.total.selector) == 'http_requests_total{service="checkout"}'
    assert isinstance(latency.good, MetricSide) and isinstance(latency.total, MetricSide)
    assert (latency.window_minutes, latency.good.le, latency.total.le) == (7 * DAY, 0.3, None)
    assert health.good == HealthSide("db", healthy_only=True)
    assert health.total == HealthSide("db", healthy_only=False)
    assert le_bounds(s for s, _ in loaded) == (0.3,)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "target: 0.999",
            "target: 1.5",
            "slos/checkout.yaml:8: spec.objectives[0].target: must be in (0, 1) (got 1.5)",
        ),
        (
            "target: 0.999",
            "target: 0",
            "slos/checkout.yaml:8: spec.objectives[0].target: must be in (0, 1) (got 0)",
        ),
        (
            "  budgetingMethod",
            "  budgetMethod",
            [
                "slos/checkout.yaml:4: spec.budgetingMethod: required field missing",
                "slos/checkout.yaml:6: spec.budgetMethod: unknown field; "
                "did you mean 'budgetingMethod'?",
            ],
        ),
        (
            "duration: 30d",
            "duration: 30 days",
            "slos/checkout.yaml:7: spec.timeWindow[0].duration: expected a duration such as 30d, "
            "28d, 7d or 1h (units m, h, d, w) (got '30 days')",
        ),
        (
            "duration: 30d",
            "duration: 5m",
            "slos/checkout.yaml:7: spec.timeWindow[0].duration: must be between 1h and 90d "
            "(got '5m')",
        ),
        (
            "isRolling: true",
            "isRolling: false",
            "slos/checkout.yaml:7: spec.timeWindow[0].isRolling: only rolling windows are "
            "supported (isRolling: true) (got False)",
        ),
        (
            'code!~"5.."',
            'code!~"5..(")',
            "slos/checkout.yaml:13: spec.indicator.spec.ratioMetric.good.metricSource.spec.query: "
            "invalid selector at column 27: bad regex for 'code': missing ), unterminated "
            "subpattern "
            """(got 'http_requests_total{code!~"5..(")}')""",
        ),
        (
            "{query: 'http_requests_total'}",
            "{query: 'http_requests_total{service=\"x\"}'}",
            "slos/checkout.yaml:14: spec.indicator.spec.ratioMetric.total.metricSource.spec.query: "
            "spec.service already selects the service; drop the service matcher "
            """(got 'http_requests_total{service="x"}')""",
        ),
        (
            "type: vigil, spec: {query: 'http_requests_total'}",
            "type: vigil, spec: {query: 'http_requests_total', le: 0.3}",
            "slos/checkout.yaml:11: spec.indicator.spec.ratioMetric: le belongs on good "
            "(observations <= le) not on total",
        ),
        (
            "type: vigil, spec: {query: 'http_requests_total'}",
            "type: vigil-health",
            "slos/checkout.yaml:11: spec.indicator.spec.ratioMetric: good and total must use the "
            "same metricSource type",
        ),
        (
            "apiVersion: openslo/v1",
            "apiVersion: openslo/v2",
            "slos/checkout.yaml:1: apiVersion: Input should be 'openslo/v1' (got 'openslo/v2')",
        ),
        ("kind: SLO", "kind: SLI", "slos/checkout.yaml:2: kind: expected 'SLO', got 'SLI'"),
        (
            "[{target: 0.999}]",
            "[{target: 0.999}, {target: 0.99}]",
            "slos/checkout.yaml:8: spec.objectives: exactly one objective is supported; "
            "write one SLO per objective",
        ),
    ],
)
def test_config_errors_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str | list[str]
) -> None:
    assert old in EXAMPLE
    problems = _errors(tmp_path, EXAMPLE.replace(old, new))
    assert problems == ([expected] if isinstance(expected, str) else expected)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    [problem] = _errors(tmp_path, EXAMPLE.replace("[{target: 0.999}]", "[{target: 0.999}"))
    assert problem.startswith("slos/checkout.yaml:9: invalid YAML: ")


def test_python_tag_rejected(tmp_path: Path) -> None:
    text = EXAMPLE.replace("{name: checkout-availability", "!!python/object/new:dict {name: x")
    assert _errors(tmp_path, text) == [
        "slos/checkout.yaml:3: tag '!!python/object/new:dict' not allowed "
        "(config is plain YAML, no object tags)"
    ]


def test_same_name_twice_across_files(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"a.yaml": EXAMPLE, "b.yaml": "# copy\n" + EXAMPLE})
    with pytest.raises(ConfigError) as info:
        load_slos(config)
    assert [str(p) for p in info.value.problems] == [
        "slos/b.yaml:4: metadata.name: SLO 'checkout-availability' is already defined at "
        "slos/a.yaml:1"
    ]


# --- burn rates and alerts ---------------------------------------------------------------


def test_steady_one_percent_burns_ten_everywhere() -> None:
    state = SloState(SLO.window_minutes)
    end = _run(state, 0, 30 * DAY, total=1000, bad=10)
    status = _status(state, end)
    for window in BURN_WINDOWS:
        assert status.burn_rates[window] == pytest.approx(10.0, abs=1e-9)
    assert status.burn_rate_window == pytest.approx(10.0, abs=1e-9)
    assert status.sli == pytest.approx(0.99, abs=1e-12)
    assert (status.good, status.total) == (30 * DAY * 990.0, 30 * DAY * 1000.0)
    assert status.error_budget_remaining == pytest.approx(-9.0, abs=1e-9)
    assert (status.time_to_exhaustion_s, status.exhaustion_at_ms) == (0.0, status.ts_ms)
    assert status.history_minutes == 30 * DAY
    assert status.ts_ms == end * MINUTE_MS
    assert _active(status) == [
        "SLOBurnRatePageSlow",
        "SLOBurnRateTicketFast",
        "SLOBurnRateTicketSlow",
    ]


def test_burst_of_20_percent_pages_within_five_minutes() -> None:
    state = SloState(SLO.window_minutes)
    minute = _run(state, 0, DAY, total=1000, bad=0)
    statuses = []
    for _ in range(5):
        minute = _run(state, minute, 1, total=1000, bad=200)
        statuses.append(_status(state, minute))
    # After k bad minutes, 1 h burns k * 0.2 / 60 / 0.001: 13.3 at k = 4, 16.7 at k = 5.
    assert statuses[3].burn_rates["1h"] == pytest.approx(40 / 3, abs=1e-9)
    assert "SLOBurnRatePageFast" not in _active(statuses[3])
    fast = next(a for a in evaluate(statuses[4]) if a.alertname == "SLOBurnRatePageFast")
    assert fast.active
    assert (fast.severity, fast.long_window, fast.short_window) == ("page", "1h", "5m")
    assert fast.factor == 14.4
    assert fast.long_burn_rate == pytest.approx(50 / 3, abs=1e-9)
    assert fast.short_burn_rate == pytest.approx(200.0, abs=1e-9)
    assert fast.labels == {
        "alertname": "SLOBurnRatePageFast",
        "service": "api",
        "slo": "api",
        "severity": "page",
    }
    assert "16.7x over 1h" in fast.annotations["summary"]


def test_recovery_resolves_through_the_short_window() -> None:
    state = SloState(SLO.window_minutes)
    minute = _run(state, 0, DAY, total=1000, bad=0)
    minute = _run(state, minute, 10, total=1000, bad=200)
    assert "SLOBurnRatePageFast" in _active(_status(state, minute))
    minute = _run(state, minute, 4, total=1000, bad=0)
    assert "SLOBurnRatePageFast" in _active(_status(state, minute))  # one bad minute in 5m
    minute = _run(state, minute, 1, total=1000, bad=0)
    status = _status(state, minute)
    assert status.burn_rates["1h"] > 14.4  # the long window still remembers the burst
    assert status.burn_rates["5m"] == 0.0
    assert "SLOBurnRatePageFast" not in _active(status)


def test_two_per_mille_for_three_days_is_only_a_slow_ticket() -> None:
    state = SloState(SLO.window_minutes)
    end = _run(state, 0, 3 * DAY, total=1000, bad=2)
    status = _status(state, end)
    assert status.burn_rates["3d"] == pytest.approx(2.0, abs=1e-9)
    assert _active(status) == ["SLOBurnRateTicketSlow"]


def test_budget_and_time_to_exhaustion_by_hand() -> None:
    # One day of 1000 events a minute; the last hour fails 5 a minute (burn 5 over 1 h).
    state = SloState(SLO.window_minutes)
    minute = _run(state, 0, DAY - 60, total=1000, bad=0)
    minute = _run(state, minute, 60, total=1000, bad=5)
    status = _status(state, minute)
    # bad / total = 300 / 1,440,000 = 1/4800; budget 0.001 -> 5/24 spent, 19/24 left.
    assert status.error_budget_remaining == pytest.approx(19 / 24, abs=1e-12)
    assert status.burn_rates["1h"] == pytest.approx(5.0, abs=1e-9)
    # 19/24 of the budget at 5x the sustainable pace of a 30 d window: 19/24 * 30 d / 5.
    assert status.time_to_exhaustion_s == pytest.approx(410_400.0, rel=1e-12)
    assert status.exhaustion_at_ms == status.ts_ms + 410_400_000
    record = status.to_record()
    assert record["exhaustion_at_ms"] == status.exhaustion_at_ms
    assert record["burn_rate_1h"] == status.burn_rates["1h"]
    assert set(record) == {
        "slo",
        "service",
        "ts_ms",
        "objective",
        "sli",
        "error_budget_remaining",
        *(f"burn_rate_{w}" for w in BURN_WINDOWS),
        "exhaustion_at_ms",
    }


def test_no_burn_means_no_exhaustion() -> None:
    state = SloState(SLO.window_minutes)
    minute = _run(state, 0, 120, total=1000, bad=1)
    minute = _run(state, minute, 60, total=1000, bad=0)
    status = _status(state, minute)
    assert status.burn_rates["1h"] == 0.0
    assert 0 < status.error_budget_remaining < 1
    assert (status.time_to_exhaustion_s, status.exhaustion_at_ms) == (None, None)


def test_empty_state_is_a_healthy_status() -> None:
    status = SloState(SLO.window_minutes).status(SLO, 0)
    assert (status.sli, status.error_budget_remaining, status.history_minutes) == (1.0, 1.0, 0)
    assert set(status.burn_rates.values()) == {0.0}
    assert status.time_to_exhaustion_s is None
    assert _active(status) == []


def test_partial_history_windows_are_what_exists() -> None:
    state = SloState(SLO.window_minutes)
    minute = _run(state, 100, 7, total=100, bad=0)
    minute = _run(state, minute, 3, total=100, bad=1)  # 3 bad of 1000 events in 10 minutes
    status = _status(state, minute)
    assert status.history_minutes == 10
    for window in ("30m", "1h", "2h", "6h", "1d", "3d"):
        assert status.burn_rates[window] == pytest.approx(3.0, abs=1e-9)
    assert status.burn_rates["5m"] == pytest.approx(6.0, abs=1e-9)  # 3 of 500
    # Later, with no new events: the empty minutes are history too.
    later = state.status(SLO, (minute + 89) * MINUTE_MS)
    assert later.history_minutes == 100
    assert (later.burn_rates["5m"], later.burn_rates["1h"]) == (0.0, 0.0)
    assert later.burn_rates["2h"] == pytest.approx(3.0, abs=1e-9)


def test_late_minutes_count_and_minutes_past_the_ring_are_refused() -> None:
    state = SloState(60)  # the ring still spans the 3 d burn window
    assert state.size == 3 * DAY
    head = 10 * DAY
    assert state.add(head * MINUTE_MS, 10.0, 10.0)
    assert state.add((head - 5) * MINUTE_MS, 0.0, 10.0)  # late, within the ring
    assert state.sums(head, 10) == (10.0, 20.0)
    assert state.first == head - 5
    assert not state.add((head - 3 * DAY) * MINUTE_MS, 0.0, 10.0)  # older than the ring
    assert state.sums(head, 3 * DAY) == (10.0, 20.0)
    # Jumping ahead further than the ring clears everything.
    assert state.add((head + 4 * DAY) * MINUTE_MS, 1.0, 2.0)
    assert state.sums(head + 4 * DAY, 3 * DAY) == (1.0, 2.0)


@settings(max_examples=40, deadline=None)
@given(
    adds=st.lists(
        st.tuples(st.integers(-5000, 9000), st.integers(0, 50), st.integers(0, 50)),
        min_size=1,
        max_size=60,
    ),
    queries=st.lists(st.tuples(st.integers(-100, 9100), st.integers(1, 6000)), max_size=8),
)
def test_window_sums_match_brute_force(
    adds: list[tuple[int, int, int]], queries: list[tuple[int, int]]
) -> None:
    state = SloState(60)
    kept: dict[int, list[float]] = {}
    head: int | None = None
    for step, (delta, good, total) in enumerate(adds):
        minute = delta if head is None else head + delta // (1 + step % 3)
        accepted = state.add(minute * MINUTE_MS, float(good), float(total))
        assert accepted == (head is None or minute > head - state.size)
        if accepted:
            head = minute if head is None else max(head, minute)
            counts = kept.setdefault(minute, [0.0, 0.0])
            counts[0] += good
            counts[1] += total
    assert head is not None
    for offset, width in queries:
        end = head - 5000 + offset
        live = [c for m, c in kept.items() if end - width < m <= end and m > head - state.size]
        expected = (sum(c[0] for c in live), sum(c[1] for c in live))
        assert state.sums(end, width) == expected
    restored = SloState.from_bytes(state.to_bytes())
    for offset, width in queries:
        assert restored.sums(head - 5000 + offset, width) == state.sums(head - 5000 + offset, width)


@given(
    bad=st.integers(0, 1000),
    total=st.integers(1, 1000),
    objective=st.sampled_from([0.9, 0.99, 0.995, 0.999, 0.9999]),
)
def test_budget_remaining_is_one_minus_window_burn(bad: int, total: int, objective: float) -> None:
    bad = min(bad, total)
    slo = Slo("s", "s", objective, 60, MetricSide(REQUESTS), MetricSide(REQUESTS))
    state = SloState(slo.window_minutes)
    state.add(0, float(total - bad), float(total))
    status = state.status(slo, 0)
    expected_burn = bad / total / round(1 - objective, 12)
    assert status.burn_rate_window == pytest.approx(expected_burn, rel=1e-12)
    assert status.error_budget_remaining == pytest.approx(1 - expected_burn, rel=1e-12, abs=1e-12)
    assert status.sli == pytest.approx(1 - bad / total, rel=1e-12, abs=1e-12)


# --- serialisation -----------------------------------------------------------------------


def test_serialisation_round_trip_of_a_full_30_day_state() -> None:
    rng = np.random.default_rng(7)
    totals = rng.poisson(6000, 30 * DAY + 777)
    bads = rng.binomial(totals, 0.001)
    state = SloState(SLO.window_minutes)
    for minute, (total, bad) in enumerate(zip(totals, bads, strict=True)):
        state.add(minute * MINUTE_MS, float(total - bad), float(total))
    blob = state.to_bytes()
    assert len(blob) < 130_000  # vs 691,200 bytes of raw float64 rings; measured ~104 kB
    restored = SloState.from_bytes(blob)
    now = (len(totals) - 1) * MINUTE_MS
    assert restored.status(SLO, now) == state.status(SLO, now)
    assert np.array_equal(restored.good, state.good)
    assert np.array_equal(restored.total, state.total)


def test_serialisation_of_fractions_and_of_nothing() -> None:
    state = SloState(60)
    state.add(5 * MINUTE_MS, 0.25, 1.5)
    state.add(7 * MINUTE_MS, 1e15, 1e15 + 3)
    restored = SloState.from_bytes(state.to_bytes())
    assert restored.sums(7, 10) == state.sums(7, 10) == (0.25 + 1e15, 1.5 + 1e15 + 3)
    assert (restored.head, restored.first) == (7, 5)
    empty = SloState.from_bytes(SloState(60).to_bytes())
    assert (empty.head, empty.first, empty.sums(0, 5)) == (None, None, (0.0, 0.0))
    with pytest.raises(ValueError, match="not an SLO state snapshot"):
        SloState.from_bytes(b"XXXX" + state.to_bytes()[4:])


# --- what feeds an SLO -------------------------------------------------------------------


def _agg(name: str, kind: str, *, width_s: int = 60, start: int = 120_000, **extra: object) -> dict:
    labels = {"service": "checkout", **extra.pop("labels", {})}  # type: ignore[dict-item]
    return {
        "series_id": f"{name}{labels}",
        "name": name,
        "labels": labels,
        "kind": kind,
        "width_s": width_s,
        "window_start_ms": start,
        "count": 40,
        "increase": None,
        **extra,
    }


def test_feed_routes_counters_and_observations(tmp_path: Path) -> None:
    loaded = load_slos(_config(tmp_path, **{"a.yaml": EXAMPLE + "---\n" + LATENCY}))
    avail, latency = (s for s, _ in loaded)
    feed = SliFeed([avail, latency])
    ok = _agg("http_requests_total", "COUNTER", increase=90.0, labels={"code": "200"})
    err = _agg("http_requests_total", "COUNTER", increase=10.0, labels={"code": "503"})
    assert feed.aggregate(ok) == [(avail, 120_000, 90.0, 90.0)]
    assert feed.aggregate(err) == [(avail, 120_000, 0.0, 10.0)]
    assert feed.aggregate({**ok, "width_s": 10}) == []  # the SLO reads one width only
    assert feed.aggregate({**ok, "labels": {"service": "cart", "code": "200"}}) == []
    assert feed.aggregate(_agg("http_requests_total", "GAUGE")) == []
    obs = _agg("http_request_duration_seconds", "OBSERVATION", start=150_000, le_counts={0.3: 37.0})
    assert feed.aggregate(obs) == [(latency, 120_000, 37.0, 40.0)]
    as_avro = {**obs, "le_counts": {le_key(0.3): 36.0}}
    assert feed.aggregate(as_avro) == [(latency, 120_000, 36.0, 40.0)]
    with pytest.raises(SliError, match="no le_counts for le=0.3"):
        feed.aggregate({**obs, "le_counts": None})


def test_feed_routes_health_results(tmp_path: Path) -> None:
    [(health, _)] = load_slos(_config(tmp_path, **{"h.yaml": HEALTH}))
    feed = SliFeed([health])
    base = {"ts_ms": 61_500, "service": "checkout", "instance": "i1", "check": "db"}
    assert feed.health({**base, "status": "HEALTHY"}) == [(health, 60_000, 1.0, 1.0)]
    assert feed.health({**base, "status": "DEGRADED"}) == [(health, 60_000, 0.0, 1.0)]
    assert feed.health({**base, "check": "disk", "status": "UNHEALTHY"}) == []
    assert feed.health({**base, "service": "cart", "status": "HEALTHY"}) == []
    assert feed.aggregate(_agg("up", "GAUGE")) == []


def test_feed_width_must_divide_a_minute() -> None:
    with pytest.raises(ValueError, match="dividing 60"):
        SliFeed([], width_s=45)
