"""Labelled scenarios: determinism, event-time order, truth that matches the data, and the
demo catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.codec import encode
from pipeline.scenarios import (
    CPU,
    DEMO_CATALOG,
    LATENCY,
    LEAK_MARGIN,
    MEMORY,
    REQUESTS,
    SCENARIOS,
    Incident,
    Scenario,
    cascading_failure,
    demo,
    deployment_regression,
    latency_spike,
    load_catalog,
    saturation_leak,
    seasonal,
)
from pipeline.workload import series_id

WARMUP = 1800.0  # short warm-ups keep these tests fast; the defaults are 2 h
SMALL = {name: {"warmup_s": WARMUP} for name in SCENARIOS if name != "seasonal"}
SMALL["seasonal"] = {"days": 1.0}


def _make(name: str, seed: int = 0) -> Scenario:
    return SCENARIOS[name](seed=seed, **SMALL[name])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_scenario_is_a_function_of_its_seed(name: str) -> None:
    a, b, c = _make(name), _make(name), _make(name, seed=1)

    def content(s: Scenario) -> list[tuple[str, bytes, bytes]]:
        return [(series_id(x.name, x.labels), x.ts_ms.tobytes(), x.values.tobytes())
                for x in s.series]

    assert content(a) == content(b)
    assert content(a) != content(c)
    assert a.incidents == b.incidents and a.change_events == b.change_events


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_chunks_come_in_event_time_order_and_cover_everything(name: str) -> None:
    s = _make(name)
    slice_ms = 60_000
    last_slice = -1
    total = 0
    for chunk in s.chunks(slice_s=60):
        first, last = int(chunk.ts_ms[0]), int(chunk.ts_ms[-1])
        k = (first - s.start_ms) // slice_ms
        assert (last - s.start_ms) // slice_ms == k >= last_slice
        assert (np.diff(chunk.ts_ms) >= 0).all()
        last_slice = k
        total += chunk.ts_ms.size
    assert total == s.sample_count
    assert all(s.start_ms <= c.ts_ms[0] and c.ts_ms[-1] < s.end_ms for c in s.series)
    assert len({series_id(c.name, c.labels) for c in s.series}) == len(s.series)


def _level(s: Scenario, incident: Incident, lo: int, hi: int) -> float:
    """The incident's metric over [lo, hi): median latency, counter rate, or mean gauge."""
    chunk = s.series_of(incident.service, incident.metric_name, incident.labels)
    inside = (chunk.ts_ms >= lo) & (chunk.ts_ms < hi)
    ts, values = chunk.ts_ms[inside], chunk.values[inside]
    if chunk.kind == "OBSERVATION":
        return float(np.median(values))
    if chunk.kind == "COUNTER":
        return float((values[-1] - values[0]) / (ts[-1] - ts[0]) * 1000)
    return float(values.mean())


# How far each kind moves its metric, incident against the hour of warm-up before it.
_MOVES = {"LATENCY_SPIKE": lambda during, before: during > 2 * before,
          "ERROR_RATE_INCREASE": lambda during, before: during > 5 * before,
          "THROUGHPUT_DROP": lambda during, before: during < 0.5 * before,
          "SATURATION": lambda during, before: during > before + 0.05}


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - {"seasonal"}))
def test_the_truth_is_in_the_data(name: str) -> None:
    s = _make(name)
    assert s.incidents
    first = min(i.start_ms for i in s.incidents)
    assert first - s.start_ms >= WARMUP * 1000  # warm-up before anything happens
    for incident in s.incidents:
        before = _level(s, incident, incident.start_ms - 1_800_000, incident.start_ms)
        during = _level(s, incident, incident.start_ms, incident.end_ms)
        assert _MOVES[incident.kind](during, before), (incident, before, during)
        if incident.kind != "SATURATION":  # a leak starts at the edge of its past range
            # Within the first two 10 s windows already, not just on average.
            early = _level(s, incident, incident.start_ms, incident.start_ms + 20_000)
            assert _MOVES[incident.kind](early, before), (incident, before, early)
        if incident.end_ms + 600_000 <= s.end_ms:
            after = _level(s, incident, incident.end_ms + 60_000, incident.end_ms + 600_000)
            assert not _MOVES[incident.kind](after, before), ("no recovery", incident)


def test_services_without_incidents_stay_normal() -> None:
    s = cascading_failure(warmup_s=WARMUP)
    quiet = Incident("search", LATENCY, 0, 0, "LATENCY_SPIKE")
    t0 = s.incidents[0].start_ms
    before = _level(s, quiet, t0 - 1_800_000, t0)
    during = _level(s, quiet, t0, t0 + 600_000)
    assert 0.8 < during / before < 1.25


def test_the_cascade_starts_at_db_and_reaches_its_dependents_30_to_90_s_later() -> None:
    for seed in range(5):
        s = cascading_failure(seed=seed, warmup_s=WARMUP)
        start = {i.service: i.start_ms for i in s.incidents}
        assert start["db"] + 30_000 <= start["orders"] <= start["checkout"] <= start["db"] + 90_000
        deps = {e["service"]: set(e["depends_on"]) for e in s.catalog}
        assert "db" in deps["orders"] and "db" in deps["checkout"]
        assert {i.kind for i in s.incidents if i.service == "db"} == {
            "LATENCY_SPIKE", "ERROR_RATE_INCREASE"}


def test_a_deployment_precedes_the_regression() -> None:
    s = deployment_regression(warmup_s=WARMUP, lead_s=180)
    (event,) = s.change_events
    regression = min(i.start_ms for i in s.incidents)
    assert event["kind"] == "DEPLOYMENT" and event["service"] == "orders"
    assert regression - event["ts_ms"] == 180_000
    assert encode("ChangeEvent", event)


def test_the_leak_incident_starts_where_memory_clearly_leaves_its_past_range() -> None:
    s = saturation_leak(warmup_s=WARMUP)
    (incident,) = s.incidents
    memory = s.series_of("inventory", MEMORY)
    leak_from = s.start_ms + WARMUP * 1000
    past = memory.values[memory.ts_ms < leak_from]
    bound = past.max() + LEAK_MARGIN * (past.max() - past.min())
    at = np.searchsorted(memory.ts_ms, incident.start_ms)
    leaking = (memory.ts_ms >= leak_from) & (memory.ts_ms < incident.start_ms)
    assert memory.values[at] > bound and leaking.any()
    assert (memory.values[leaking] <= bound).all()
    # Slower per 10 s than the noise: no single step gives the leak away.
    assert np.std(np.diff(past)) > 0.6 / 360
    assert incident.end_ms == s.end_ms


def test_seasonal_repeats_day_after_day_with_no_incident() -> None:
    s = seasonal(days=3)
    assert s.incidents == [] and s.change_events == []
    requests = s.series_of("web", REQUESTS, {"code": "200"})
    hours = (requests.ts_ms[1:] - s.start_ms) // 3_600_000
    days = np.bincount(hours, weights=np.diff(requests.values), minlength=72).reshape(3, 24)
    assert days.max() > 1.8 * days.min()  # a real daily swing
    assert np.corrcoef(days[0], days[1])[0, 1] > 0.95
    assert np.corrcoef(days[1], days[2])[0, 1] > 0.95


def test_warm_up_is_a_parameter() -> None:
    for warmup in (600.0, 7200.0):
        s = latency_spike(warmup_s=warmup)
        assert s.incidents[0].start_ms - s.start_ms == warmup * 1000
    with pytest.raises(ValueError, match="warmup_s"):
        latency_spike(warmup_s=0)


# -- the demo ----------------------------------------------------------------------------------

def test_the_demo_catalog_is_valid_service_info() -> None:
    catalog = load_catalog(DEMO_CATALOG)
    assert 8 <= len(catalog) <= 12
    assert {e["tier"] for e in catalog} == {"CRITICAL", "BUSINESS", "SUPPORT", "BATCH"}
    for entry in catalog:
        assert encode("ServiceInfo", entry)
    deps = {e["service"]: e["depends_on"] for e in catalog}
    assert "db" in deps["orders"] and "db" in deps["checkout"]


@pytest.mark.parametrize(("text", "error"), [
    ("- {service: a, team: t, tier: GOLD, environment: prod}", "entry 0.*tier"),
    ("- {service: a, team: t, tier: BATCH, environment: prod, depends_on: [b]}", "unknown"),
    ("- {service: a, tier: BATCH, environment: prod}", "entry 0.*team"),
    ("service: a", "list"),
])
def test_a_bad_catalog_names_the_file_and_entry(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error) as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_the_demo_plays_a_cascade_across_the_catalog() -> None:
    s = demo(warmup_s=WARMUP)
    services = {e["service"] for e in s.catalog}
    assert {c.labels["service"] for c in s.series} == services
    assert {i.service for i in s.incidents} == {"db", "orders", "checkout"}
    assert s.live_from_ms - s.start_ms == WARMUP * 1000
    first = min(i.start_ms for i in s.incidents)
    assert 120_000 <= first - s.live_from_ms <= 600_000  # a few minutes of normal first
    # Played at a modest speed-up (events still readable), the live part takes ~1.5 min.
    assert 5 <= s.speedup(90) <= 20
    cpu = [c for c in s.series if c.name == CPU]
    assert len(cpu) == len(services)
