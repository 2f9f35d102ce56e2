"""Aggregator throughput for both workload shapes, and snapshot cost for 10k series.

Batches are built before timing, so the figures are `Aggregator.add` + `close_due` alone
(plus, reported apart, turning closed windows into rows). Run:

    PYTHONPATH=. .venv/bin/python bench/aggregate.py [--messages N]

Standard workload: MetricBatch of 1,000 samples over 20 series (50 each, 100 ms apart),
2,000 series in all sent round-robin, a third each GAUGE / COUNTER / OBSERVATION.
Scrape workload: 1,000 series × 1 sample per message, 10,000 series scraped every 10 s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np

from pipeline.aggregate import Aggregator
from pipeline.batch import SampleBatch

START_MS = 1_700_000_000_000
KIND_CYCLE = np.array([0, 1, 2], dtype=np.int8)


class Fleet:
    """Series metadata and state (counter totals) for a synthetic fleet."""

    def __init__(self, series: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.services = [f"svc-{i % 50}" for i in range(series)]
        self.names = [f"metric_{i % 37}" for i in range(series)]
        self.labels = [{"service": s, "instance": f"i-{i}"} for i, s in enumerate(self.services)]
        self.ids = [f'{n}{{instance="i-{i}",service="{s}"}}'
                    for i, (n, s) in enumerate(zip(self.names, self.services, strict=True))]
        self.kinds = KIND_CYCLE[np.arange(series) % 3]
        self.totals = np.zeros(series)

    def batch(self, members: np.ndarray, ts: np.ndarray) -> SampleBatch:
        """One message: `ts` (per member, samples × members) for the series `members`."""
        per_series = ts.shape[0]
        kinds = self.kinds[members]
        values = self.rng.lognormal(-2.0, 1.0, ts.shape)
        counters = kinds == 1
        steps = self.rng.integers(0, 20, (per_series, int(counters.sum()))).astype(np.float64)
        values[:, counters] = self.totals[members[counters]] + np.cumsum(steps, axis=0)
        self.totals[members[counters]] = values[-1, counters]
        m = members.tolist()
        return SampleBatch(
            source="bench",
            series_ids=[self.ids[i] for i in m],
            names=[self.names[i] for i in m],
            services=[self.services[i] for i in m],
            labels=[self.labels[i] for i in m],
            kinds=kinds,
            # Series-major, as the decoder produces: all samples of series 0, then 1, ...
            series_index=np.repeat(np.arange(members.size, dtype=np.int32), per_series),
            ts_ms=np.ascontiguousarray(ts.T).ravel().astype(np.int64),
            values=np.ascontiguousarray(values.T).ravel(),
        )


def standard(messages: int) -> Iterator[tuple[SampleBatch, int]]:
    fleet, groups = Fleet(2_000, seed=1), 100
    for m in range(messages):
        rnd, group = divmod(m, groups)
        members = np.arange(group * 20, group * 20 + 20)
        t0 = START_MS + rnd * 5_000
        ts = np.broadcast_to((t0 + np.arange(50) * 100)[:, None], (50, 20))
        yield fleet.batch(members, ts), t0 + 5_000


def scrape(messages: int) -> Iterator[tuple[SampleBatch, int]]:
    fleet, groups = Fleet(10_000, seed=2), 10
    for m in range(messages):
        rnd, group = divmod(m, groups)
        members = np.arange(group * 1_000, group * 1_000 + 1_000)
        t = START_MS + rnd * 10_000 + group * 1_000
        yield fleet.batch(members, np.full((1, 1_000), t)), t


def aggregator() -> Aggregator:
    return Aggregator(widths_s=[10, 60], grace_ms=5_000, max_future_ms=300_000)


def throughput(name: str, batches: list[tuple[SampleBatch, int]]) -> None:
    agg = aggregator()
    warm = len(batches) // 10
    for batch, now in batches[:warm]:
        agg.add(batch, now)
        agg.close_due()
    samples = rows = 0
    closed = []
    wall, cpu = time.perf_counter(), time.process_time()
    for batch, now in batches[warm:]:
        agg.add(batch, now)
        samples += batch.sample_count
        closed += agg.close_due()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row_cpu = time.process_time()
    for window in closed:
        rows += sum(1 for _ in window)
    row_cpu = time.process_time() - row_cpu
    # CPU time is what one core spends; wall time also counts other processes' turns.
    print(f"{name:9} {samples / cpu:>12,.0f} samples/s per core ({samples / wall:,.0f} wall)"
          f"  {samples:,} samples; {rows:,} closed rows, iterating them "
          f"{row_cpu * 1e6 / max(rows, 1):.2f} µs/row; {agg.series_count:,} series")


def snapshot_cost(series: int = 10_000) -> None:
    agg = aggregator()
    for batch, now in scrape(series // 1_000 * 5):  # 50 s of scrapes: windows still open
        agg.add(batch, now)
        agg.close_due()
    first = time.process_time()
    agg.snapshot()  # the first call encodes series metadata; later ones reuse it
    first = time.process_time() - first
    started = time.process_time()
    data = agg.snapshot()
    snap = time.process_time() - started
    started = time.process_time()
    Aggregator.restore(data)
    restore = time.process_time() - started
    print(f"snapshot  {agg.series_count:,} series, {agg.open_windows} open windows: "
          f"{len(data) / 1e6:.2f} MB; first {first * 1e3:.1f} ms, then {snap * 1e3:.1f} ms "
          f"CPU; restore {restore * 1e3:.1f} ms CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000)
    args = parser.parse_args()
    throughput("standard", list(standard(args.messages)))
    throughput("scrape", list(scrape(args.messages)))
    snapshot_cost()


if __name__ == "__main__":
    main()
