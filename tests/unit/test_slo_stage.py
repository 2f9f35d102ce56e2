"""The SLO stage's partition logic: when minutes are reported, repeats and late input,
burn conditions on and off, and snapshots that change nothing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.slo import SloPartition, condition, status_row
from pipeline.codec import encode
from pipeline.envelope import unwrap, wrap
from pipeline.selector import parse_selector
from pipeline.slo import MINUTE_MS, HealthSide, MetricSide, Slo

T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z
GRACE_MS = 5_000
REQUESTS = parse_selector("http_requests_total")
GOOD = parse_selector('http_requests_total{code!~"5.."}')


def api_slo(name: str = "api-availability", days: int = 30) -> Slo:
    return Slo(name, "api", 0.999, days * 1440, MetricSide(GOOD.and_equal("service", "api")),
               MetricSide(REQUESTS.and_equal("service", "api")))


HEALTH_SLO = Slo("api-health", "api", 0.99, 1440, HealthSide(None, True), HealthSide(None, False))


def aggregate(minute: int, code: str, increase: float, width_s: int = 60,
              offset_s: int = 0) -> dict[str, Any]:
    labels = {"code": code, "service": "api"}
    start = T0 + minute * MINUTE_MS + offset_s * 1000
    return {"series_id": f'http_requests_total{{code="{code}",service="api"}}',
            "name": "http_requests_total", "service": "api", "labels": labels,
            "kind": "COUNTER", "width_s": width_s, "window_start_ms": start,
            "window_end_ms": start + width_s * 1000, "count": 1, "increase": increase}


def minute_of_traffic(minute: int, bad: float) -> list[dict[str, Any]]:
    """What the aggregator emits for one minute of 1000 requests: the 60 s windows, then
    the first 10 s window of the next minute (which completes this one)."""
    return [aggregate(minute, "200", 1000 - bad), aggregate(minute, "500", bad),
            aggregate(minute + 1, "200", 0.0, width_s=10)]


def run(part: SloPartition, inputs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for item in inputs:
        if "window_end_ms" in item:
            part.window(item)
        else:
            part.health(item)
        statuses, alerts = part.drain()
        out += [("status", s.to_record()) for s in statuses]
        out += [("alert", a.alertname, a.ts_ms, a.active) for a in alerts]
    return out


def new(slos: list[Slo] | None = None) -> SloPartition:
    return SloPartition(0, slos if slos is not None else [api_slo()], 60, GRACE_MS)


def test_each_minute_is_reported_once_in_order_after_its_grace() -> None:
    part = new()
    part.window(aggregate(0, "200", 990))
    part.window(aggregate(0, "500", 10))
    part.window(aggregate(1, "200", 0.0, width_s=10, offset_s=0))  # ends 1:10, past 1:05
    statuses, _ = part.drain()
    assert [s.ts_ms for s in statuses] == [T0 + MINUTE_MS]
    assert statuses[0].burn_rates["5m"] == 10.0
    part.window(aggregate(3, "200", 0.0, width_s=10))  # minutes 1 and 2 complete, empty
    statuses, _ = part.drain()
    assert [s.ts_ms for s in statuses] == [T0 + 2 * MINUTE_MS, T0 + 3 * MINUTE_MS]
    assert [s.total for s in statuses] == [1000.0, 1000.0]


def test_an_aggregate_ending_within_the_grace_completes_nothing() -> None:
    part = new()
    part.window(aggregate(0, "200", 1000))
    part.window(aggregate(1, "200", 0.0, width_s=4))  # ends 1:04: the grace is not past
    assert part.drain()[0] == []


def test_repeated_and_late_aggregates_count_once() -> None:
    part = new()
    first = aggregate(0, "500", 10)
    part.window(aggregate(0, "200", 990))
    part.window(first)
    part.window(first)  # the metrics stage repeats its output after a crash
    part.window(aggregate(1, "200", 0.0, width_s=10))
    part.window(first)  # and again after minute 0 was reported
    statuses, _ = part.drain()
    assert (statuses[0].good, statuses[0].total) == (990.0, 1000.0)
    assert part.dropped == 2


def test_other_widths_and_other_services_feed_nothing() -> None:
    part = new()
    part.window(aggregate(0, "500", 10, width_s=10))
    part.window({**aggregate(0, "500", 10), "labels": {"code": "500", "service": "web"}})
    part.window(aggregate(2, "200", 0.0, width_s=10))
    assert part.drain()[0] == []  # no data: an SLO reports from its first counted minute


def test_a_burst_pages_and_the_short_window_resolves_it() -> None:
    part = new()
    inputs = []
    for minute in range(120):
        burst = 60 <= minute < 70
        inputs += minute_of_traffic(minute, 200.0 if burst else 0.0)
    events = [e for e in run(part, inputs) if e[0] == "alert" and e[1] == "SLOBurnRatePageFast"]
    # 1 h burn at the k-th bad minute = 200 k / 60000 / 0.001 > 14.4 from k = 5.
    assert events[0] == ("alert", "SLOBurnRatePageFast", T0 + 65 * MINUTE_MS, True)
    # Five clean minutes after the burst the 5 m window is clean: resolved, once.
    assert events[-1] == ("alert", "SLOBurnRatePageFast", T0 + 75 * MINUTE_MS, False)
    assert [e[3] for e in events] == [True] * 10 + [False]


def test_conditions_encode_with_windows_burn_rates_and_budget() -> None:
    part = new()
    for item in minute_of_traffic(0, 200.0):
        part.window(item)
    statuses, alerts = part.drain()
    assert alerts
    record = condition(alerts[0])
    kind, decoded = unwrap(wrap("AlertCondition", record))
    assert kind == "AlertCondition" and decoded["source"] == "slo"
    assert decoded["labels"] == {"alertname": "SLOBurnRatePageFast", "service": "api",
                                 "slo": "api-availability", "severity": "page"}
    assert decoded["annotations"]["burn_rate_1h"] == "200.0000"
    assert decoded["annotations"]["windows"] == "1h and 5m"
    assert decoded["annotations"]["error_budget_remaining"] == "-199.0000"
    row = status_row(statuses[0])
    assert row["ts"].timestamp() * 1000 == T0 + MINUTE_MS and row["exhaustion_at"] is not None
    encode("SloStatus", statuses[0].to_record())


def test_health_slos_follow_health_time_only() -> None:
    part = new([api_slo(), HEALTH_SLO])

    def result(second: int, status: str) -> dict[str, Any]:
        return {"ts_ms": T0 + second * 1000, "service": "api", "instance": "a",
                "check": "http", "status": status, "latency_ms": 1.0}

    run(part, [result(0, "HEALTHY"), result(30, "UNHEALTHY")])
    part.window(aggregate(5, "200", 0.0, width_s=10))  # windows time passes; health's not
    assert part.drain()[0] == []
    part.health(result(66, "HEALTHY"))
    statuses, _ = part.drain()
    assert [(s.slo, s.good, s.total) for s in statuses] == [("api-health", 1.0, 2.0)]
    part.health(result(10, "HEALTHY"))  # for a reported minute: dropped
    assert part.dropped == 1


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(0, 3 * 90), seed=st.integers(0, 2**16))
def test_a_snapshot_anywhere_changes_no_output(cut: int, seed: int) -> None:
    bad = [float((seed * (m + 7)) % 50) for m in range(90)]
    inputs = [item for m in range(90) for item in minute_of_traffic(m, bad[m])]
    slos = [api_slo(days=1)]
    whole = run(new(slos), inputs)
    first = new(slos)
    before = run(first, inputs[:cut])
    restored = SloPartition.restore(first.snapshot(), 0, slos, 60, GRACE_MS)
    assert before + run(restored, inputs[cut:]) == whole


def test_restore_follows_the_current_definitions() -> None:
    part = new([api_slo(), api_slo("old")])
    run(part, [item for m in range(10) for item in minute_of_traffic(m, 10.0)])
    restored = SloPartition.restore(part.snapshot(), 0, [api_slo(days=7), HEALTH_SLO], 60,
                                    GRACE_MS)
    assert set(restored.tracked) == {"api-availability", "api-health"}
    kept = restored.tracked["api-availability"]
    last = T0 // MINUTE_MS + 9
    assert kept.state.size == 7 * 1440 and kept.done == last
    assert kept.state.sums(last, 10) == (9900.0, 10000.0)
    assert restored.tracked["api-health"].state.head is None


@pytest.mark.parametrize("days", [1, 30])
def test_one_slo_state_is_two_float_rings(days: int) -> None:
    part = new([api_slo(days=days)])
    ring = part.tracked["api-availability"].state
    assert ring.good.nbytes + ring.total.nbytes == 16 * max(days * 1440, 3 * 1440)
