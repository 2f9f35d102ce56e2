"""Labelled incident scenarios: seeded, event-time accelerated metric traffic whose truth is
known, for detection tests, backtests and `vigil demo`.

A scenario is whole numpy series (a few hours of event time take milliseconds to make),
served as `Chunk`s slice by slice in event-time order, plus the change events and catalog
entries that go with it and the list of injected `Incident`s.

Each service sends the same series: `http_requests_total{code="200"|"500"}` (COUNTER,
scraped every `scrape_s`), `http_request_duration_seconds` (OBSERVATION, one latency per
request sampled, `observations_per_s`), `process_memory_utilization` and
`process_cpu_utilization` (GAUGE, scraped).

Warm-up: detectors stay silent until a series has history (DetectorConfig.min_history
windows, plus a season for seasonal features). Every incident scenario therefore starts
with `warmup_s` of normal traffic before anything is injected: 2 h by default, 720 windows
of 10 s and 120 of 60 s. Seasonal features need more than a season: pass a warm-up above a
day plus 120 windows (e.g. 26 h) to exercise them; `seasonal` itself generates `days` of
history at 60 s resolution and injects nothing.

>>> s = latency_spike(seed=3, warmup_s=1800)
>>> [(i.service, i.kind) for i in s.incidents]
[('checkout', 'LATENCY_SPIKE')]
>>> s.incidents[0].start_ms - s.start_ms
1800000
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline import ROOT
from pipeline.catalog import ServiceInfo
from pipeline.codec import CodecError, codec
from pipeline.workload import Chunk

START_MS = 1_699_920_000_000  # 2023-11-14 00:00 UTC: a day boundary, so seasons line up
DAY_S = 86_400
DEMO_CATALOG = ROOT / "config" / "demo" / "catalog.yaml"
REQUESTS = "http_requests_total"
LATENCY = "http_request_duration_seconds"
MEMORY = "process_memory_utilization"
CPU = "process_cpu_utilization"
LEAK_MARGIN = 0.25  # how far past its old range a leaking gauge is an incident


@dataclass(frozen=True)
class Incident:
    """Injected truth: `service`'s `metric_name` deviates over [start_ms, end_ms).

    `kind` is the anomaly type a detector should report (LATENCY_SPIKE, THROUGHPUT_DROP,
    ERROR_RATE_INCREASE, SATURATION); `labels` narrows the series where the name is shared
    (`{"code": "500"}` for errors, `{"code": "200"}` for throughput).
    """

    service: str
    metric_name: str
    start_ms: int
    end_ms: int
    kind: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """Normal behaviour of one service."""

    rps: float = 50.0
    error_ratio: float = 0.002
    latency_s: float = 0.08  # median
    latency_sigma: float = 0.35
    memory: float = 0.45
    seasonal: float = 0.0  # daily amplitude of the request rate (0.4: ±40 %)


@dataclass(frozen=True)
class Effect:
    """A change to one service's traffic over [start_ms, end_ms)."""

    service: str
    start_ms: int
    end_ms: int
    latency: float = 1.0  # multiplies the median latency
    error_ratio: float | None = None  # replaces the error ratio
    throughput: float = 1.0  # multiplies the request rate
    leak_per_h: float = 0.0  # memory utilisation gained per hour since start_ms


@dataclass
class Scenario:
    """Series of one scenario and its truth; `live_from_ms` is where normal traffic turns
    into the part worth watching (the demo replays what comes before it unpaced)."""

    name: str
    seed: int
    start_ms: int
    end_ms: int
    warmup_s: float
    series: list[Chunk]
    incidents: list[Incident]
    change_events: list[dict[str, Any]]
    catalog: list[dict[str, Any]]
    live_from_ms: int

    @property
    def sample_count(self) -> int:
        return sum(c.ts_ms.size for c in self.series)

    def speedup(self, wall_s: float) -> float:
        """Event-time speed-up that plays the live part in `wall_s` seconds of wall time."""
        return (self.end_ms - self.live_from_ms) / 1000.0 / wall_s

    def chunks(self, slice_s: float = 5.0, from_ms: int | None = None,
               to_ms: int | None = None) -> Iterator[Chunk]:
        """Samples in [from_ms, to_ms) slice by slice: every sample of a slice comes before
        any of the next one; within a slice, series by series."""
        lo = self.start_ms if from_ms is None else from_ms
        hi = self.end_ms if to_ms is None else to_ms
        bounds = np.append(np.arange(lo, hi, int(slice_s * 1000), dtype=np.int64), hi)
        cuts = [np.searchsorted(c.ts_ms, bounds).tolist() for c in self.series]
        for k in range(bounds.size - 1):
            for chunk, cut in zip(self.series, cuts, strict=True):
                a, b = cut[k], cut[k + 1]
                if a < b:
                    yield Chunk(chunk.name, chunk.labels, chunk.kind, chunk.ts_ms[a:b],
                                chunk.values[a:b])

    def series_of(self, service: str, metric_name: str,
                  labels: Mapping[str, str] | None = None) -> Chunk:
        """The one series of `service` named `metric_name` whose labels include `labels`."""
        wanted = {"service": service, **(labels or {})}
        for chunk in self.series:
            if chunk.name == metric_name and wanted.items() <= chunk.labels.items():
                return chunk
        raise KeyError(f"scenario {self.name}: no series {metric_name}{wanted}")


# -- generation ----------------------------------------------------------------------------

def _daily(ts_ms: np.ndarray) -> np.ndarray:
    """Time-of-day shape in [-1, 1]: peak mid-afternoon UTC, trough before dawn."""
    day = (ts_ms % (DAY_S * 1000)) / (DAY_S * 1000.0)
    return np.sin(2 * np.pi * (day - 0.375))


def _active(effect: Effect, ts_ms: np.ndarray) -> np.ndarray:
    return (ts_ms >= effect.start_ms) & (ts_ms < effect.end_ms)


def _service_series(service: str, profile: Profile, effects: Sequence[Effect], start_ms: int,
                    end_ms: int, scrape_s: float, observations_per_s: float,
                    rng: np.random.Generator) -> list[Chunk]:
    mine = [e for e in effects if e.service == service]
    scrape_ms = int(scrape_s * 1000)
    ts = np.arange(start_ms + int(rng.integers(0, scrape_ms)), end_ms, scrape_ms,
                   dtype=np.int64)
    load = 1 + profile.seasonal * _daily(ts)
    errors = np.full(ts.size, profile.error_ratio)
    leak = np.zeros(ts.size)
    for e in mine:
        on = _active(e, ts)
        load[on] *= e.throughput
        if e.error_ratio is not None:
            errors[on] = e.error_ratio
        leak[on] += e.leak_per_h * (ts[on] - e.start_ms) / 3_600_000
    requests = rng.poisson(profile.rps * load * scrape_s)
    failed = rng.binomial(requests, errors)
    ok = np.cumsum(requests - failed).astype(np.float64)
    bad = np.cumsum(failed).astype(np.float64)
    memory = profile.memory + 0.01 * _daily(ts) + rng.normal(0, 0.006, ts.size) + leak
    cpu = 0.1 + 0.25 * load + rng.normal(0, 0.015, ts.size)

    gap_ms = 1000.0 / observations_per_s
    slots = np.arange(math.floor((end_ms - start_ms) / gap_ms))
    obs_ts = (start_ms + (slots + rng.uniform(0, 1, slots.size)) * gap_ms).astype(np.int64)
    median = np.full(obs_ts.size, profile.latency_s) * (1 + 0.15 * profile.seasonal
                                                        * _daily(obs_ts))
    for e in mine:
        median[_active(e, obs_ts)] *= e.latency
    latency = rng.lognormal(np.log(median), profile.latency_sigma)
    return [
        Chunk(REQUESTS, {"service": service, "code": "200"}, "COUNTER", ts, ok),
        Chunk(REQUESTS, {"service": service, "code": "500"}, "COUNTER", ts, bad),
        Chunk(LATENCY, {"service": service}, "OBSERVATION", obs_ts, latency),
        Chunk(MEMORY, {"service": service}, "GAUGE", ts, np.clip(memory, 0.0, 1.0)),
        Chunk(CPU, {"service": service}, "GAUGE", ts, np.clip(cpu, 0.0, 1.0)),
    ]


def _entry(service: str, team: str, tier: str, depends_on: Sequence[str] = ()
           ) -> dict[str, Any]:
    """A ServiceInfo-shaped catalog entry."""
    return {"service": service, "team": team, "tier": tier, "environment": "prod",
            "runbook_url": f"https://runbooks.example.com/{service}",
            "depends_on": list(depends_on), "channels": [f"#{team}-oncall"]}


def _scenario(name: str, seed: int, profiles: Mapping[str, Profile], catalog: list[dict[str, Any]],
              effects: Sequence[Effect], incidents: list[Incident], warmup_s: float,
              end_ms: int, *, change_events: Sequence[dict[str, Any]] = (),
              live_from_ms: int | None = None, scrape_s: float = 5.0,
              observations_per_s: float = 2.0) -> Scenario:
    rng = np.random.default_rng(seed)
    series = [chunk for service in sorted(profiles)
              for chunk in _service_series(service, profiles[service], effects, START_MS,
                                           end_ms, scrape_s, observations_per_s, rng)]
    warm_end = START_MS + int(warmup_s * 1000)
    return Scenario(name, seed, START_MS, end_ms, warmup_s, series, incidents,
                    list(change_events), catalog,
                    warm_end if live_from_ms is None else live_from_ms)


def _check_warmup(warmup_s: float) -> int:
    if warmup_s <= 0:
        raise ValueError(f"warmup_s={warmup_s}: scenarios need normal traffic first")
    return START_MS + int(warmup_s * 1000)


# -- the scenarios ---------------------------------------------------------------------------

def latency_spike(seed: int = 0, warmup_s: float = 7200.0, incident_s: float = 600.0,
                  factor: float = 4.0) -> Scenario:
    """checkout's median latency multiplied by `factor` for `incident_s`; frontend, which
    calls it, is left alone as a control."""
    t0 = _check_warmup(warmup_s)
    t1 = t0 + int(incident_s * 1000)
    catalog = [_entry("checkout", "payments", "CRITICAL"),
               _entry("frontend", "web", "CRITICAL", ["checkout"])]
    profiles = {"checkout": Profile(latency_s=0.12), "frontend": Profile(rps=120.0)}
    return _scenario("latency_spike", seed, profiles, catalog,
                     [Effect("checkout", t0, t1, latency=factor)],
                     [Incident("checkout", LATENCY, t0, t1, "LATENCY_SPIKE")],
                     warmup_s, t1 + 1_200_000)


def error_burst(seed: int = 0, warmup_s: float = 7200.0, incident_s: float = 600.0,
                error_ratio: float = 0.08) -> Scenario:
    """payments' 5xx share jumps from 0.2 % to `error_ratio` (its 500 counter's rate with it)."""
    t0 = _check_warmup(warmup_s)
    t1 = t0 + int(incident_s * 1000)
    return _scenario("error_burst", seed, {"payments": Profile(rps=80.0)},
                     [_entry("payments", "payments", "CRITICAL")],
                     [Effect("payments", t0, t1, error_ratio=error_ratio)],
                     [Incident("payments", REQUESTS, t0, t1, "ERROR_RATE_INCREASE",
                               {"code": "500"})],
                     warmup_s, t1 + 1_200_000)


def throughput_drop(seed: int = 0, warmup_s: float = 7200.0, incident_s: float = 900.0,
                    factor: float = 0.25) -> Scenario:
    """search's request rate falls to `factor` of normal for `incident_s`."""
    t0 = _check_warmup(warmup_s)
    t1 = t0 + int(incident_s * 1000)
    return _scenario("throughput_drop", seed, {"search": Profile(rps=200.0)},
                     [_entry("search", "discovery", "BUSINESS")],
                     [Effect("search", t0, t1, throughput=factor)],
                     [Incident("search", REQUESTS, t0, t1, "THROUGHPUT_DROP", {"code": "200"})],
                     warmup_s, t1 + 1_200_000)


def saturation_leak(seed: int = 0, warmup_s: float = 7200.0, leak_s: float = 7200.0,
                    leak_per_h: float = 0.6) -> Scenario:
    """inventory's memory climbs `leak_per_h` per hour from the end of warm-up: slower per
    10 s window than the gauge's noise, so only the trend shows. The incident starts at the
    first sample beyond everything seen before the leak by a quarter of that past range
    (beyond the noise, not a hair over the maximum) and lasts to the end."""
    t0 = _check_warmup(warmup_s)
    end = t0 + int(leak_s * 1000)
    scenario = _scenario("saturation_leak", seed, {"inventory": Profile(memory=0.4)},
                         [_entry("inventory", "orders", "BUSINESS")],
                         [Effect("inventory", t0, end, leak_per_h=leak_per_h)], [],
                         warmup_s, end)
    memory = scenario.series_of("inventory", MEMORY)
    past = memory.values[memory.ts_ms < t0]
    bound = past.max() + LEAK_MARGIN * (past.max() - past.min())
    above = np.flatnonzero((memory.ts_ms >= t0) & (memory.values > bound))
    if above.size == 0:
        raise ValueError(f"saturation_leak: leak_per_h={leak_per_h} over {leak_s}s never "
                         "leaves the past range")
    scenario.incidents.append(Incident("inventory", MEMORY, int(memory.ts_ms[above[0]]), end,
                                       "SATURATION"))
    return scenario


def seasonal(seed: int = 0, days: float = 5.0, observations_per_s: float = 0.5) -> Scenario:
    """Two services with a ±40 % daily request pattern and noise for `days`, no incident:
    every alert on it is false. Made for 60 s windows: scraped every 15 s."""
    end = START_MS + int(days * DAY_S * 1000)
    profiles = {"web": Profile(rps=150.0, seasonal=0.4),
                "api": Profile(rps=60.0, seasonal=0.4, latency_s=0.05)}
    return _scenario("seasonal", seed, profiles,
                     [_entry("web", "web", "CRITICAL", ["api"]), _entry("api", "web", "BUSINESS")],
                     [], [], days * DAY_S, end, live_from_ms=START_MS, scrape_s=15.0,
                     observations_per_s=observations_per_s)


def deployment_regression(seed: int = 0, warmup_s: float = 7200.0, lead_s: float = 180.0,
                          regression_s: float = 1800.0) -> Scenario:
    """orders is deployed `lead_s` before a regression that lasts `regression_s`: latency
    ×2.5 and errors from 0.3 % to 4 %. The DEPLOYMENT change event names the version."""
    t0 = _check_warmup(warmup_s + lead_s)
    deployed = t0 - int(lead_s * 1000)
    t1 = t0 + int(regression_s * 1000)
    event = {"ts_ms": deployed, "service": "orders", "kind": "DEPLOYMENT",
             "description": "orders v2.14.0 rolled out (canary skipped)",
             "attributes": {"version": "v2.14.0", "previous_version": "v2.13.2",
                            "actor": "ci-pipeline"}}
    return _scenario("deployment_regression", seed,
                     {"orders": Profile(rps=90.0, error_ratio=0.003, latency_s=0.06)},
                     [_entry("orders", "orders", "BUSINESS")],
                     [Effect("orders", t0, t1, latency=2.5, error_ratio=0.04)],
                     [Incident("orders", LATENCY, t0, t1, "LATENCY_SPIKE"),
                      Incident("orders", REQUESTS, t0, t1, "ERROR_RATE_INCREASE",
                               {"code": "500"})],
                     warmup_s + lead_s, t1 + 600_000, change_events=[event])


def _cascade(t0: int, duration_ms: int, rng: np.random.Generator
             ) -> tuple[list[Effect], list[Incident]]:
    """db degrades at t0; orders then checkout follow 30-90 s later, for `duration_ms`."""
    lags = np.sort(rng.uniform(30_000, 90_000, 2)).astype(np.int64)
    starts = {"db": t0, "orders": t0 + int(lags[0]), "checkout": t0 + int(lags[1])}
    hit = {"db": (5.0, 0.10), "orders": (3.0, 0.05), "checkout": (2.5, 0.04)}
    effects, incidents = [], []
    for service, start in starts.items():
        latency, errors = hit[service]
        end = start + duration_ms
        effects.append(Effect(service, start, end, latency=latency, error_ratio=errors))
        incidents += [Incident(service, LATENCY, start, end, "LATENCY_SPIKE"),
                      Incident(service, REQUESTS, start, end, "ERROR_RATE_INCREASE",
                               {"code": "500"})]
    return effects, incidents


def cascading_failure(seed: int = 0, warmup_s: float = 7200.0,
                      incident_s: float = 600.0) -> Scenario:
    """db (latency ×5, 10 % errors) drags down orders and checkout, which depend on it,
    30-90 s later; search, independent, stays healthy."""
    t0 = _check_warmup(warmup_s)
    effects, incidents = _cascade(t0, int(incident_s * 1000), np.random.default_rng([seed, 1]))
    catalog = [_entry("db", "platform", "CRITICAL"),
               _entry("orders", "orders", "BUSINESS", ["db"]),
               _entry("checkout", "payments", "CRITICAL", ["orders", "db"]),
               _entry("search", "discovery", "BUSINESS")]
    profiles = {"db": Profile(rps=400.0, latency_s=0.008), "orders": Profile(rps=90.0),
                "checkout": Profile(rps=60.0, latency_s=0.15), "search": Profile(rps=200.0)}
    end = max(i.end_ms for i in incidents) + 1_200_000
    return _scenario("cascading_failure", seed, profiles, catalog, effects, incidents,
                     warmup_s, end)


def load_catalog(path: Path = DEMO_CATALOG) -> list[dict[str, Any]]:
    """ServiceInfo dicts from a YAML list, checked against the record and each other."""
    try:
        entries = yaml.safe_load(path.read_text())  # the safe loader: no tags run code
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = str(exc.problem or exc).replace("tag:yaml.org,2002:", "!!")
        raise ValueError(f"{path}{line}: invalid YAML: {problem}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a YAML list of services")
    out = []
    for i, entry in enumerate(entries):
        try:
            info = ServiceInfo.from_dict(entry)
            codec("ServiceInfo").validate(info.to_dict())
        except (KeyError, TypeError, ValueError, CodecError) as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from exc
        out.append(info.to_dict())
    known = {e["service"] for e in out}
    for e in out:
        if unknown := sorted(set(e["depends_on"]) - known):
            raise ValueError(f"{path}: {e['service']}.depends_on names unknown {unknown}")
    return out


def demo(seed: int = 0, warmup_s: float = 7200.0, normal_s: float = 240.0,
         incident_s: float = 480.0, recovery_s: float = 240.0,
         catalog_path: Path = DEMO_CATALOG) -> Scenario:
    """The `vigil demo` story over the demo catalog (about ten services): `warmup_s` of
    history to send unpaced, then the live part, `normal_s` of normal traffic, the db
    cascade of `cascading_failure` for `incident_s` and `recovery_s` after it. At
    `speedup(90)` (about 11×) the live part plays in a minute and a half."""
    catalog = load_catalog(catalog_path)
    for required in ("db", "orders", "checkout"):
        if required not in {e["service"] for e in catalog}:
            raise ValueError(f"{catalog_path}: the demo needs a service named {required!r}")
    live = _check_warmup(warmup_s)
    t0 = live + int(normal_s * 1000)
    rng = np.random.default_rng([seed, 2])
    effects, incidents = _cascade(t0, int(incident_s * 1000), rng)
    profiles = {e["service"]: Profile(rps=float(rng.uniform(20, 150)),
                                      latency_s=float(rng.uniform(0.03, 0.2)),
                                      memory=float(rng.uniform(0.3, 0.6)))
                for e in catalog}
    profiles["db"] = Profile(rps=400.0, latency_s=0.008)
    end = max(i.end_ms for i in incidents) + int(recovery_s * 1000)
    return _scenario("demo", seed, profiles, catalog, effects, incidents, warmup_s, end,
                     live_from_ms=live)


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    f.__name__: f
    for f in (latency_spike, error_burst, throughput_drop, saturation_leak, seasonal,
              deployment_regression, cascading_failure, demo)
}
