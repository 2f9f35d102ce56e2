"""Seeded synthetic window-aggregate series with labelled incidents, and how to judge a run.

Shared by the detector's tests and benchmark; a scenario generator elsewhere can reuse
`SCENARIOS` to feed realistic aggregates through the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DAY_S = 86_400


@dataclass(frozen=True)
class Scenario:
    """One series of window aggregates; `incidents` are [start, end) point indexes."""

    name: str
    metric_name: str
    field: str
    width_s: int
    ts_ms: np.ndarray
    values: np.ndarray
    incidents: list[tuple[int, int]]


@dataclass(frozen=True)
class Evaluation:
    """Points from each incident's start to its first alert (None: missed), and false alerts."""

    delays: list[int | None]
    false_alerts: int

    @property
    def detected(self) -> bool:
        return all(d is not None for d in self.delays)


def _daily(n: int, width_s: int, rng: np.random.Generator) -> np.ndarray:
    """A daily shape in [-1, 1]: a busy day, a quiet night, a random phase."""
    t = np.arange(n) * width_s / DAY_S + rng.uniform()
    return 0.8 * np.sin(2 * np.pi * t) + 0.2 * np.sin(4 * np.pi * t + 1.0)


def _series(name: str, metric: str, fld: str, width_s: int, values: np.ndarray,
            incidents: list[tuple[int, int]]) -> Scenario:
    ts = (1_700_000_000_000 // (width_s * 1000) + np.arange(len(values))) * width_s * 1000
    return Scenario(name, metric, fld, width_s, ts.astype(np.int64), values, incidents)


def seasonal_quiet(seed: int = 0, days: int = 5, width_s: int = 60) -> Scenario:
    """A request rate with a daily pattern and noise, and no incident."""
    rng = np.random.default_rng(seed)
    n = days * DAY_S // width_s
    rate = 1000.0 * (1 + 0.4 * _daily(n, width_s, rng)) + rng.normal(0, 25, n)
    return _series("seasonal_quiet", "http_requests_total", "rate", width_s, rate, [])


def latency_spike(seed: int = 0, days: int = 3, width_s: int = 60) -> Scenario:
    """p99 latency with heavy-tailed noise; tripled for ten windows on the last day."""
    rng = np.random.default_rng(seed)
    n = days * DAY_S // width_s
    p99 = 0.2 * (1 + 0.3 * _daily(n, width_s, rng)) * rng.lognormal(0, 0.08, n)
    start = n - DAY_S // width_s // 2
    p99[start : start + 10] *= 3.0
    return _series("latency_spike", "http_request_duration_seconds", "p99", width_s, p99,
                   [(start, start + 10)])


def throughput_drop(seed: int = 0, days: int = 3, width_s: int = 60) -> Scenario:
    """A request rate that halves for an hour: still inside its daily range, not its pattern."""
    rng = np.random.default_rng(seed)
    n = days * DAY_S // width_s
    rate = 1000.0 * (1 + 0.4 * _daily(n, width_s, rng)) + rng.normal(0, 25, n)
    start = n - DAY_S // width_s // 3
    end = start + 3600 // width_s
    rate[start:end] *= 0.5
    return _series("throughput_drop", "http_requests_total", "rate", width_s, rate,
                   [(start, end)])


def saturation_leak(seed: int = 0, days: int = 3, width_s: int = 60) -> Scenario:
    """Memory utilization that creeps up linearly past anything seen; the incident starts
    where the ramp leaves the past range."""
    rng = np.random.default_rng(seed)
    n = days * DAY_S // width_s
    used = 0.5 + 0.03 * _daily(n, width_s, rng) + rng.normal(0, 0.01, n)
    begin = n - DAY_S // width_s // 2
    used[begin:] += 0.0005 * np.arange(n - begin)
    start = begin + int(np.argmax(used[begin:] > used[:begin].max()))
    return _series("saturation_leak", "memory_utilization", "last", width_s, used,
                   [(start, n)])


def error_burst(seed: int = 0, days: int = 3, width_s: int = 60) -> Scenario:
    """An error ratio near 0.2 % (binomial noise on 2000 requests) bursting to 5 %."""
    rng = np.random.default_rng(seed)
    n = days * DAY_S // width_s
    ratio = rng.binomial(2000, 0.002, n) / 2000.0
    start = n - DAY_S // width_s // 4
    ratio[start : start + 15] = rng.binomial(2000, 0.05, 15) / 2000.0
    return _series("error_burst", "http_requests_error_ratio", "mean", width_s, ratio,
                   [(start, start + 15)])


def repeated_outage(seed: int = 0, days: int = 3, width_s: int = 60) -> Scenario:
    """A request rate that falls to near zero for two hours, recovers, and falls again
    eight hours later: the second outage must be detected like the first."""
    rng = np.random.default_rng(seed)
    n = days * DAY_S // width_s
    rate = 1000.0 * (1 + 0.4 * _daily(n, width_s, rng)) + rng.normal(0, 25, n)
    first = n - DAY_S // width_s // 2
    second = first + 10 * 3600 // width_s
    incidents = [(first, first + 7200 // width_s), (second, second + 3600 // width_s)]
    for start, end in incidents:
        rate[start:end] = rng.uniform(0, 5, end - start)
    return _series("repeated_outage", "http_requests_total", "rate", width_s, rate, incidents)


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    f.__name__: f
    for f in (seasonal_quiet, latency_spike, throughput_drop, saturation_leak, error_burst,
              repeated_outage)
}


def evaluate(scenario: Scenario, is_anomaly: np.ndarray) -> Evaluation:
    """An alert inside an incident is a detection; any other alert is false."""
    alerts = np.flatnonzero(is_anomaly)
    delays: list[int | None] = []
    inside = np.zeros(len(is_anomaly), dtype=bool)
    for start, end in scenario.incidents:
        inside[start:end] = True
        hits = alerts[(alerts >= start) & (alerts < end)]
        delays.append(int(hits[0] - start) if len(hits) else None)
    return Evaluation(delays, int((~inside[alerts]).sum()))
