"""Per-partition window aggregation: a whole SampleBatch per call, numpy throughout.

State is columnar. Every series gets a *slot*; each open window (width, start) holds dense
per-slot arrays (count, sum, increase, min, max, last, ts of last) and, for OBSERVATION
series, the packed sketch buckets of its samples (see `sketch.pack`). A message costs a
handful of array operations per width plus one dict lookup per series, so Python work is
per series and per window, never per sample.

Semantics (PRODUCT.md §5) and the choices this module makes where the contract is silent:

- A sample is rejected, in this order of precedence, for `kind_conflict` (its series was
  seen with another kind and is still active), `non_finite` (NaN/inf), `invalid_timestamp`
  (ts_ms < 0: before the epoch; far enough back, a window start fits no timestamp),
  `future` (ts_ms beyond now + max_future) or `late` (its window closed for some width,
  judged against the stream time before that sample; see `windows`). Rejected samples
  touch no state.
- GAUGE `last` (kept for every kind): value with the largest ts_ms; ties go to the sample
  that came later in input order.
- COUNTER `increase`: each series keeps its previous sample, the one with the largest ts_ms
  so far. A sample at or after it in event time adds (value − previous), or value on a drop
  (a reset), to the window holding it, and becomes the previous sample. A sample *older*
  than the previous one (out of order, yet within grace) counts in count/sum/min/max/last
  but adds no increase: re-ordering would need every sample of the grace kept. Verdicts are
  made sample by sample in input order, so results do not depend on how the input is cut
  into messages, and are exact whenever each series arrives in ts_ms order.
- A series idle for `idle_ms` of stream time is forgotten: its slot is freed, and its next
  sample counts as the first ever seen (adds no increase). The gap rule is applied per
  sample (a previous sample older than stream time − idle_ms is ignored), so eviction, which
  runs in `close_due`, never changes results, only memory.
- Sums are exact up to floating-point summation order.

>>> import numpy as np
>>> from pipeline.batch import SampleBatch, COUNTER
>>> agg = Aggregator(widths_s=[10], grace_ms=0, max_future_ms=60_000)
>>> batch = SampleBatch("doc", ['c{service="a"}'], ["c"], ["a"], [{"service": "a"}],
...     np.array([COUNTER], np.int8), np.zeros(4, np.int32),
...     np.array([1_000, 5_000, 9_000, 12_000]), np.array([10.0, 15.0, 3.0, 4.0]))
>>> len(agg.add(batch, now_ms=12_000))
0
>>> [(row.count, row.increase, row.rate) for window in agg.close_due() for row in window]
[(3, 8.0, 0.8)]
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from pipeline.batch import COUNTER, KIND_NAMES, OBSERVATION, SampleBatch
from pipeline.compress import compress, decompress
from pipeline.sketch import QuantileSketch, bucket_codes, compact, grouped_quantiles, pack, unpack
from pipeline.windows import NO_TIME, WindowClock, running_stream_time

REJECT_REASONS = ("kind_conflict", "non_finite", "future", "late", "invalid_timestamp")
KIND_CONFLICT, NON_FINITE, FUTURE, LATE, INVALID_TIMESTAMP = range(5)
QUANTILES = (0.5, 0.9, 0.95, 0.99)

# Per-slot columns of an open window: (dtype, neutral value). Separate 1-D arrays, because
# numpy gathers and scatters those several times faster than rows of a 2-D table.
_COUNT, _SUM, _INCREASE, _MIN, _MAX, _LAST, _LAST_TS = range(7)
_WINDOW_COLUMNS = (
    (np.int64, 0), (np.float64, 0.0), (np.float64, 0.0), (np.float64, math.inf),
    (np.float64, -math.inf), (np.float64, math.nan), (np.int64, NO_TIME),
)
# Per-slot columns of the series registry: (attribute, dtype, value of a free slot).
_SERIES_COLUMNS = (
    ("_kind", np.int8, -1), ("_last_seen", np.int64, NO_TIME), ("_prev_ts", np.int64, NO_TIME),
    ("_prev_val", np.float64, 0.0), ("_ids", object, None), ("_names", object, None),
    ("_services", object, None), ("_labels", object, None), ("_meta", object, None),
)
_PENDING_LIMIT = 1 << 16  # sketch keys buffered per window before compaction
_SNAPSHOT_MAGIC = b"VAGG1"
_HEADER_SIZE = struct.Struct("<I")


@dataclass(slots=True)
class Rejected:
    """Samples of one batch that were not aggregated, for the dead-letter topic.

    `bound_ms` is the limit a `future` sample exceeded (now + max_future) or the watermark a
    `late` sample fell behind; 0 for other reasons.
    """

    positions: np.ndarray  # int64 sample positions in the batch
    reasons: np.ndarray  # int8 index into REJECT_REASONS
    bound_ms: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.positions.size)

    def reason_counts(self) -> dict[str, int]:
        counts = np.bincount(self.reasons, minlength=len(REJECT_REASONS))
        return {name: int(n) for name, n in zip(REJECT_REASONS, counts, strict=True) if n}

    def details(self, batch: SampleBatch) -> list[tuple[int, str, str]]:
        """(position, reason, detail) per rejected sample; the detail names the sample."""
        if not len(self):
            return []
        order = np.argsort(batch.series_index, kind="stable")
        rank = np.empty(batch.sample_count, dtype=np.int64)
        first = np.searchsorted(batch.series_index[order], batch.series_index[order])
        rank[order] = np.arange(batch.sample_count) - first
        out = []
        for position, reason, bound in zip(
            self.positions.tolist(), self.reasons.tolist(), self.bound_ms.tolist(), strict=True
        ):
            series = int(batch.series_index[position])
            where = f"MetricBatch.series[{series}]"
            sample = f"[{rank[position]}]"
            ts = int(batch.ts_ms[position])
            if reason == KIND_CONFLICT:
                kind = KIND_NAMES[batch.kinds[series]]
                text = f"{where}.kind: {kind} differs from the kind this series already has"
            elif reason == NON_FINITE:
                text = f"{where}.values{sample}: {batch.values[position]} not allowed"
            elif reason == INVALID_TIMESTAMP:
                text = f"{where}.ts_ms{sample}: {ts} is before 1970-01-01"
            elif reason == FUTURE:
                text = f"{where}.ts_ms{sample}: {ts} is after now + max future ({bound})"
            else:
                text = f"{where}.ts_ms{sample}: {ts} is before the closed-window watermark {bound}"
            detail = f"{text} (series={batch.series_ids[series]})"
            out.append((position, REJECT_REASONS[reason], detail))
        return out


@dataclass(slots=True)
class ClosedWindow:
    """One series' aggregate over one closed window; None where the kind has no such value."""

    series_id: str
    name: str
    service: str
    labels: dict[str, str]
    kind: str
    width_s: int
    window_start_ms: int
    count: int
    sum: float
    min: float
    max: float
    mean: float
    last: float
    increase: float | None
    rate: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


@dataclass(slots=True)
class WindowAggregates:
    """Every series' aggregate of one closed (width, start) window, column by column.

    Columns are per row (series); increase/rate are NaN except for COUNTER rows and the
    quantiles NaN except for OBSERVATION rows. Iterating yields `ClosedWindow` rows. `labels`
    dicts are shared with the aggregator: do not mutate them.
    """

    width_s: int
    window_start_ms: int
    series_ids: list[str]
    names: list[str]
    services: list[str]
    labels: list[dict[str, str]]
    kinds: np.ndarray  # int8
    count: np.ndarray  # int64
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray
    last: np.ndarray
    increase: np.ndarray
    quantiles: np.ndarray  # (rows, len(QUANTILES))
    sketch_keys: np.ndarray  # compacted packed keys, group = row
    sketch_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.series_ids)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.count

    @property
    def rate(self) -> np.ndarray:
        return self.increase / self.width_s

    def count_at_most(self, bound: float) -> np.ndarray:
        """Per row, how many observations are ≤ bound (latency SLIs); 0 for other kinds.

        Exact when bound lies outside [min, max]; otherwise counted up to the end of the
        sketch bucket holding bound, so values up to 1.5 % above it may count.
        """
        groups, codes = unpack(self.sketch_keys)
        below = codes <= bucket_codes(np.array([bound], dtype=np.float64))[0]
        counts = np.bincount(groups[below], weights=self.sketch_counts[below],
                             minlength=len(self)).astype(np.int64)
        observed = self.kinds == OBSERVATION
        counts[observed & (bound >= self.max)] = self.count[observed & (bound >= self.max)]
        counts[observed & (bound < self.min)] = 0
        return counts

    def sketch(self, row: int) -> QuantileSketch | None:
        """The quantile sketch of an OBSERVATION row (e.g. for latency SLIs)."""
        if self.kinds[row] != OBSERVATION:
            return None
        groups, codes = unpack(self.sketch_keys)
        lo, hi = np.searchsorted(groups, [row, row + 1])
        return QuantileSketch.from_buckets(
            codes[lo:hi], self.sketch_counts[lo:hi], float(self.min[row]), float(self.max[row])
        )

    def __iter__(self) -> Iterator[ClosedWindow]:
        # Column lists and one C-level map: about 1 µs a row, which matters when every
        # sample of a scrape-shaped workload closes a window of its own.
        counter = self.kinds == COUNTER
        observed = self.kinds == OBSERVATION
        return map(
            ClosedWindow, self.series_ids, self.names, self.services, self.labels,
            _KIND_OBJECTS.take(self.kinds).tolist(), repeat(self.width_s),
            repeat(self.window_start_ms), self.count.tolist(), self.sum.tolist(),
            self.min.tolist(), self.max.tolist(), self.mean.tolist(), self.last.tolist(),
            _optional(self.increase, counter), _optional(self.rate, counter),
            *(_optional(self.quantiles[:, i], observed) for i in range(len(QUANTILES))),
        )


_KIND_OBJECTS = np.array(KIND_NAMES, dtype=object)


def _optional(values: np.ndarray, present: np.ndarray) -> list[float | None]:
    out = values.astype(object)
    out[~present] = None
    return out.tolist()


def _column(dtype: type, fill: object, size: int) -> np.ndarray:
    return np.full(size, fill, dtype=dtype)


@dataclass(slots=True)
class _Window:
    """Open window state: per-slot columns plus buffered sketch keys."""

    width_ms: int
    start_ms: int
    columns: list[np.ndarray]  # indexed _COUNT.._LAST_TS
    sketch_keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    sketch_counts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pending: list[np.ndarray] = field(default_factory=list)
    pending_size: int = 0

    @classmethod
    def empty(cls, width_ms: int, start_ms: int, capacity: int) -> _Window:
        return cls(width_ms, start_ms, [_column(t, f, capacity) for t, f in _WINDOW_COLUMNS])

    def grow(self, capacity: int) -> None:
        extra = capacity - self.columns[0].size
        self.columns = [np.concatenate((c, _column(t, f, extra)))
                        for c, (t, f) in zip(self.columns, _WINDOW_COLUMNS, strict=True)]

    def update(self, slots: np.ndarray, groups: Sequence[np.ndarray]) -> None:
        """Fold per-slot group results (slots unique, columns as in _WINDOW_COLUMNS)."""
        c = self.columns
        for column in (_COUNT, _SUM, _INCREASE):
            np.add.at(c[column], slots, groups[column])
        c[_MIN][slots] = np.minimum(c[_MIN].take(slots), groups[_MIN])
        c[_MAX][slots] = np.maximum(c[_MAX].take(slots), groups[_MAX])
        old_ts = c[_LAST_TS].take(slots)
        newer = groups[_LAST_TS] >= old_ts
        c[_LAST][slots[newer]] = groups[_LAST][newer]
        c[_LAST_TS][slots] = np.maximum(old_ts, groups[_LAST_TS])

    def add_sketch_keys(self, keys: np.ndarray) -> None:
        self.pending.append(keys)
        self.pending_size += keys.size
        if self.pending_size > _PENDING_LIMIT:
            self.compact_sketches()

    def compact_sketches(self) -> None:
        if not self.pending:
            return
        # Two sorted runs: the stable sort in `compact` merges them in linear time.
        keys = np.concatenate((self.sketch_keys, np.sort(np.concatenate(self.pending))))
        ones = np.ones(self.pending_size, dtype=np.int64)
        self.sketch_keys, self.sketch_counts = compact(
            keys, np.concatenate((self.sketch_counts, ones))
        )
        self.pending.clear()
        self.pending_size = 0


class Aggregator:
    """Window aggregation state of one partition.

    `add` each decoded batch, then `close_due` to collect the windows that closed. The
    caller keeps one Aggregator per Kafka partition and persists it with `snapshot`.
    """

    def __init__(
        self,
        widths_s: Sequence[int],
        grace_ms: int,
        max_future_ms: int,
        idle_ms: int = 600_000,
    ) -> None:
        widths = sorted(set(widths_s))
        if not widths or widths[0] <= 0:
            raise ValueError(f"Aggregator.widths_s: {list(widths_s)} must be positive seconds")
        if grace_ms < 0:
            raise ValueError(f"Aggregator.grace_ms: {grace_ms} must be ≥ 0")
        if idle_ms < widths[-1] * 1000 + grace_ms:
            raise ValueError(
                f"Aggregator.idle_ms: {idle_ms} must be ≥ the widest window plus grace "
                f"({widths[-1] * 1000 + grace_ms}), so no open window holds an evicted series"
            )
        self.clock = WindowClock(tuple(w * 1000 for w in widths), grace_ms, max_future_ms)
        self.idle_ms = idle_ms
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._high = 0  # slots ever used; slots below it are live or free
        # Per-slot columns; kind -1 marks a free slot. `_meta` caches each series' JSON line
        # for snapshots.
        self._kind = _column(np.int8, -1, 0)
        self._last_seen = _column(np.int64, NO_TIME, 0)
        self._prev_ts = _column(np.int64, NO_TIME, 0)
        self._prev_val = _column(np.float64, 0.0, 0)
        self._ids = _column(object, None, 0)
        self._names = _column(object, None, 0)
        self._services = _column(object, None, 0)
        self._labels = _column(object, None, 0)
        self._meta = _column(object, None, 0)
        # Live slots and their metadata lines joined, as the last snapshot wrote them: kept
        # until the series set changes, which on a steady fleet is rarely.
        self._series_part: tuple[np.ndarray, np.ndarray] | None = None
        self._open: dict[tuple[int, int], _Window] = {}

    @property
    def widths_s(self) -> list[int]:
        return [w // 1000 for w in self.clock.widths_ms]

    @property
    def series_count(self) -> int:
        return len(self._slot_of)

    @property
    def slots(self) -> int:
        """Series slots ever allocated (live, or free for reuse): what memory scales with."""
        return self._high

    @property
    def open_windows(self) -> int:
        return len(self._open)

    # -- adding samples ---------------------------------------------------------------

    def add(self, batch: SampleBatch, now_ms: int) -> Rejected:
        """Aggregate the acceptable samples of `batch`; return the others with reasons."""
        ts, values, series_index = batch.ts_ms, batch.values, batch.series_index
        if ts.size == 0:
            return _no_rejects()
        slots = self._slots(batch)
        kind_ok = self._kind[slots] == batch.kinds
        clock = self.clock
        finite = np.isfinite(values)
        future_limit = now_ms + clock.max_future_ms
        in_time = ts <= future_limit
        eligible = finite & in_time
        lowest = int(ts.min())
        after_epoch = ts >= 0 if lowest < 0 else None
        if after_epoch is not None:
            eligible &= after_epoch
        if not kind_ok.all():
            eligible &= kind_ok[series_index]
        before = running_stream_time(clock.stream_time_ms, ts, eligible)
        # Nothing is late if every ts is past the watermark of the batch's final stream time,
        # the highest any sample is judged against.
        final = max(int(before[-1]), int(ts[-1]) if eligible[-1] else NO_TIME)
        if lowest >= clock.late_watermark(final):
            on_time = np.ones(ts.size, dtype=bool)
        else:
            on_time = ts >= clock.late_watermark(before)
        accepted = eligible & on_time
        take: slice | np.ndarray = slice(None)
        if accepted.all():
            rejected = _no_rejects()
        else:
            rejected = _rejections(
                ~kind_ok[series_index], ~finite, None if after_epoch is None else ~after_epoch,
                ~in_time, ~on_time, future_limit,
                lambda positions: clock.late_watermark(before[positions]),
            )
            take = np.flatnonzero(accepted)
            if take.size == 0:
                return rejected
        slot = slots[series_index[take]]
        kind = batch.kinds[series_index[take]]
        self._fold(slot, kind, ts[take], values[take], before[take])
        return rejected

    def _slots(self, batch: SampleBatch) -> np.ndarray:
        """Slot of each series of the batch, registering series not seen before."""
        get = self._slot_of.get
        slots = [get(sid, -1) for sid in batch.series_ids]
        if -1 in slots:
            for i, slot in enumerate(slots):
                if slot == -1:
                    slots[i] = get(batch.series_ids[i], -1)
                    if slots[i] == -1:
                        slots[i] = self._register(batch, i)
        return np.array(slots, dtype=np.int64)

    def _register(self, batch: SampleBatch, i: int) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._high
            self._high += 1
            if slot >= self._kind.size:
                self._grow(max(64, 2 * self._kind.size))
        series_id = batch.series_ids[i]
        self._slot_of[series_id] = slot
        self._ids[slot] = series_id
        self._names[slot] = batch.names[i]
        self._services[slot] = batch.services[i]
        self._labels[slot] = batch.labels[i]
        self._meta[slot] = None
        self._series_part = None
        self._kind[slot] = batch.kinds[i]
        return slot

    def _grow(self, capacity: int) -> None:
        extra = capacity - self._kind.size
        for name, dtype, fill in _SERIES_COLUMNS:
            setattr(self, name, np.concatenate((getattr(self, name), _column(dtype, fill, extra))))
        for window in self._open.values():
            window.grow(capacity)

    def _fold(
        self,
        slot: np.ndarray,
        kind: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        before: np.ndarray,
    ) -> None:
        """Aggregate accepted samples (input order) into their windows."""
        n = ts.size
        self.clock.advance(int(ts.max()))
        # Group by slot keeping input order inside each slot: the order counter verdicts
        # follow. Decoded batches are series-major, usually already in slot order.
        if not (slot[1:] >= slot[:-1]).all():
            order = np.argsort(slot, kind="stable")
            slot, kind, ts, values, before = (a[order] for a in (slot, kind, ts, values, before))
        slot_break = np.empty(n, dtype=bool)
        slot_break[0] = True
        np.not_equal(slot[1:], slot[:-1], out=slot_break[1:])
        ascending = bool(((ts[1:] >= ts[:-1]) | slot_break[1:]).all())
        delta = np.zeros(n)
        counters = np.flatnonzero(kind == COUNTER)
        if counters.size:
            delta[counters] = self._increases(
                slot[counters], ts[counters], values[counters], before[counters], ascending
            )
        if not ascending:
            # Sort each slot by ts (stable: ties keep input order), so every (slot, window)
            # group is contiguous for every width with its latest sample last.
            by_ts = np.lexsort((ts, slot))
            kind, ts, values, delta = kind[by_ts], ts[by_ts], values[by_ts], delta[by_ts]
        slot_starts = np.flatnonzero(slot_break)
        slot_ends = _ends(slot_starts, n)
        touched = slot[slot_ends]
        self._last_seen[touched] = np.maximum(self._last_seen[touched], ts[slot_ends])

        observed = np.flatnonzero(kind == OBSERVATION)
        if observed.size:
            obs_keys = pack(slot[observed], bucket_codes(values[observed]))
            obs_ts = ts[observed]
        first_ts, last_ts = int(ts.min()), int(ts.max())
        for width in self.clock.widths_ms:
            if first_ts // width == last_ts // width:
                # One window: the groups are the slots.
                starts, ends = slot_starts, slot_ends
                window = self._window(width, first_ts - first_ts % width)
                window.update(slot[starts], _reduce(values, delta, ts, starts, ends))
                if observed.size:
                    window.add_sketch_keys(obs_keys)
                continue
            number = ts // width
            brk = slot_break.copy()
            brk[1:] |= number[1:] != number[:-1]
            starts = np.flatnonzero(brk)
            ends = _ends(starts, n)
            groups = _reduce(values, delta, ts, starts, ends)
            group_slot, group_number = slot[starts], number[starts]
            for window_number in np.unique(group_number).tolist():
                window = self._window(width, window_number * width)
                pick = np.flatnonzero(group_number == window_number)
                window.update(group_slot[pick], [g[pick] for g in groups])
                if observed.size:
                    in_window = obs_ts // width == window_number
                    if in_window.any():
                        window.add_sketch_keys(obs_keys[in_window])

    def _window(self, width_ms: int, start_ms: int) -> _Window:
        window = self._open.get((width_ms, start_ms))
        if window is None:
            window = _Window.empty(width_ms, start_ms, self._kind.size)
            self._open[(width_ms, start_ms)] = window
        return window

    def _increases(
        self,
        slot: np.ndarray,
        ts: np.ndarray,
        values: np.ndarray,
        before: np.ndarray,
        ascending: bool,
    ) -> np.ndarray:
        """Counter increase each sample adds, updating previous samples.

        Samples come grouped by slot, in input order within a slot; `ascending` says ts never
        decreases within a slot.
        """
        n = ts.size
        stored = self._prev_ts[slot]
        if ascending:
            in_order = np.flatnonzero(ts >= stored)
        else:
            # In event-time order iff ts ≥ the largest earlier ts of the series (stored
            # previous sample included): a running max per series, done in one accumulate
            # by lifting each series into its own band of integers (bands span the batch's
            # time range, so even 10k series over 50 years stay far from int64 overflow).
            group = np.zeros(n, dtype=np.int64)
            np.cumsum(slot[1:] != slot[:-1], out=group[1:])
            low = int(ts.min())
            seed = np.maximum(stored - low, -1) + 1  # 0: no previous sample
            rel = ts - low + 1
            band = int(max(rel.max(), seed.max())) + 1
            lifted = rel + group * band
            previous_max = np.empty(n, dtype=np.int64)
            previous_max[0] = -1
            np.maximum.accumulate(lifted[:-1], out=previous_max[1:])
            np.maximum(previous_max, seed + group * band, out=previous_max)
            in_order = np.flatnonzero(lifted >= previous_max)
        out = np.zeros(n)
        if in_order.size == 0:
            return out
        io_slot, io_ts, io_values = slot[in_order], ts[in_order], values[in_order]
        first = np.empty(in_order.size, dtype=bool)
        first[0] = True
        np.not_equal(io_slot[1:], io_slot[:-1], out=first[1:])
        prior_ts = np.empty(in_order.size, dtype=np.int64)
        prior_ts[1:] = io_ts[:-1]
        prior_values = np.empty(in_order.size)
        prior_values[1:] = io_values[:-1]
        first_slots = io_slot[first]
        prior_ts[first] = self._prev_ts[first_slots]
        prior_values[first] = self._prev_val[first_slots]
        usable = (prior_ts != NO_TIME) & (prior_ts >= before[in_order] - self.idle_ms)
        step = np.where(io_values >= prior_values, io_values - prior_values, io_values)
        last = _ends(np.flatnonzero(first), in_order.size)
        self._prev_ts[io_slot[last]] = io_ts[last]
        self._prev_val[io_slot[last]] = io_values[last]
        out[in_order] = np.where(usable, step, 0.0)
        return out

    # -- closing windows --------------------------------------------------------------

    def close_due(self) -> list[WindowAggregates]:
        """Windows whose end + grace ≤ stream time, oldest end first; each is returned once."""
        due = [w for w in self._open.values() if self.clock.is_closed(w.start_ms, w.width_ms)]
        due.sort(key=lambda w: (w.start_ms + w.width_ms, w.width_ms))
        out = []
        for window in due:
            del self._open[(window.width_ms, window.start_ms)]
            out.append(self._harvest(window))
        if due:  # at most once per window width of stream time: eviction only frees memory
            self._evict_idle()
        return out

    def _harvest(self, window: _Window) -> WindowAggregates:
        rows = np.flatnonzero(window.columns[_COUNT][: self._high])
        count, total, increase, low, high, last = (
            window.columns[c].take(rows) for c in (_COUNT, _SUM, _INCREASE, _MIN, _MAX, _LAST)
        )
        kinds = self._kind.take(rows)
        increase[kinds != COUNTER] = math.nan
        quantiles = np.full((rows.size, len(QUANTILES)), math.nan)
        window.compact_sketches()
        groups, codes = unpack(window.sketch_keys)
        keys = pack(np.searchsorted(rows, groups), codes)
        if keys.size:
            group_rows, values = grouped_quantiles(
                keys, window.sketch_counts, QUANTILES, low, high
            )
            quantiles[group_rows] = values
        return WindowAggregates(
            width_s=window.width_ms // 1000,
            window_start_ms=window.start_ms,
            series_ids=self._ids.take(rows).tolist(),
            names=self._names.take(rows).tolist(),
            services=self._services.take(rows).tolist(),
            labels=self._labels.take(rows).tolist(),
            kinds=kinds,
            count=count,
            sum=total,
            min=low,
            max=high,
            last=last,
            increase=increase,
            quantiles=quantiles,
            sketch_keys=keys,
            sketch_counts=window.sketch_counts,
        )

    def _evict_idle(self) -> None:
        high = self._high
        cutoff = self.clock.stream_time_ms - self.idle_ms
        idle = np.flatnonzero((self._kind[:high] >= 0) & (self._last_seen[:high] < cutoff))
        if idle.size == 0:
            return
        for series_id in self._ids.take(idle).tolist():
            del self._slot_of[series_id]
        for name, _, fill in _SERIES_COLUMNS:
            getattr(self, name)[idle] = fill
        self._free.extend(idle.tolist())
        self._series_part = None

    # -- persistence ------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The complete state as bytes: config, stream time, series, open windows."""
        high = self._high
        if self._series_part is None:
            live = np.flatnonzero(self._kind[:high] >= 0)
            for slot in [s for s in live.tolist() if self._meta[s] is None]:
                entry = [self._ids[slot], self._names[slot], self._services[slot],
                         self._labels[slot]]
                self._meta[slot] = json.dumps(entry, separators=(",", ":")).encode()
            lines = b"\n".join(self._meta.take(live).tolist())
            self._series_part = live, np.frombuffer(lines, dtype=np.uint8)
        live, meta = self._series_part
        arrays: list[np.ndarray] = [
            live,
            meta,
            self._kind.take(live),
            self._last_seen.take(live),
            self._prev_ts.take(live),
            self._prev_val.take(live),
            np.array(self._free, dtype=np.int64),
        ]
        windows = []
        for window in self._open.values():
            window.compact_sketches()
            rows = np.flatnonzero(window.columns[_COUNT][:high])
            arrays += [rows, *(c.take(rows) for c in window.columns),
                       window.sketch_keys, window.sketch_counts]
            windows.append([window.width_ms, window.start_ms])
        header = {
            "widths_s": self.widths_s,
            "grace_ms": self.clock.grace_ms,
            "max_future_ms": self.clock.max_future_ms,
            "idle_ms": self.idle_ms,
            "stream_time_ms": self.clock.stream_time_ms,
            "high": high,
            "windows": windows,
            "arrays": [[a.dtype.str, a.size] for a in arrays],
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        body = compress(b"".join(a.tobytes() for a in arrays))
        return _SNAPSHOT_MAGIC + _HEADER_SIZE.pack(len(head)) + head + body

    @classmethod
    def restore(cls, data: bytes) -> Aggregator:
        """Rebuild an Aggregator from `snapshot()` bytes, with the configuration it had."""
        if not data.startswith(_SNAPSHOT_MAGIC):
            raise ValueError("Aggregator.restore: not an aggregator snapshot")
        offset = len(_SNAPSHOT_MAGIC)
        (head_size,) = _HEADER_SIZE.unpack_from(data, offset)
        offset += _HEADER_SIZE.size
        header = json.loads(data[offset : offset + head_size])
        body = decompress(data[offset + head_size :])
        arrays, offset = [], 0
        for dtype, size in header["arrays"]:
            array = np.frombuffer(body, dtype=dtype, count=size, offset=offset)
            arrays.append(array)
            offset += array.nbytes
        agg = cls(header["widths_s"], header["grace_ms"], header["max_future_ms"],
                  header["idle_ms"])
        agg.clock.stream_time_ms = header["stream_time_ms"]
        agg._high = high = header["high"]
        agg._grow(max(64, 1 << max(high - 1, 0).bit_length()))
        live, meta, kind, last_seen, prev_ts, prev_val, free = arrays[:7]
        lines = meta.tobytes().split(b"\n") if live.size else []
        for slot, line in zip(live.tolist(), lines, strict=True):
            series_id, name, service, labels = json.loads(line)
            agg._slot_of[series_id] = slot
            agg._ids[slot], agg._names[slot] = series_id, name
            agg._services[slot], agg._labels[slot], agg._meta[slot] = service, labels, line
        agg._kind[live] = kind
        agg._last_seen[live] = last_seen
        agg._prev_ts[live] = prev_ts
        agg._prev_val[live] = prev_val
        agg._free = free.tolist()
        per_window = 3 + len(_WINDOW_COLUMNS)
        for i, (width_ms, start_ms) in enumerate(header["windows"]):
            rows, *columns, sketch_keys, sketch_counts = arrays[7 + per_window * i :][:per_window]
            window = agg._window(width_ms, start_ms)
            for target, values in zip(window.columns, columns, strict=True):
                target[rows] = values
            window.sketch_keys, window.sketch_counts = sketch_keys.copy(), sketch_counts.copy()
        return agg


def _ends(starts: np.ndarray, n: int) -> np.ndarray:
    """Last index of each run, given run starts over n elements."""
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = n - 1
    return ends


def _reduce(
    values: np.ndarray, delta: np.ndarray, ts: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> list[np.ndarray]:
    """Per-group window columns (_COUNT.._LAST_TS) of ts-sorted, grouped samples."""
    return [
        ends - starts + 1,
        np.add.reduceat(values, starts),
        np.add.reduceat(delta, starts),
        np.minimum.reduceat(values, starts),
        np.maximum.reduceat(values, starts),
        values[ends],
        ts[ends],
    ]


def _no_rejects() -> Rejected:
    empty = np.empty(0, dtype=np.int64)
    return Rejected(empty, np.empty(0, dtype=np.int8), empty)


def _rejections(
    kind_conflict: np.ndarray,
    non_finite: np.ndarray,
    invalid_timestamp: np.ndarray | None,
    future: np.ndarray,
    late: np.ndarray,
    future_limit: int,
    late_watermark: Callable[[np.ndarray], np.ndarray],
) -> Rejected:
    """Reason per rejected sample, the first that applies in the module's precedence."""
    reason = np.full(late.size, -1, dtype=np.int8)
    for code, mask in ((LATE, late), (FUTURE, future), (INVALID_TIMESTAMP, invalid_timestamp),
                       (NON_FINITE, non_finite), (KIND_CONFLICT, kind_conflict)):
        if mask is not None:
            reason[mask] = code
    positions = np.flatnonzero(reason >= 0)
    reasons = reason[positions]
    bound = np.zeros(positions.size, dtype=np.int64)
    bound[reasons == FUTURE] = future_limit
    is_late = reasons == LATE
    bound[is_late] = late_watermark(positions[is_late])
    return Rejected(positions, reasons, bound)
