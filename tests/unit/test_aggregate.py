"""Aggregator: hand-checked cases, plus a sample-at-a-time reference model that every run,
however the input is cut into messages and whenever it is snapshotted, must agree with."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.aggregate import QUANTILES, Aggregator, ClosedWindow, Rejected
from pipeline.batch import COUNTER, GAUGE, OBSERVATION, SampleBatch
from pipeline.sketch import QuantileSketch

KINDS = {"g": GAUGE, "c": COUNTER, "d": COUNTER, "o": OBSERVATION}
NOW = 10**13  # nothing in the generated streams is in the future
Sample = tuple[str, int, float]


def series_id(key: str) -> str:
    return f'm_{key}{{service="svc"}}'


def make_batch(samples: Sequence[Sample], kinds: dict[str, int] = KINDS) -> SampleBatch:
    """A batch in input order; a series is listed once, where it first appears."""
    keys = list(dict.fromkeys(key for key, _, _ in samples))
    index = {key: i for i, key in enumerate(keys)}
    return SampleBatch(
        source="test",
        series_ids=[series_id(k) for k in keys],
        names=[f"m_{k}" for k in keys],
        services=["svc"] * len(keys),
        labels=[{"service": "svc"} for _ in keys],
        kinds=np.array([kinds[k] for k in keys], dtype=np.int8),
        series_index=np.array([index[k] for k, _, _ in samples], dtype=np.int32),
        ts_ms=np.array([t for _, t, _ in samples], dtype=np.int64),
        values=np.array([v for _, _, v in samples], dtype=np.float64),
    )


def new_aggregator(idle_ms: int = 65_000) -> Aggregator:
    return Aggregator(widths_s=[10, 60], grace_ms=5_000, max_future_ms=60_000, idle_ms=idle_ms)


def rows(agg: Aggregator) -> list[ClosedWindow]:
    return [row for window in agg.close_due() for row in window]


def by_key(closed: list[ClosedWindow]) -> dict[tuple[str, int, int], ClosedWindow]:
    keyed = {(r.series_id, r.width_s, r.window_start_ms): r for r in closed}
    assert len(keyed) == len(closed), "a window was emitted twice"
    return keyed


def run(
    agg: Aggregator, messages: Sequence[Sequence[Sample]], now: int = NOW
) -> tuple[list[ClosedWindow], list[str]]:
    """Feed messages, closing after each; the reason per sample ('' when accepted)."""
    closed: list[ClosedWindow] = []
    reasons: list[str] = []
    for message in messages:
        verdict = [""] * len(message)
        rejected = agg.add(make_batch(message), now)
        for position, reason, _ in rejected.details(make_batch(message)):
            verdict[position] = reason
        reasons += verdict
        closed += rows(agg)
    return closed, reasons


# -- the reference model -----------------------------------------------------------------


def reference(
    samples: Sequence[Sample], widths_s: Sequence[int], grace: int, idle: int, now: int = NOW
) -> tuple[dict[tuple[str, int, int], dict[str, object]], list[str]]:
    """PRODUCT.md §5 one sample at a time, with aggregate.py's documented choices."""
    stream = -(1 << 62)
    previous: dict[str, tuple[int, float]] = {}
    members: dict[tuple[str, int, int], list[tuple[int, float, float]]] = {}
    reasons = []
    for key, ts, value in samples:
        watermark = max(w * 1000 * ((stream - grace) // (w * 1000)) for w in widths_s)
        if not math.isfinite(value):
            reasons.append("non_finite")
            continue
        if ts > now + 60_000:
            reasons.append("future")
            continue
        if ts < watermark:
            reasons.append("late")
            continue
        reasons.append("")
        delta = 0.0
        if KINDS[key] == COUNTER:
            prior = previous.get(key)
            if prior is None or ts >= prior[0]:
                if prior is not None and prior[0] >= stream - idle:
                    delta = value - prior[1] if value >= prior[1] else value
                previous[key] = (ts, value)
        for width in widths_s:
            start = ts - ts % (width * 1000)
            members.setdefault((series_id(key), width, start), []).append((ts, value, delta))
        stream = max(stream, ts)
    out: dict[tuple[str, int, int], dict[str, object]] = {}
    for (sid, width, start), items in members.items():
        if start + width * 1000 + grace > stream:
            continue
        values = [v for _, v, _ in items]
        last_ts = max(t for t, _, _ in items)
        kind = KINDS[sid[2]]
        increase = math.fsum(d for _, _, d in items)
        expected: dict[str, object] = {
            "count": len(items),
            "sum": math.fsum(values),
            "min": min(values),
            "max": max(values),
            "last": [v for t, v, _ in items if t == last_ts][-1],
            "increase": increase if kind == COUNTER else None,
            "rate": increase / width if kind == COUNTER else None,
        }
        if kind == OBSERVATION:
            sketch = QuantileSketch()
            sketch.add_many(np.array(values))
            expected["quantiles"] = sketch.quantiles(QUANTILES).tolist()
        out[(sid, width, start)] = expected
    return out, reasons


def assert_matches(closed: list[ClosedWindow], expected: dict[tuple[str, int, int], dict]) -> None:
    got = by_key(closed)
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        row = got[key]
        assert (row.count, row.min, row.max, row.last) == (
            want["count"], want["min"], want["max"], want["last"]
        ), key
        assert row.sum == pytest.approx(want["sum"], rel=1e-9, abs=1e-9)
        assert row.mean == pytest.approx(want["sum"] / want["count"], rel=1e-9, abs=1e-9)
        if want["increase"] is None:
            assert row.increase is None and row.rate is None
        else:
            assert row.increase == pytest.approx(want["increase"], rel=1e-9, abs=1e-9)
            assert row.rate == pytest.approx(want["rate"], rel=1e-9, abs=1e-9)
        quantiles = [row.p50, row.p90, row.p95, row.p99]
        assert quantiles == want.get("quantiles", [None] * 4), key


def assert_identical(a: list[ClosedWindow], b: list[ClosedWindow]) -> None:
    """Same windows; floats equal up to summation order."""
    left, right = by_key(a), by_key(b)
    assert left.keys() == right.keys()
    for key, row in left.items():
        other = right[key]
        for name in ("sum", "mean", "increase", "rate"):
            x, y = getattr(row, name), getattr(other, name)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-9, abs=1e-9)
            setattr(other, name, x)
        assert row == other


values = st.one_of(
    st.integers(0, 60).map(float),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
steps = st.one_of(
    st.sampled_from([0, 0, 1_000, 5_000]),  # equal timestamps: the tie rules
    st.integers(0, 4_000),
    st.integers(-25_000, 0),  # out of order, within grace or late
    st.integers(0, 120_000),  # windows close, series go idle
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Sample], list[int], list[int]]:
    """Samples with jumps back (out of order, late) and forward (idle series), two cuttings."""
    raw = draw(st.lists(st.tuples(st.sampled_from("gcdo"), steps, values), max_size=60))
    ts = 1_700_000_000_000 + draw(st.integers(0, 60_000))
    samples = []
    for key, step, value in raw:
        ts += step
        samples.append((key, ts, value))
    cuts = st.lists(st.integers(0, len(samples)), max_size=8).map(sorted)
    return samples, draw(cuts), draw(cuts)


def split(samples: list[Sample], cuts: list[int]) -> list[list[Sample]]:
    bounds = [0, *cuts, len(samples)]
    return [samples[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@settings(max_examples=200, deadline=None)
@given(streams())
def test_any_cutting_into_messages_matches_the_reference(stream) -> None:
    samples, cuts_a, cuts_b = stream
    expected, expected_reasons = reference(samples, [10, 60], 5_000, 65_000)
    closed_a, reasons_a = run(new_aggregator(), split(samples, cuts_a))
    closed_b, reasons_b = run(new_aggregator(), split(samples, cuts_b))
    assert reasons_a == reasons_b == expected_reasons
    assert_matches(closed_a, expected)
    assert_identical(closed_a, closed_b)


@settings(max_examples=100, deadline=None)
@given(streams(), st.integers(0, 10))
def test_snapshot_and_restore_mid_stream_changes_nothing(stream, at: int) -> None:
    samples, cuts, _ = stream
    messages = split(samples, cuts)
    at = min(at, len(messages))
    whole, _ = run(new_aggregator(), messages)
    first = new_aggregator()
    before, _ = run(first, messages[:at])
    data = first.snapshot()
    restored = Aggregator.restore(data)
    assert restored.snapshot() == data
    after, _ = run(restored, messages[at:])
    assert before + after == whole


# -- hand-checked cases ------------------------------------------------------------------


def test_gauge_window_statistics_and_last_by_largest_ts_then_input_order() -> None:
    agg = new_aggregator()
    agg.add(make_batch([("g", 1_000, 5.0), ("g", 3_000, 2.0), ("g", 2_000, 9.0),
                        ("g", 3_000, 7.0)]), NOW)
    assert rows(agg) == []
    agg.add(make_batch([("g", 15_000, 1.0)]), NOW)
    (row,) = rows(agg)
    assert (row.series_id, row.name, row.service, row.labels, row.kind) == (
        'm_g{service="svc"}', "m_g", "svc", {"service": "svc"}, "GAUGE"
    )
    assert (row.width_s, row.window_start_ms) == (10, 0)
    assert (row.count, row.sum, row.min, row.max, row.mean, row.last) == (4, 23.0, 2.0, 9.0,
                                                                          5.75, 7.0)
    assert (row.increase, row.rate, row.p50, row.p99) == (None, None, None, None)


def test_counter_increase_handles_resets_and_adds_up_across_windows() -> None:
    agg = new_aggregator()
    closed = []
    for message in (
        [("c", 1_000, 10.0), ("c", 5_000, 15.0)],
        [("c", 9_000, 3.0), ("c", 12_000, 4.0)],  # 15 → 3 is a reset: adds 3
        [("c", 21_000, 4.0), ("g", 70_000, 0.0)],
    ):
        agg.add(make_batch(message), NOW)
        closed += rows(agg)
    got = {(r.width_s, r.window_start_ms): (r.increase, r.rate) for r in closed
           if r.kind == "COUNTER"}
    assert got == {
        (10, 0): (8.0, 0.8),  # the first sample adds nothing; +5, then +3 after the reset
        (10, 10_000): (1.0, 0.1),
        (10, 20_000): (0.0, 0.0),
        (60, 0): (9.0, 0.15),
    }


def test_out_of_order_sample_within_grace_counts_but_adds_no_increase() -> None:
    samples = [("c", 1_000, 10.0), ("c", 12_000, 20.0), ("c", 9_000, 15.0), ("g", 80_000, 0.0)]
    together, _ = run(new_aggregator(), [samples])
    one_by_one, _ = run(new_aggregator(), [[s] for s in samples])
    assert_identical(together, one_by_one)
    first = by_key(together)[(series_id("c"), 10, 0)]
    assert (first.count, first.sum, first.max, first.last, first.increase) == (2, 25.0, 15.0,
                                                                              15.0, 0.0)
    assert by_key(together)[(series_id("c"), 10, 10_000)].increase == 10.0


def test_equal_timestamps_later_input_wins_across_messages() -> None:
    samples = [("g", 1_000, 1.0), ("g", 1_000, 2.0), ("c", 1_000, 5.0), ("c", 1_000, 7.0),
               ("c", 1_000, 6.0), ("g", 100_000, 0.0)]
    for messages in ([samples], [[s] for s in samples]):
        got = by_key(run(new_aggregator(), messages)[0])
        assert got[(series_id("g"), 10, 0)].last == 2.0
        counter = got[(series_id("c"), 10, 0)]
        assert (counter.last, counter.increase) == (6.0, 8.0)  # +2, then a reset to 6


def test_counter_order_is_judged_against_the_stored_sample_and_ties_are_in_order() -> None:
    samples = [("c", 10_000, 5.0),
               ("c", 9_000, 100.0), ("c", 8_000, 1.0), ("c", 11_000, 7.0),  # 2 out of order
               ("c", 12_000, 8.0), ("c", 12_000, 9.0), ("c", 11_500, 0.0),  # a tie, in order
               ("g", 100_000, 0.0)]
    for messages in ([samples[:1], samples[1:]], [samples], [[s] for s in samples]):
        got = by_key(run(new_aggregator(), messages)[0])
        assert got[(series_id("c"), 60, 0)].increase == 4.0  # 5 → 7 → 8 → 9


def test_a_counter_gap_longer_than_idle_restarts_even_inside_one_message() -> None:
    samples = [("c", 1_000, 5.0), ("g", 70_000, 0.0), ("c", 71_000, 9.0), ("c", 72_000, 10.0)]
    for messages in ([samples], [[s] for s in samples]):
        got = by_key(run(new_aggregator(), messages + [[("g", 200_000, 0.0)]])[0])
        assert got[(series_id("c"), 10, 70_000)].increase == 1.0


def test_late_samples_are_rejected_with_the_watermark_and_not_aggregated() -> None:
    agg = new_aggregator()
    agg.add(make_batch([("g", 1_000, 1.0), ("g", 16_000, 2.0)]), NOW)
    assert len(rows(agg)) == 1
    rejected = agg.add(make_batch([("g", 9_999, 50.0), ("g", 10_000, 3.0)]), NOW)
    assert rejected.positions.tolist() == [0]
    assert rejected.reasons.tolist() == [3] and rejected.reason_counts() == {"late": 1}
    assert rejected.bound_ms.tolist() == [10_000]
    agg.add(make_batch([("g", 200_000, 0.0)]), NOW)
    assert 50.0 not in [r.max for r in rows(agg)]


def test_non_finite_values_are_rejected_by_position_and_the_rest_kept() -> None:
    agg = new_aggregator()
    batch = make_batch([("g", 1_000, 1.0), ("g", 2_000, math.nan), ("o", 2_500, math.inf),
                        ("g", 3_000, -math.inf), ("g", 4_000, 2.0)])
    rejected = agg.add(batch, NOW)
    details = rejected.details(batch)
    assert [(p, r) for p, r, _ in details] == [(1, "non_finite"), (2, "non_finite"),
                                              (3, "non_finite")]
    assert details[0][2] == (
        'MetricBatch.series[0].values[1]: nan not allowed (series=m_g{service="svc"})'
    )
    assert details[1][2].startswith("MetricBatch.series[1].values[0]: inf")
    assert details[2][2].startswith("MetricBatch.series[0].values[2]: -inf")
    agg.add(make_batch([("g", 100_000, 0.0)]), NOW)
    first = [r for r in rows(agg) if r.window_start_ms == 0 and r.width_s == 10]
    assert [(r.series_id, r.count, r.sum) for r in first] == [(series_id("g"), 2, 3.0)]


def test_future_samples_are_rejected_and_do_not_move_stream_time() -> None:
    agg = new_aggregator()
    now = 1_000_000
    rejected = agg.add(make_batch([("g", 1_000_000, 1.0), ("g", 1_060_001, 2.0)]), now)
    assert rejected.reason_counts() == {"future": 1}
    assert rejected.bound_ms.tolist() == [1_060_000]
    assert agg.clock.stream_time_ms == 1_000_000
    assert "after now + max future (1060000)" in rejected.details(
        make_batch([("g", 1_000_000, 1.0), ("g", 1_060_001, 2.0)]))[0][2]


def test_a_series_that_changes_kind_is_rejected_while_active() -> None:
    agg = new_aggregator()
    agg.add(make_batch([("g", 1_000, 1.0)]), NOW)
    batch = make_batch([("g", 2_000, 1.0)], kinds={"g": COUNTER})
    rejected = agg.add(batch, NOW)
    assert rejected.reason_counts() == {"kind_conflict": 1}
    assert "MetricBatch.series[0].kind: COUNTER differs" in rejected.details(batch)[0][2]


def test_each_window_is_emitted_exactly_once() -> None:
    agg = new_aggregator()
    agg.add(make_batch([("g", 1_000, 1.0), ("g", 70_000, 1.0)]), NOW)
    first = agg.close_due()
    assert [(w.width_s, w.window_start_ms, len(w)) for w in first] == [(10, 0, 1), (60, 0, 1)]
    assert agg.close_due() == []
    agg.add(make_batch([("g", 71_000, 1.0)]), NOW)
    assert agg.close_due() == []
    assert agg.open_windows == 2


def test_quantiles_are_within_one_percent_of_numpy_on_the_raw_values() -> None:
    rng = np.random.default_rng(5)
    latencies = rng.lognormal(-2.0, 1.0, 5_000)
    ts = np.sort(rng.integers(0, 10_000, latencies.size))
    agg = new_aggregator()
    for part in np.array_split(np.arange(latencies.size), 7):
        agg.add(make_batch([("o", int(ts[i]), float(latencies[i])) for i in part]), NOW)
    agg.add(make_batch([("g", 20_000, 0.0)]), NOW)
    (window,) = agg.close_due()
    (row,) = window
    truth = np.quantile(latencies, QUANTILES, method="lower")
    got = np.array([row.p50, row.p90, row.p95, row.p99])
    assert np.all(np.abs(got - truth) <= 0.01 * truth)
    sketch = window.sketch(0)
    assert sketch is not None and sketch.count == latencies.size
    assert sketch.quantile(0.99) == row.p99
    for bound in (0.05, 0.135, 0.3, 100.0):
        counted = int(window.count_at_most(bound)[0])
        assert counted == sketch.count_at_most(bound)
        assert (latencies <= bound).sum() <= counted <= (latencies <= bound * 1.016).sum()


def test_count_at_most_is_per_row_and_zero_for_other_kinds() -> None:
    agg = new_aggregator()
    agg.add(make_batch([("g", 1_000, 0.1), ("o", 1_000, 0.2), ("o", 2_000, 0.4),
                        ("o", 3_000, 0.5), ("g", 100_000, 0.0)]), NOW)
    window = agg.close_due()[0]
    kinds = [row.kind for row in window]
    assert kinds == ["GAUGE", "OBSERVATION"]
    assert window.count_at_most(0.45).tolist() == [0, 2]
    assert window.count_at_most(0.1).tolist() == [0, 0]
    assert window.count_at_most(0.5).tolist() == [0, 3]
    assert window.sketch(0) is None


def test_idle_series_are_evicted_and_restart_from_scratch() -> None:
    agg = new_aggregator(idle_ms=65_000)
    agg.add(make_batch([("c", 1_000, 5.0), ("d", 1_000, 1.0)]), NOW)
    agg.add(make_batch([("d", 60_000, 2.0)]), NOW)
    assert agg.series_count == 2
    agg.add(make_batch([("d", 70_000, 3.0)]), NOW)
    rows(agg)
    assert agg.series_count == 1  # c: last seen at 1 s, stream time 70 s
    agg.add(make_batch([("c", 80_000, 9.0), ("g", 200_000, 0.0)]), NOW)
    revived = by_key(rows(agg))[(series_id("c"), 10, 80_000)]
    assert revived.increase == 0.0  # counts as the first sample ever seen
    assert agg.series_count == 1  # only g: c and d went idle


def test_memory_is_reused_for_a_steady_set_of_series() -> None:
    agg = new_aggregator()
    for step in range(50):
        keys = [f"g{(step // 10) * 10 + i}" for i in range(10)]
        kinds = dict.fromkeys(keys, GAUGE)
        samples = [(k, step * 20_000, 1.0) for k in keys]
        agg.add(make_batch(samples, kinds), NOW)
        rows(agg)
    assert agg.series_count <= 20
    assert agg.slots <= 30  # slots of evicted series are reused


def test_one_series_listed_twice_in_a_batch_is_one_series() -> None:
    batch = make_batch([("c", 1_000, 1.0), ("c", 2_000, 3.0)])
    twice = SampleBatch(batch.source, batch.series_ids * 2, batch.names * 2,
                        batch.services * 2, batch.labels * 2, np.repeat(batch.kinds, 2),
                        np.array([0, 1], dtype=np.int32), batch.ts_ms, batch.values)
    agg = new_aggregator()
    assert len(agg.add(twice, NOW)) == 0
    agg.add(make_batch([("g", 100_000, 0.0)]), NOW)
    row = by_key(rows(agg))[(series_id("c"), 10, 0)]
    assert (row.count, row.sum, row.increase) == (2, 4.0, 2.0)


def test_configuration_and_snapshot_errors_name_the_thing() -> None:
    with pytest.raises(ValueError, match="idle_ms"):
        Aggregator(widths_s=[10, 60], grace_ms=5_000, max_future_ms=1, idle_ms=60_000)
    with pytest.raises(ValueError, match="widths_s"):
        Aggregator(widths_s=[0], grace_ms=5_000, max_future_ms=1)
    with pytest.raises(ValueError, match="not an aggregator snapshot"):
        Aggregator.restore(b"nope")


def test_empty_batch_is_a_no_op() -> None:
    agg = new_aggregator()
    assert isinstance(agg.add(make_batch([]), NOW), Rejected)
    assert agg.series_count == 0 and agg.close_due() == []


def test_docstring_examples_run() -> None:
    import doctest

    import pipeline.aggregate

    assert doctest.testmod(pipeline.aggregate).failed == 0
