"""Memory of the previous season (e.g. yesterday) for seasonal differences and lags."""

from __future__ import annotations

import numpy as np


class SeasonalMemory:
    """The value one season ago for a window, by absolute window index.

    Slots are aligned to absolute window numbers (`ts_ms // width_ms`), so a series that
    skips windows stays in phase: skipped buckets read as NaN ("unknown"), never as a stale
    value from an older season. A season longer than `max_slots` windows is kept at reduced
    resolution, each slot holding the mean of `step` consecutive windows, which bounds the
    state (float32, `max_slots` floats) whatever the window width.

    >>> mem = SeasonalMemory(season=4)
    >>> for p in range(4):
    ...     mem.learn_one(p, float(p))
    >>> mem.at(4), mem.at(5)
    ((0.0, 1.0), (1.0, 2.0))
    >>> mem.at(11)  # windows 6..10 were never seen
    (nan, nan)
    """

    def __init__(self, season: int, max_slots: int = 1440):
        if season < 2:
            raise ValueError(f"SeasonalMemory.season={season}: need at least 2 windows")
        self.step = -(-season // max_slots)
        self.slots = max(2, round(season / self.step))
        self.ring = np.full(self.slots, np.nan, dtype=np.float32)
        self.bucket: int | None = None
        self.total = 0.0
        self.count = 0

    def _advance(self, bucket: int) -> None:
        current = self.bucket
        if current is not None and bucket <= current:
            return
        if current is not None:
            self.ring[current % self.slots] = self.total / self.count if self.count else np.nan
            skipped = min(bucket - current - 1, self.slots)
            for b in range(current + 1, current + 1 + skipped):
                self.ring[b % self.slots] = np.nan
        self.bucket, self.total, self.count = bucket, 0.0, 0

    def at(self, p: int) -> tuple[float, float]:
        """The values one season before window `p` and one bucket after that (NaN: unknown)."""
        bucket = p // self.step
        self._advance(bucket)
        return float(self.ring[bucket % self.slots]), float(self.ring[(bucket + 1) % self.slots])

    def learn_one(self, p: int, x: float) -> None:
        self._advance(p // self.step)
        self.total += x
        self.count += 1
