"""Window assignment, stream time and the close/late/future rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.windows import NO_TIME, WindowClock, running_stream_time, window_start

timestamps = st.integers(min_value=-(10**13), max_value=10**13)
widths = st.lists(st.sampled_from([1_000, 10_000, 15_000, 60_000]), min_size=1, max_size=3)


@given(st.lists(timestamps, min_size=1, max_size=50), st.integers(1, 10**6))
def test_window_start_is_the_aligned_floor(ts: list[int], width: int) -> None:
    starts = window_start(np.array(ts, dtype=np.int64), width)
    for t, start in zip(ts, starts.tolist(), strict=True):
        assert start % width == 0
        assert start <= t < start + width
        assert window_start(t, width) == start


@given(timestamps, timestamps, widths, st.integers(0, 30_000))
def test_late_iff_its_window_closed_for_some_width(
    ts: int, stream_time: int, widths_ms: list[int], grace: int
) -> None:
    clock = WindowClock(tuple(widths_ms), grace, max_future_ms=1, stream_time_ms=stream_time)
    closed = any(clock.is_closed(int(window_start(ts, w)), w) for w in widths_ms)
    assert bool(clock.late(np.array([ts]), np.array([stream_time]))[0]) == closed
    assert (ts < clock.late_watermark(stream_time)) == closed


def test_running_stream_time_looks_only_backwards_and_skips_uncounted() -> None:
    ts = np.array([5, 3, 9, 100, 7, 8])
    counted = np.array([True, True, True, False, True, True])
    before = running_stream_time(4, ts, counted)
    assert before.tolist() == [4, 5, 5, 9, 9, 9]
    assert running_stream_time(NO_TIME, ts[:1], counted[:1]).tolist() == [NO_TIME]


def test_clock_closes_at_end_plus_grace_and_flags_future() -> None:
    clock = WindowClock((10_000,), grace_ms=5_000, max_future_ms=60_000)
    clock.advance(24_999)
    assert not clock.is_closed(10_000, 10_000)
    clock.advance(25_000)
    assert clock.is_closed(10_000, 10_000)
    clock.advance(1_000)  # stream time never goes back
    assert clock.stream_time_ms == 25_000
    future = clock.future(np.array([160_000, 160_001]), now_ms=100_000)
    assert future.tolist() == [False, True]


def test_docstring_examples_run() -> None:
    import doctest

    import pipeline.windows

    assert doctest.testmod(pipeline.windows).failed == 0
