"""Detection quality on the labelled scenarios (pipeline/scenarios.py), replayed offline
through the same pure stages the workers run: `Aggregator` → `DetectState` → `AlertBook`.
Prints, per scenario, each incident's detection delay in windows and the share of alerts
that are false. Run:

    PYTHONPATH=. .venv/bin/python bench/detection_quality.py [--seeds N] [--sensitivity S]

tests/integration/test_scenarios_e2e.py judges the same way through the real broker and
database; `judge` is shared by both.

Judging (issue 4): an incident is detected by the first anomaly on its service and metric
(the `:error_ratio` series counts for its counter) detected from `early_ms` before its start
(an alert raised that recently is still firing at the start: a leak's trend shows before
its labelled start, which is where the gauge clearly leaves its past range) up to its end.
The delay is (detected_at − start) / width, and it must be at most 2: a window is judged
when it closes, a grace after its end, so the anomaly of the window holding the start is
in time (1.5 windows for a start at a window boundary, grace 5 s), and so is that of the
next window when the start lies in the first half of its window. An alert episode (an
AlertEvent firing, until its resolution) is false unless it overlaps an incident of its
service.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.aggregate import Aggregator
from pipeline.alerts import FIRING, RESOLVED, AlertBook
from pipeline.anomaly import ERROR_RATIO_SUFFIX, DetectConfig, DetectState
from pipeline.batch import KIND_NAMES, SampleBatch
from pipeline.rules import RuleSet
from pipeline.scenarios import SCENARIOS, Incident, Scenario
from pipeline.workload import Chunk, series_id

INCIDENT_SCENARIOS = ("latency_spike", "error_burst", "throughput_drop", "saturation_leak",
                      "deployment_regression", "cascading_failure")
KIND_CODES = {name: code for code, name in enumerate(KIND_NAMES)}


@dataclass(frozen=True)
class Found:
    """What a run produced that judging needs: anomalies and alert episodes."""

    anomalies: list[dict[str, Any]]  # service, metric_name, detected_ms
    alerts: list[dict[str, Any]]  # service, starts_ms (one per firing episode)


@dataclass(frozen=True)
class Verdict:
    """Per incident (in `Scenario.incidents` order) the delay in windows (None: missed),
    and the alert episodes with the false ones among them."""

    delays: list[float | None]
    alerts: int
    false: list[dict[str, Any]]  # the false alert episodes

    @property
    def false_alerts(self) -> int:
        return len(self.false)

    @property
    def false_rate(self) -> float:
        return self.false_alerts / self.alerts if self.alerts else 0.0


def matches(incident: Incident, metric_name: str) -> bool:
    return metric_name in (incident.metric_name, incident.metric_name + ERROR_RATIO_SUFFIX)


def judge(incidents: Sequence[Incident], found: Found, width_s: int, early_ms: int) -> Verdict:
    width_ms = width_s * 1000
    delays: list[float | None] = []
    for incident in incidents:
        hits = [a["detected_ms"] for a in found.anomalies
                if a["service"] == incident.service and matches(incident, a["metric_name"])
                and incident.start_ms - early_ms <= a["detected_ms"] < incident.end_ms]
        delays.append((min(hits) - incident.start_ms) / width_ms if hits else None)
    false = [a for a in found.alerts
             if not any(i.service == a["service"] and a["starts_ms"] < i.end_ms
                        and (a["ends_ms"] is None or a["ends_ms"] >= i.start_ms)
                        for i in incidents)]
    return Verdict(delays, len(found.alerts), false)


def in_time(delay: float | None) -> bool:
    """Detected within two windows of the start."""
    return delay is not None and delay <= 2


# -- offline replay --------------------------------------------------------------------------

def _batch(chunks: Iterable[Chunk]) -> SampleBatch:
    chunks = list(chunks)
    sizes = [c.ts_ms.size for c in chunks]
    return SampleBatch(
        "bench", [series_id(c.name, c.labels) for c in chunks], [c.name for c in chunks],
        [c.labels["service"] for c in chunks], [dict(c.labels) for c in chunks],
        np.array([KIND_CODES[c.kind] for c in chunks], dtype=np.int8),
        np.repeat(np.arange(len(chunks), dtype=np.int32), sizes),
        np.concatenate([c.ts_ms for c in chunks]), np.concatenate([c.values for c in chunks]))


def replay(scenario: Scenario, config: DetectConfig, widths_s: Sequence[int] = (10, 60),
           slice_s: float = 5.0) -> Found:
    """One partition holding every service of the scenario, as a worker would run it."""
    aggregator = Aggregator(widths_s, config.grace_ms, 10**15, idle_ms=900_000)
    state = DetectState(config, RuleSet([], widths_s=list(widths_s), grace_ms=config.grace_ms))
    catalog = {e["service"]: e for e in scenario.catalog}
    for change in scenario.change_events:
        state.add_change(change)
    book = AlertBook()
    anomalies: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    episodes: dict[str, dict[str, Any]] = {}  # open ones by fingerprint

    def take(judged: Any) -> None:
        if not judged:
            return
        anomalies.extend({"service": r["affected_service"], "metric_name": r["metric_name"],
                          "detected_ms": r["detected_at_ms"]} for r in judged.anomalies)
        for c in judged.conditions:
            for t in book.pulse(c["labels"], c["annotations"], c["source"], c["ts_ms"],
                                c["keep_firing_for_ms"]):
                if t.status == FIRING:
                    episodes[t.fingerprint] = {"service": t.service, "starts_ms": t.starts_at_ms,
                                               "ends_ms": None}
                    alerts.append(episodes[t.fingerprint])
                elif t.status == RESOLVED and t.fingerprint in episodes:
                    episodes.pop(t.fingerprint)["ends_ms"] = t.ends_at_ms

    slice_ms = int(slice_s * 1000)
    chunks = list(scenario.chunks(slice_s))
    k = 0
    while k < len(chunks):
        first = (int(chunks[k].ts_ms[0]) - scenario.start_ms) // slice_ms
        j = k
        while j < len(chunks) and (int(chunks[j].ts_ms[0]) - scenario.start_ms) // slice_ms \
                == first:
            j += 1
        aggregator.add(_batch(chunks[k:j]), now_ms=0)
        k = j
        for window in aggregator.close_due():
            for row in window:
                take(state.add_window(dataclasses.asdict(row), catalog.get))
    take(state.close_group(catalog.get))
    return Found(anomalies, alerts)


def scenario_of(name: str, seed: int) -> Scenario:
    return SCENARIOS[name](seed=seed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sensitivity", type=float, default=0.5)
    parser.add_argument("--scenarios", nargs="*", default=INCIDENT_SCENARIOS)
    args = parser.parse_args(argv)
    config = DetectConfig(width_s=10, sensitivity=args.sensitivity, season_s=None)
    print(f"width {config.width_s} s, sensitivity {config.sensitivity}, no season")
    total_alerts = total_false = late = 0
    for name in args.scenarios:
        for seed in range(args.seeds):
            started = time.perf_counter()
            scenario = scenario_of(name, seed)
            verdict = judge(scenario.incidents, replay(scenario, config), config.width_s,
                            early_ms=config.keep_firing_for_ms)
            total_alerts += verdict.alerts
            total_false += verdict.false_alerts
            late += sum(not in_time(d) for d in verdict.delays)
            delays = ", ".join(
                f"{i.service}/{i.kind}: " + ("missed" if d is None else f"{d:.2f}")
                + ("" if in_time(d) else " LATE")
                for i, d in zip(scenario.incidents, verdict.delays, strict=True))
            print(f"{name:>22} seed {seed}: {verdict.false_alerts}/{verdict.alerts} false; "
                  f"delays in windows [{delays}]  ({time.perf_counter() - started:.1f} s)")
    rate = total_false / total_alerts if total_alerts else 0.0
    print(f"all: {total_false}/{total_alerts} alerts false ({rate:.1%}); "
          f"{late} incident(s) not detected within two windows")


if __name__ == "__main__":
    main()
