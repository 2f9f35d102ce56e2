"""Event-time tumbling windows aligned to the epoch: assignment, stream time, close, late.

A window of width w is [start, start + w) with start a multiple of w. Stream time is the
largest accepted `ts_ms` seen on a partition; a window closes once stream time reaches its
end plus the grace. A sample is late when the window it belongs to, for any configured
width, has already closed: aggregating it into the still-open wider windows only would
make a 60 s aggregate disagree with its six 10 s ones.

Stream time is taken *per sample*: a sample is judged against the largest timestamp that
came before it, never after it, so the verdicts do not depend on how the input was cut into
messages.

>>> clock = WindowClock(widths_ms=(10_000, 60_000), grace_ms=5_000, max_future_ms=300_000)
>>> clock.advance(125_000)
>>> clock.late_watermark(clock.stream_time_ms)
120000
>>> clock.is_closed(110_000, 10_000), clock.is_closed(120_000, 10_000)
(True, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Times = TypeVar("Times", np.ndarray, int)

NO_TIME = -(1 << 62)
"""Stream time before any sample; far below any timestamp, far from int64 overflow."""


def window_start(ts_ms: Times, width_ms: int) -> Times:
    """Start of the window holding each timestamp (floor, so negative times work too)."""
    return ts_ms - ts_ms % width_ms


def running_stream_time(start_ms: int, ts_ms: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Stream time just before each sample: start_ms or the largest earlier counted ts_ms."""
    seen = np.where(counts, ts_ms, NO_TIME)
    before = np.empty_like(ts_ms)
    if ts_ms.size:
        before[0] = start_ms
        np.maximum.accumulate(seen[:-1], out=before[1:])
        np.maximum(before[1:], start_ms, out=before[1:])
    return before


@dataclass(slots=True)
class WindowClock:
    """Stream time of one partition and the close/late/future rules derived from it."""

    widths_ms: tuple[int, ...]
    grace_ms: int
    max_future_ms: int
    stream_time_ms: int = NO_TIME

    def advance(self, max_ts_ms: int) -> None:
        self.stream_time_ms = max(self.stream_time_ms, max_ts_ms)

    def late_watermark(self, stream_time_ms: Times) -> Times:
        """Earliest timestamp still accepted at this stream time: start of the oldest window
        that is open for every width."""
        horizon = stream_time_ms - self.grace_ms
        marks = [window_start(horizon, width) for width in self.widths_ms]
        if isinstance(horizon, np.ndarray):
            return np.maximum.reduce(np.stack(marks))
        return max(int(mark) for mark in marks)

    def late(self, ts_ms: np.ndarray, stream_before_ms: np.ndarray) -> np.ndarray:
        return ts_ms < self.late_watermark(stream_before_ms)

    def future(self, ts_ms: np.ndarray, now_ms: int) -> np.ndarray:
        return ts_ms > now_ms + self.max_future_ms

    def is_closed(self, start_ms: int, width_ms: int) -> bool:
        return start_ms + width_ms + self.grace_ms <= self.stream_time_ms
