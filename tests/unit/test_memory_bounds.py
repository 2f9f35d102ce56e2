"""Per-series state is bounded by active series (PRODUCT.md §8): series that stop
reporting are forgotten after their idle time, and caches never outgrow their bound.
`bench/memory.py` measures the same on a real worker; these are the cheap, exact checks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.aggregate import Aggregator
from pipeline.batch import GAUGE, SampleBatch
from pipeline.codec import encode
from pipeline.metricbatch import MetricBatchDecoder

T0 = 1_700_000_000_000
IDLE_MS = 120_000
COHORT = 50


def cohort_batch(cohort: int, ts_ms: int) -> SampleBatch:
    """One sample of each series of a cohort: a new set of series per cohort."""
    ids = [f'm{{pod="{cohort}-{i}",service="s"}}' for i in range(COHORT)]
    return SampleBatch("t", ids, ["m"] * COHORT, ["s"] * COHORT,
                       [{"service": "s", "pod": f"{cohort}-{i}"} for i in range(COHORT)],
                       np.full(COHORT, GAUGE, np.int8), np.arange(COHORT, dtype=np.int32),
                       np.full(COHORT, ts_ms, np.int64), np.ones(COHORT))


def held(lifetime_ms: int) -> int:
    """Series seen within the idle time (plus the 10 s between evictions) of cohorts that
    each report for `lifetime_ms`, one after another."""
    return COHORT * (-(-(IDLE_MS + 10_000) // lifetime_ms) + 1)


@settings(max_examples=10, deadline=None)
@given(cohorts=st.integers(3, 8), lifetime_s=st.integers(10, 200))
def test_aggregator_forgets_churned_series(cohorts: int, lifetime_s: int) -> None:
    """Cohorts of new series replace each other: the aggregator never holds more than the
    series seen within the idle time, nor more slots (what its memory scales with), and
    once the idle time has passed only the cohort still reporting."""
    agg = Aggregator([10, 60], grace_ms=5_000, max_future_ms=60_000, idle_ms=IDLE_MS)
    steps = lifetime_s // 10
    t = T0
    for cohort in [*range(cohorts), *[cohorts - 1] * (IDLE_MS // 10_000 // steps + 2)]:
        for _ in range(steps):
            t += 10_000
            agg.add(cohort_batch(cohort, t), now_ms=t)
            agg.close_due()
            assert agg.series_count <= held(steps * 10_000)
    assert agg.slots <= held(steps * 10_000)
    assert agg.series_count == COHORT


def test_aggregator_series_count_drops_to_zero_once_all_go_idle() -> None:
    agg = Aggregator([10], grace_ms=0, max_future_ms=60_000, idle_ms=IDLE_MS)
    for cohort in range(20):
        agg.add(cohort_batch(cohort, T0 + cohort * 1000), now_ms=T0)
    assert agg.series_count == 20 * COHORT
    quiet = SampleBatch("t", ['q{service="s"}'], ["q"], ["s"], [{"service": "s"}],
                        np.array([GAUGE], np.int8), np.zeros(1, np.int32),
                        np.array([T0 + IDLE_MS + 60_000]), np.ones(1))
    agg.add(quiet, now_ms=T0 + IDLE_MS + 60_000)
    agg.close_due()
    assert agg.series_count == 1  # only the series that just reported


def metric_batch(service: str, pods: range) -> bytes:
    symbols = ["__name__", "m", "service", service, "pod", *(f"p{i}" for i in pods)]
    return encode("MetricBatch", {"source": "t", "symbols": symbols, "series": [
        {"labels_refs": [0, 1, 2, 3, 4, 5 + i], "kind": "GAUGE", "ts_ms": [T0],
         "values": [1.0]} for i in range(len(pods))]})


def test_decoder_caches_stay_within_their_bounds() -> None:
    decoder = MetricBatchDecoder(max_tables=4, max_series=300)
    for step in range(40):  # 40 symbol tables of 25 new label sets each
        batch, errors = decoder.decode(metric_batch("s", range(step * 25, step * 25 + 25)))
        assert batch.sample_count == 25 and not errors
        assert len(decoder._tables) <= 4
        assert len(decoder._metas) <= 300
        assert sum(len(t.series) for t in decoder._tables.values()) <= 300
