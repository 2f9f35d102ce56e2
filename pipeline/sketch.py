"""Mergeable quantile sketch with bounded relative error (DDSketch, Masson et al. 2019).

A value x > 0 falls in bucket i = ceil(log_gamma(x)), i.e. (gamma**(i-1), gamma**i], and is
estimated as (1 - ALPHA) * gamma**i, which is within ALPHA of every value of the bucket.
ALPHA is 0.75 %, leaving margin under the 1 % the contract promises for float rounding at
bucket edges. Negative values mirror positive ones; |x| below the smallest normal double
counts as zero.

Buckets are kept sparse as *signed codes*: 0 for zero, +(i + CODE_OFFSET) for positive and
-(i + CODE_OFFSET) for negative values, so that code order is value order. The aggregator
packs many sketches into one array by putting a group number (series slot) above the code
(`pack`), and the grouped functions below work on any number of sketches at once; the
`QuantileSketch` class is the one-group case.

Size is bounded: each sign keeps at most MAX_BUCKETS buckets; when a sketch spans more, its
lowest-magnitude buckets fold into the lowest kept one (only quantiles among the smallest
values lose accuracy). With ALPHA = 0.75 % the kept span is a factor of about 2e13 between
smallest and largest value, e.g. 1 ns to 6 h of latency. The fold of a bucket depends only on
the largest code ever seen, so merging is exact and order-independent.

Quantiles use the rank floor(q * (n - 1)) of the sorted values, numpy's method='lower'.

>>> import numpy as np
>>> s = QuantileSketch()
>>> s.add_many(np.arange(1.0, 1001.0))
>>> abs(s.quantile(0.99) - 990.0) / 990.0 <= 0.01
True
"""

from __future__ import annotations

import math
import struct

import numpy as np

ALPHA = 0.0075
GAMMA = (1.0 + ALPHA) / (1.0 - ALPHA)
LOG_GAMMA = math.log(GAMMA)
MAX_BUCKETS = 2048
MIN_POSITIVE = float(np.finfo(np.float64).tiny)
# |ceil(log_gamma(x))| < 47_300 for every normal double: codes stay within ±2**17.
CODE_OFFSET = 48_000
CODE_BITS = 18
_CODE_BIAS = 1 << (CODE_BITS - 1)
_CODE_MASK = (1 << CODE_BITS) - 1

_MAGIC = b"VSK1"
_HEADER = struct.Struct("<4sIcdd")  # magic, buckets, count dtype char, min, max
_COUNT_DTYPES: dict[bytes, type[np.unsignedinteger]] = {
    b"B": np.uint8, b"H": np.uint16, b"I": np.uint32, b"Q": np.uint64
}


def bucket_codes(values: np.ndarray) -> np.ndarray:
    """Signed bucket code of each value (int64); values must be finite."""
    magnitude = np.abs(values)
    nonzero = magnitude >= MIN_POSITIVE
    index = np.zeros(values.shape, dtype=np.int64)
    index[nonzero] = np.ceil(np.log(magnitude[nonzero]) / LOG_GAMMA).astype(np.int64)
    index[nonzero] += CODE_OFFSET
    return np.where(values < 0, -index, index)


def code_values(codes: np.ndarray) -> np.ndarray:
    """The estimate each bucket code stands for."""
    index = np.abs(codes) - CODE_OFFSET
    with np.errstate(over="ignore"):
        magnitude = np.exp(index * LOG_GAMMA) * (1.0 - ALPHA)
    return np.where(codes == 0, 0.0, np.copysign(magnitude, codes))


def pack(groups: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One int64 key per (group, code) whose order is (group, value) order."""
    return (groups.astype(np.int64) << CODE_BITS) | (codes + _CODE_BIAS)


def unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `pack`: (groups, codes)."""
    return keys >> CODE_BITS, (keys & _CODE_MASK) - _CODE_BIAS


def _sum_runs(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge equal neighbours of sorted keys, adding their counts."""
    if keys.size < 2:
        return keys, counts
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    if starts.size == keys.size:
        return keys, counts
    return keys[starts], np.add.reduceat(counts, starts)


def _group_bounds(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and one-past-end index of each run of equal sorted groups."""
    starts = np.flatnonzero(np.concatenate(([True], groups[1:] != groups[:-1])))
    ends = np.append(starts[1:], groups.size)
    return starts, ends


def compact(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort packed keys, add up duplicates and fold buckets beyond MAX_BUCKETS per sign."""
    if keys.size == 0:
        return keys.astype(np.int64), counts.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, counts = _sum_runs(keys[order], counts[order].astype(np.int64))
    groups, codes = unpack(keys)
    starts, ends = _group_bounds(groups)
    # Positive codes sit at the end of a group, negative ones at its start (value order).
    top = np.repeat(codes[ends - 1], ends - starts)
    bottom = np.repeat(codes[starts], ends - starts)
    floor = top - (MAX_BUCKETS - 1)
    ceiling = bottom + (MAX_BUCKETS - 1)
    fold_up = (codes > 0) & (codes < floor)
    fold_down = (codes < 0) & (codes > ceiling)
    if not (fold_up.any() or fold_down.any()):
        return keys, counts
    codes = np.where(fold_up, floor, np.where(fold_down, ceiling, codes))
    # Folding is monotone in the code, so keys stay sorted.
    return _sum_runs(pack(groups, codes), counts)


def grouped_quantiles(
    keys: np.ndarray,
    counts: np.ndarray,
    qs: tuple[float, ...],
    lows: np.ndarray,
    highs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles of every group in compacted `keys`: (groups, values of shape (G, len(qs))).

    `lows`/`highs`, indexed by group number, hold each group's exact min and max; estimates
    are clamped to them, which only moves an estimate towards the true value.
    """
    groups, codes = unpack(keys)
    starts, _ = _group_bounds(groups)
    present = groups[starts]
    cumulative = np.cumsum(counts)
    before = cumulative[starts] - counts[starts]
    totals = np.add.reduceat(counts, starts)
    out = np.empty((starts.size, len(qs)), dtype=np.float64)
    for column, q in enumerate(qs):
        rank = np.floor((totals - 1) * q).astype(np.int64)
        position = np.searchsorted(cumulative, before + rank, side="right")
        out[:, column] = code_values(codes[position])
    np.clip(out, lows[present, None], highs[present, None], out=out)
    return present, out


class QuantileSketch:
    """One DDSketch: add values, merge sketches, ask quantiles, serialise."""

    __slots__ = ("_counts", "_keys", "max", "min")

    def __init__(self) -> None:
        self._keys = np.empty(0, dtype=np.int64)
        self._counts = np.empty(0, dtype=np.int64)
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def from_buckets(
        cls, codes: np.ndarray, counts: np.ndarray, low: float, high: float
    ) -> QuantileSketch:
        """A sketch from compacted bucket codes and counts plus the exact min and max."""
        sketch = cls()
        sketch._keys = pack(np.zeros(codes.size, dtype=np.int64), codes)
        sketch._counts = counts.astype(np.int64)
        sketch.min, sketch.max = low, high
        return sketch

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """(codes, counts) in value order, for comparison and inspection."""
        return unpack(self._keys)[1], self._counts

    def add_many(self, values: np.ndarray) -> None:
        """Add finite values."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        if not np.isfinite(values).all():
            raise ValueError("QuantileSketch.add_many: values must be finite")
        codes = bucket_codes(values)
        self._merge_buckets(pack(np.zeros(codes.size, dtype=np.int64), codes),
                            np.ones(codes.size, dtype=np.int64))
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: QuantileSketch) -> None:
        """Add every value `other` holds; exact: the result equals one sketch of both inputs."""
        self._merge_buckets(other._keys, other._counts)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def _merge_buckets(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self._keys, self._counts = compact(
            np.concatenate((self._keys, keys)), np.concatenate((self._counts, counts))
        )

    def quantiles(self, qs: tuple[float, ...]) -> np.ndarray:
        if self._keys.size == 0:
            raise ValueError("QuantileSketch.quantiles: the sketch is empty")
        _, values = grouped_quantiles(
            self._keys, self._counts, qs, np.array([self.min]), np.array([self.max])
        )
        return values[0]

    def quantile(self, q: float) -> float:
        return float(self.quantiles((q,))[0])

    def count_at_most(self, bound: float) -> int:
        """How many values are ≤ bound (latency SLIs): exact outside [min, max], else counted
        up to the end of the bucket holding bound (values up to 1.5 % above it may count)."""
        if bound >= self.max:
            return self.count
        limit = pack(np.zeros(1, dtype=np.int64), bucket_codes(np.array([bound])))[0]
        return int(self._counts[self._keys <= limit].sum()) if bound >= self.min else 0

    def to_bytes(self) -> bytes:
        codes = unpack(self._keys)[1].astype(np.int32)
        top = int(self._counts.max()) if self._counts.size else 0
        char = next(c for c, t in _COUNT_DTYPES.items() if top <= np.iinfo(t).max)
        header = _HEADER.pack(_MAGIC, codes.size, char, self.min, self.max)
        return header + codes.tobytes() + self._counts.astype(_COUNT_DTYPES[char]).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        magic, size, char, low, high = _HEADER.unpack_from(data)
        if magic != _MAGIC or char not in _COUNT_DTYPES:
            raise ValueError("QuantileSketch.from_bytes: not a serialised sketch")
        offset = _HEADER.size
        codes = np.frombuffer(data, dtype=np.int32, count=size, offset=offset)
        counts = np.frombuffer(
            data, dtype=_COUNT_DTYPES[char], count=size, offset=offset + 4 * size
        )
        return cls.from_buckets(codes.astype(np.int64), counts, low, high)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return (
            np.array_equal(self._keys, other._keys)
            and np.array_equal(self._counts, other._counts)
            and (self.min, self.max) == (other.min, other.max)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuantileSketch(count={self.count}, buckets={self._keys.size})"
