"""The detector's parts: range novelty, seasonal memory, forecast, classification."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.detect import classify, severity
from pipeline.detect.classify import SEVERITY_THRESHOLDS
from pipeline.detect.forecast import SeasonalForecast
from pipeline.detect.novelty import RangeNovelty
from pipeline.detect.seasonal import SeasonalMemory

finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(st.lists(finite, min_size=2, max_size=60), finite)
def test_novelty_is_the_excess_over_the_seen_range_as_a_fraction_of_it(
    history: list[float], x: float
) -> None:
    nov = RangeNovelty(n_features=1, windows=(100,), blocks=10)  # nothing leaves the window
    for v in history:
        nov.learn_one(np.array([v]))
    lo, hi = min(history), max(history)
    span = max(hi - lo, 1e-9 * max(abs(lo), abs(hi)) + 1e-12)
    expected = (x - hi) / span if x > hi else (x - lo) / span if x < lo else 0.0
    assert nov.score_one(np.array([x]))[0] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_novelty_forgets_beyond_the_trailing_window_but_not_the_history() -> None:
    nov = RangeNovelty(n_features=1, windows=(20,), blocks=4)
    for v in [0.0, 10.0] + [5.0, 6.0] * 30:
        nov.learn_one(np.array([v]))
    # The window now spans [5, 6]; the history before it still holds 0 and 10.
    assert nov.score_one(np.array([7.0]))[0] == pytest.approx(1.0)
    assert nov.score_one(np.array([12.0]))[0] == pytest.approx(6.0)
    assert nov.lo[-1, 0] == 0.0 and nov.hi[-1, 0] == 10.0


def test_novelty_ignores_nan_features() -> None:
    nov = RangeNovelty(n_features=2, windows=(10,), blocks=10)
    for v in range(5):
        nov.learn_one(np.array([float(v), math.nan]))
    assert list(nov.score_one(np.array([8.0, 100.0]))) == [1.0, 0.0]


@given(st.integers(2, 50), st.integers(0, 200))
def test_seasonal_memory_returns_the_value_one_season_ago(season: int, start: int) -> None:
    mem = SeasonalMemory(season)
    for p in range(start, start + 3 * season):
        at, after = mem.at(p)
        if p >= start + season:
            assert (at, after) == (p - season, p - season + 1)
        else:
            assert math.isnan(at)
        mem.learn_one(p, float(p))


def test_long_seasons_are_kept_at_reduced_resolution() -> None:
    mem = SeasonalMemory(season=8640, max_slots=1440)  # a day of 10 s windows
    assert (mem.step, mem.slots, mem.ring.nbytes) == (6, 1440, 5760)
    for p in range(8640):
        mem.learn_one(p, float(p))
    assert mem.at(8640 + 7)[0] == pytest.approx(8.5)  # mean of windows 6..11


def test_a_gap_longer_than_a_season_forgets_it() -> None:
    mem = SeasonalMemory(season=10)
    for p in range(10):
        mem.learn_one(p, 1.0)
    assert mem.at(12) == (1.0, 1.0)
    assert all(math.isnan(v) for v in mem.at(40))


def test_forecast_learns_a_seasonal_pattern_at_any_scale() -> None:
    for scale in (1e-4, 1.0, 1e6):
        fc = SeasonalForecast(lags=3)
        season = 24
        series = [scale * (10 + math.sin(2 * math.pi * i / season)) for i in range(20 * season)]
        errors = []
        for i in range(season, len(series)):
            x = fc.features(series[i - 3 : i], series[i - season], series[i - season + 1])
            errors.append(abs(fc.predict_one(x) - series[i]))
            fc.learn_one(x, series[i])
        assert max(errors[-season:]) < 0.01 * scale


@pytest.mark.parametrize(
    ("name", "field", "direction", "expected"),
    [
        ("http_request_duration_seconds", "p99", "up", "LATENCY_SPIKE"),
        ("http_request_duration_seconds", "p99", "down", "OTHER"),
        ("rpc_latency_ms", "mean", "up", "LATENCY_SPIKE"),
        ("http_requests_total", "rate", "down", "THROUGHPUT_DROP"),
        ("http_requests_total", "rate", "up", "OTHER"),
        ("span_requests", "count", "down", "THROUGHPUT_DROP"),
        ("http_requests_error_ratio", "mean", "up", "ERROR_RATE_INCREASE"),
        ("http_errors_total", "rate", "down", "OTHER"),
        ("process_cpu_seconds_total", "rate", "up", "SATURATION"),
        ("node_memory_used_bytes", "last", "up", "SATURATION"),
        ("worker_queue_depth", "max", "up", "SATURATION"),
        ("db_pool_utilization", "last", "down", "OTHER"),
        ("temperature", "last", "up", "OTHER"),
    ],
)
def test_classify(name: str, field: str, direction: str, expected: str) -> None:
    assert classify(name, field, direction) == expected  # type: ignore[arg-type]


@given(st.floats(0, 0.999), st.floats(0, 0.999),
       st.sampled_from([*SEVERITY_THRESHOLDS, None, "UNKNOWN"]))
def test_severity_rises_with_the_score(a: float, b: float, tier: str | None) -> None:
    order = {"info": 0, "warning": 1, "critical": 2}
    low, high = sorted((a, b))
    assert order[severity(low, tier)] <= order[severity(high, tier)]


def test_severity_by_tier() -> None:
    assert severity(0.76, "CRITICAL") == "critical"
    assert severity(0.76, "BUSINESS") == "warning"
    assert severity(0.99, "SUPPORT") == "warning"
    assert severity(0.8, "BATCH") == "info"
    assert severity(0.95, None) == severity(0.95, "BUSINESS") == "critical"


@pytest.mark.parametrize("module", ["novelty", "seasonal", "forecast", "detector", "classify"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"pipeline.detect.{module}"))
    assert result.attempted > 0 and result.failed == 0
