"""Detector cost (µs per point per series, state bytes per series), backtest speed, and
detection delays and false alerts on the seeded synthetic scenarios. Run:

    PYTHONPATH=. .venv/bin/python bench/detect.py [--seeds N] [--rows N]

CPU time (process_time) is reported beside wall time: it is what a point costs a worker,
and it is steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from pipeline.backtest import backtest_csv
from pipeline.detect import Detector, DetectorConfig
from pipeline.detect.synthetic import SCENARIOS, evaluate, seasonal_quiet


def cost(width_s: int, days: int) -> None:
    scenario = seasonal_quiet(seed=0, days=days, width_s=width_s)
    pairs = list(zip(scenario.ts_ms.tolist(), scenario.values.tolist(), strict=True))
    det = Detector(DetectorConfig(width_s=width_s))
    wall, cpu = time.perf_counter(), time.process_time()
    for ts, value in pairs:
        det.update(ts, value)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    state = det.to_bytes()
    dumps = time.perf_counter()
    for _ in range(200):
        Detector.from_bytes(det.to_bytes())
    round_trip = (time.perf_counter() - dumps) / 200
    print(f"width {width_s:>3} s, {len(pairs):>6} points: "
          f"{cpu / len(pairs) * 1e6:6.1f} µs/point CPU ({wall / len(pairs) * 1e6:.1f} wall); "
          f"state {len(state):,} B ({len(zlib.compress(state)):,} B zlib), "
          f"to_bytes+from_bytes {round_trip * 1e6:.0f} µs")


def backtest_speed(rows: int) -> None:
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        ts = 1_700_000_000 + 60 * np.arange(rows)
        day = np.sin(2 * np.pi * np.arange(rows) / 1440)
        values = 1000 * (1 + 0.4 * day) + rng.normal(0, 25, rows)
        src.write_text("timestamp,value\n" + "".join(
            f"{t},{v:.3f}\n" for t, v in zip(ts.tolist(), values.tolist(), strict=True)))
        wall = time.perf_counter()
        anomalies = backtest_csv(src, out)
        wall = time.perf_counter() - wall
    print(f"backtest_csv {rows:,} rows: {wall:.2f} s wall "
          f"({wall / rows * 1e6:.0f} µs/row), {anomalies} anomalies")


def scenarios(seeds: int) -> None:
    print(f"{'scenario':<16} {'delays (points) per seed':<44} false alerts")
    for name, make in SCENARIOS.items():
        delays, false = [], 0
        for seed in range(seeds):
            scenario = make(seed=seed)
            det = Detector(DetectorConfig(width_s=scenario.width_s))
            flags = np.array([det.update(int(t), float(v)).is_anomaly
                              for t, v in zip(scenario.ts_ms, scenario.values, strict=True)])
            result = evaluate(scenario, flags)
            delays.append(result.delays)
            false += result.false_alerts
        shown = " ".join("/".join("miss" if d is None else str(d) for d in ds) or "-"
                         for ds in delays)
        print(f"{name:<16} {shown:<44} {false}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    cost(60, days=3)
    cost(10, days=2)
    backtest_speed(args.rows)
    scenarios(args.seeds)


if __name__ == "__main__":
    main()
