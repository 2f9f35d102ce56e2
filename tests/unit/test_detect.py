"""The product detector on seeded synthetic scenarios (pipeline.detect.synthetic)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.detect import Detector, DetectorConfig, OutOfOrder, Score, classify
from pipeline.detect.synthetic import (
    Scenario,
    error_burst,
    evaluate,
    latency_spike,
    repeated_outage,
    saturation_leak,
    seasonal_quiet,
    throughput_drop,
)


def run(scenario: Scenario, detector: Detector | None = None, start: int = 0) -> list[Score]:
    det = detector or Detector(DetectorConfig(width_s=scenario.width_s))
    return [det.update(int(t), float(v))
            for t, v in zip(scenario.ts_ms[start:], scenario.values[start:], strict=True)]


@cache
def scored(name: str, seed: int = 0) -> tuple[Scenario, list[Score]]:
    days = {"seasonal_quiet": 4}.get(name, 3)
    scenario = {f.__name__: f for f in (seasonal_quiet, latency_spike, throughput_drop,
                                        saturation_leak, error_burst,
                                        repeated_outage)}[name](seed=seed, days=days)
    return scenario, run(scenario)


def flags(scores: list[Score]) -> np.ndarray:
    return np.array([s.is_anomaly for s in scores])


@pytest.mark.parametrize("seed", [0, 1])
def test_daily_pattern_with_noise_raises_no_alert(seed: int) -> None:
    scenario, scores = scored("seasonal_quiet", seed)
    assert len(scores) == 4 * 1440
    assert not flags(scores).any()
    # Scored (not just warming up) for the last days, with room below the threshold.
    threshold = DetectorConfig().threshold
    assert 0 < max(s.score for s in scores) < 0.7 * threshold
    assert all(s.score == 0 for s in scores[:1440])


def test_latency_spike_is_a_latency_spike_within_two_points() -> None:
    scenario, scores = scored("latency_spike")
    result = evaluate(scenario, flags(scores))
    assert result.delays[0] is not None and result.delays[0] <= 2
    assert result.false_alerts == 0
    alert = scores[scenario.incidents[0][0] + result.delays[0]]
    assert classify(scenario.metric_name, scenario.field, alert.direction) == "LATENCY_SPIKE"
    assert alert.deviation_percentage > 150  # tripled
    assert alert.expected_value == pytest.approx(alert.value / 3, rel=0.3)


def test_throughput_drop_inside_the_daily_range_is_detected() -> None:
    scenario, scores = scored("throughput_drop")
    start, end = scenario.incidents[0]
    # The halved rate is no lower than the nightly trough: only the pattern is broken.
    assert scenario.values[start:end].min() > scenario.values[:start].min()
    result = evaluate(scenario, flags(scores))
    assert result.delays[0] is not None and result.delays[0] <= 2
    alert = scores[start + result.delays[0]]
    assert classify(scenario.metric_name, scenario.field, alert.direction) == "THROUGHPUT_DROP"
    assert alert.deviation_percentage == pytest.approx(-50, abs=15)


def test_slow_saturation_leak_is_detected_once_beyond_the_past_range() -> None:
    scenario, scores = scored("saturation_leak")
    result = evaluate(scenario, flags(scores))
    assert result.false_alerts == 0
    # A 3 %/hour ramp; found within four hours of leaving everything seen before.
    assert result.delays[0] is not None and result.delays[0] <= 240
    alert = scores[scenario.incidents[0][0] + result.delays[0]]
    assert classify(scenario.metric_name, scenario.field, alert.direction) == "SATURATION"


def test_error_ratio_burst_is_detected_within_two_points() -> None:
    scenario, scores = scored("error_burst")
    result = evaluate(scenario, flags(scores))
    assert result.delays[0] is not None and result.delays[0] <= 2
    assert result.false_alerts == 0
    alert = scores[scenario.incidents[0][0] + result.delays[0]]
    assert classify(scenario.metric_name, scenario.field, alert.direction) == (
        "ERROR_RATE_INCREASE"
    )


@pytest.mark.parametrize("name", ["latency_spike", "throughput_drop", "error_burst"])
def test_an_ongoing_incident_alerts_once(name: str) -> None:
    scenario, scores = scored(name)
    assert flags(scores).sum() == 1


def test_refractory_keeps_a_flapping_incident_to_one_alert() -> None:
    rng = np.random.default_rng(4)
    values = 1000 + rng.normal(0, 25, 1000)
    values[600:700:10] = 2500  # ten spikes, each alone, ten windows apart

    def alerts(config: DetectorConfig) -> list[int]:
        det = Detector(config)
        return [i for i, v in enumerate(values) if det.update(i * 60_000, float(v)).is_anomaly]

    assert alerts(DetectorConfig(width_s=60, season_s=None)) == [600]
    assert len(alerts(DetectorConfig(width_s=60, season_s=None, refractory=1))) == 10


def test_an_outage_is_not_learned_so_the_next_one_is_detected_again() -> None:
    scenario, scores = scored("repeated_outage")
    result = evaluate(scenario, flags(scores))
    assert result.delays == [0, 0]
    assert result.false_alerts == 0
    # Two hours into the first outage the detector still expects normal traffic.
    start, end = scenario.incidents[0]
    assert scores[end - 1].expected_value > 300
    assert scores[end - 1].direction == "down"


def test_a_level_shift_longer_than_max_episode_becomes_the_new_normal() -> None:
    config = DetectorConfig(width_s=60, season_s=None, max_episode=50)
    det = Detector(config)
    rng = np.random.default_rng(3)
    values = np.concatenate((100 + rng.normal(0, 2, 600), 200 + rng.normal(0, 2, 900)))
    scores = [det.update(i * 60_000, float(v)) for i, v in enumerate(values)]
    assert flags(scores).sum() == 1
    assert abs(scores[-1].expected_value - 200) < 10
    assert max(s.score for s in scores[-300:]) < config.threshold / 2


def test_restored_detector_scores_exactly_like_the_uninterrupted_one() -> None:
    scenario = repeated_outage(seed=5)
    split = scenario.incidents[0][0] + 10  # mid-episode: refractory and held-out state
    det = Detector(DetectorConfig(width_s=scenario.width_s))
    run(Scenario(scenario.name, scenario.metric_name, scenario.field, scenario.width_s,
                 scenario.ts_ms[:split], scenario.values[:split], []), det)
    state = det.to_bytes()
    restored = Detector.from_bytes(state)
    assert run(scenario, restored, split) == run(scenario, det, split)
    assert len(state) < 16_000


def test_state_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="state format"):
        Detector.from_bytes(b"XXXX" + Detector().to_bytes()[4:])


@pytest.mark.parametrize("name", ["latency_spike", "repeated_outage", "saturation_leak"])
def test_is_anomaly_is_exactly_score_at_threshold(name: str) -> None:
    scenario, scores = scored(name)
    threshold = DetectorConfig().threshold
    assert all(0 <= s.score < 1 for s in scores)
    assert all(s.is_anomaly == (s.score >= threshold) for s in scores)


def test_missing_windows_keep_the_daily_phase() -> None:
    scenario = seasonal_quiet(seed=2, days=4)
    keep = np.ones(len(scenario.values), dtype=bool)
    keep[2000:2180] = False  # three hours without data
    keep[4000::7] = False  # and a window lost now and then
    gappy = Scenario("gappy", scenario.metric_name, scenario.field, scenario.width_s,
                     scenario.ts_ms[keep], scenario.values[keep], [])
    assert not flags(run(gappy)).any()


def test_points_must_move_forward_and_be_finite() -> None:
    det = Detector(DetectorConfig(width_s=10))
    det.update(20_000, 1.0)
    with pytest.raises(OutOfOrder, match="ts_ms=29999 is not after"):
        det.update(29_999, 1.0)
    with pytest.raises(ValueError, match="nan at ts_ms=30000 is not finite"):
        det.update(30_000, math.nan)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="DetectorConfig.sensitivity=0"):
        DetectorConfig(sensitivity=0)
    with pytest.raises(ValueError, match="DetectorConfig.season_s=60"):
        DetectorConfig(width_s=60, season_s=60)


@given(st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_more_sensitivity_means_a_lower_threshold(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert DetectorConfig(sensitivity=high).threshold <= DetectorConfig(sensitivity=low).threshold
    assert 0 < DetectorConfig(sensitivity=high).threshold < 1
