"""Range novelty: how far a point lies outside the range its series has already seen.

Measured as the strongest single signal on operational metrics (DETECTION.md): it fires
once, where a series breaks out of its range, and then stays quiet because the range has
grown. The measure is scale-free (a fraction of the range), so one threshold fits latency,
rates and ratios alike.
"""

from __future__ import annotations

import numpy as np

# A constant series has an empty range; this floor turns any later change into a large,
# finite score instead of a division by zero.
_REL_FLOOR = 1e-9
_ABS_FLOOR = 1e-12


class RangeNovelty:
    """Novelty of a vector of features against the ranges their series has seen.

    `windows` lists trailing window lengths in points. A trailing window of `w` points keeps
    the extremes of `blocks` blocks of `w // blocks` points plus the block being filled, so
    it spans between `w` and `w + w // blocks` points and costs a fixed `2 * blocks` floats
    per feature. The whole-history range holds the blocks that have left the shortest
    window: it is the range as it was a short window ago, so a slow ramp accumulates
    novelty against it instead of dragging it along point by point. NaN features are
    neither scored (they score 0) nor learned.

    `score_one` gives, per feature, the largest excess beyond any of these ranges as a
    fraction of that range's width: positive above the maximum, negative below the
    minimum, 0 inside.

    >>> nov = RangeNovelty(n_features=1, windows=(4,), blocks=2)
    >>> for x in (1.0, 3.0, 2.0, 2.5, 1.5, 2.0):
    ...     nov.learn_one(np.array([x]))
    >>> nov.score_one(np.array([3.0]))  # the last four span [1.5, 2.5]; before them [1, 3]
    array([0.5])
    >>> nov.score_one(np.array([5.0]))  # 2.5 widths above the window, 1 above the history
    array([2.5])
    >>> nov.score_one(np.array([2.0]))
    array([0.])
    >>> nov.score_one(np.array([np.nan]))
    array([0.])
    """

    def __init__(self, n_features: int, windows: tuple[int, ...] = (300, 3000), blocks: int = 10):
        trailing = sorted(windows)
        if not trailing or trailing[0] < blocks:
            raise ValueError(f"RangeNovelty.windows {windows}: need one or more, each >= {blocks}")
        self.blocks = blocks
        self.block_len = [w // blocks for w in trailing]
        self.filled = [0] * len(trailing)
        self.block_no = [0] * len(trailing)
        # NaN marks "nothing seen yet": fmin/fmax skip it when learning, and it scores 0
        # without a branch or a warning. Rows are the trailing windows, then the whole
        # history (which has no block being filled).
        t, ranges = len(trailing), len(trailing) + 1
        self.blk_lo = np.full((t, blocks, n_features), np.nan)
        self.blk_hi = np.full((t, blocks, n_features), np.nan)
        self.cur_lo = np.full((t, n_features), np.nan)
        self.cur_hi = np.full((t, n_features), np.nan)
        self.lo = np.full((ranges, n_features), np.nan)
        self.hi = np.full((ranges, n_features), np.nan)
        self.span = np.full((ranges, n_features), np.nan)

    def score_one(self, x: np.ndarray) -> np.ndarray:
        above = np.fmax((x - self.hi) / self.span, 0.0)
        below = np.fmax((self.lo - x) / self.span, 0.0)
        # Ranges are nested (each lies inside the longer ones), so a feature is never
        # both above one range and below another.
        return above.max(axis=0) - below.max(axis=0)

    def learn_one(self, x: np.ndarray) -> None:
        np.fmin(self.cur_lo, x, out=self.cur_lo)
        np.fmax(self.cur_hi, x, out=self.cur_hi)
        trailing = len(self.block_len)
        lo, hi = self.lo, self.hi
        np.fmin(lo[:trailing], x, out=lo[:trailing])
        np.fmax(hi[:trailing], x, out=hi[:trailing])
        for t, length in enumerate(self.block_len):
            self.filled[t] += 1
            if self.filled[t] == length:
                self._close_block(t)
        floor = _REL_FLOOR * np.fmax(np.abs(lo), np.abs(hi)) + _ABS_FLOOR
        self.span = np.maximum(hi - lo, floor)

    def _close_block(self, t: int) -> None:
        slot = self.block_no[t] % self.blocks
        if t == 0 and self.block_no[0] >= self.blocks:
            # The block leaving the shortest window joins the whole history.
            np.fmin(self.lo[-1], self.blk_lo[0, slot], out=self.lo[-1])
            np.fmax(self.hi[-1], self.blk_hi[0, slot], out=self.hi[-1])
        self.blk_lo[t, slot] = self.cur_lo[t]
        self.blk_hi[t, slot] = self.cur_hi[t]
        self.lo[t] = np.fmin.reduce(self.blk_lo[t], axis=0)
        self.hi[t] = np.fmax.reduce(self.blk_hi[t], axis=0)
        self.cur_lo[t] = np.nan
        self.cur_hi[t] = np.nan
        self.filled[t] = 0
        self.block_no[t] += 1
