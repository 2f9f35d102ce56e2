"""Deterministic synthetic metrics: the `vigil load` workload, the two benchmark message
shapes of PRODUCT.md §8, and the accounting workload whose exact results are known.

Generators yield `Chunk`s, the samples of one series over one slice of event time as numpy
arrays, in event-time order slice by slice, so a caller hands each one to
`MetricsProducer.add_many(*chunk)` and no generator code runs per sample. Everything is a
pure function of its seed.

>>> chunks = list(Workload(seed=1, services=2, series_per_service=3, samples_per_s=60,
...                        duration_s=10).chunks())
>>> sum(c.ts_ms.size for c in chunks), chunks[0].labels["service"]
(600, 'svc-000')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from pipeline.codec import encode

KINDS = ("GAUGE", "COUNTER", "OBSERVATION")
DEFAULT_START_MS = 1_699_999_980_000  # 2023-11-14, a multiple of every window width up to 60 s
QUANTILES = (0.5, 0.9, 0.95, 0.99)


class Chunk(NamedTuple):
    """Samples of one series in time order: the arguments of `MetricsProducer.add_many`."""

    name: str
    labels: dict[str, str]  # every label but __name__; `service` among them
    kind: str
    ts_ms: np.ndarray  # int64
    values: np.ndarray  # float64


def series_id(name: str, labels: Mapping[str, str]) -> str:
    """The canonical series id the pipeline keys aggregates by: `name{k="v",...}`, sorted."""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{body}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- series shapes -------------------------------------------------------------------------

_CODES = ("200", "404", "500", "503")
_CODE_RATE = {"200": 20.0, "404": 0.8, "500": 0.2, "503": 0.05}  # requests/s per series


def _series_labels(kind: str, j: int, service: str) -> tuple[str, dict[str, str]]:
    """Name and labels of the j-th series of `kind` in a service; distinct for distinct j."""
    if kind == "COUNTER":
        return "http_requests_total", {"service": service, "code": _CODES[j % 4],
                                       "route": f"/api/r{j // 4 % 10}", "instance": f"i-{j // 40}"}
    if kind == "OBSERVATION":
        return "http_request_duration_seconds", {"service": service, "route": f"/api/r{j % 10}",
                                                 "instance": f"i-{j // 10}"}
    name = ("process_cpu_utilization", "process_memory_utilization")[j % 2]
    return name, {"service": service, "instance": f"i-{j // 2}"}


class _Block:
    """All series of one kind, generated together as (series × samples) arrays.

    Counters are cumulative request counts (Poisson increments), observations lognormal
    latencies in seconds, gauges utilisations in [0, 1] with a slow wave and noise.
    """

    def __init__(self, kind: str, services: Sequence[str], per_service: int,
                 rng: np.random.Generator) -> None:
        self.kind = kind
        self.names: list[str] = []
        self.labels: list[dict[str, str]] = []
        for service in services:
            for j in range(per_service):
                name, labels = _series_labels(kind, j, service)
                self.names.append(name)
                self.labels.append(labels)
        n = len(self.names)
        self.services = np.repeat(np.arange(len(services)), per_service)
        if kind == "COUNTER":
            base = np.array([_CODE_RATE[lab["code"]] for lab in self.labels])
            self.param = base * rng.lognormal(0.0, 0.3, n)  # requests per second
        elif kind == "OBSERVATION":
            self.param = np.log(rng.uniform(0.02, 0.2, n))  # log of the median latency
        else:
            self.param = rng.uniform(0.2, 0.6, n)  # mean utilisation
        self.period_s = rng.uniform(300.0, 3600.0, n)
        self.total = np.zeros(n)  # counters: the value of the last sample

    def __len__(self) -> int:
        return len(self.names)

    def values(self, ts_ms: np.ndarray, rng: np.random.Generator,
               dt_s: float) -> np.ndarray:
        """Values at `ts_ms` (series × samples, `dt_s` apart) continuing each series."""
        shape = ts_ms.shape
        if self.kind == "COUNTER":
            steps = rng.poisson(self.param[:, None] * dt_s, shape).astype(np.float64)
            values = np.cumsum(steps, axis=1) + self.total[:, None]
            self.total = values[:, -1].copy()
            return values
        if self.kind == "OBSERVATION":
            return rng.lognormal(self.param[:, None], 0.5, shape)
        wave = np.sin(2 * np.pi * (ts_ms / 1000.0) / self.period_s[:, None])
        noisy = self.param[:, None] * (1 + 0.15 * wave) + rng.normal(0.0, 0.02, shape)
        return np.clip(noisy, 0.0, 1.0)


def _kind_counts(total: int, mix: tuple[float, float, float]) -> dict[str, int]:
    """Series per kind from (COUNTER, OBSERVATION, GAUGE) fractions; the sum is `total`."""
    if min(mix) < 0 or not math.isclose(sum(mix), 1.0, abs_tol=1e-6):
        raise ValueError(f"Workload.mix: {mix} must be three fractions ≥ 0 adding up to 1")
    counters = round(total * mix[0])
    observations = min(total - counters, round(total * mix[1]))
    return {"COUNTER": counters, "OBSERVATION": observations,
            "GAUGE": total - counters - observations}


def service_names(count: int, prefix: str = "svc") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


# -- the load workload ---------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """Steady traffic of `services` × `series_per_service` series for `duration_s` of event
    time at `samples_per_s` samples per event-time second (all series together).

    Every series is sampled at the same interval (a whole number of milliseconds, each with
    its own phase); a slice holds a whole number of samples per series, about `slice_s`
    long, so each slice is one (series × samples) array per kind. With `counter_reset_s`,
    the counters of the first service restart from zero at the first slice from that time.
    """

    seed: int = 0
    services: int = 10
    series_per_service: int = 20
    samples_per_s: float = 2_000.0
    duration_s: float = 300.0
    start_ms: int = DEFAULT_START_MS
    mix: tuple[float, float, float] = (0.5, 0.3, 0.2)  # COUNTER, OBSERVATION, GAUGE
    slice_s: float = 5.0
    counter_reset_s: float | None = None

    def __post_init__(self) -> None:
        if self.services < 1 or self.series_per_service < 1:
            raise ValueError("Workload: services and series_per_service must be ≥ 1")
        if self.samples_per_s <= 0 or self.duration_s <= 0 or self.slice_s <= 0:
            raise ValueError("Workload: samples_per_s, duration_s and slice_s must be > 0")
        _kind_counts(self.series_per_service, self.mix)

    @property
    def series_count(self) -> int:
        return self.services * self.series_per_service

    @property
    def interval_ms(self) -> int:
        """Event time between two samples of one series."""
        return max(1, round(self.series_count * 1000 / self.samples_per_s))

    @property
    def samples_per_slice(self) -> int:
        return max(1, round(self.slice_s * 1000 / self.interval_ms))

    @property
    def slices(self) -> int:
        return math.ceil(self.duration_s * 1000 / (self.interval_ms * self.samples_per_slice))

    @property
    def sample_count(self) -> int:
        return self.slices * self.samples_per_slice * self.series_count

    def chunks(self) -> Iterator[Chunk]:
        rng = np.random.default_rng(self.seed)
        names = service_names(self.services)
        per_kind = _kind_counts(self.series_per_service, self.mix)
        blocks = [_Block(kind, names, n, rng) for kind, n in per_kind.items() if n]
        interval, k = self.interval_ms, self.samples_per_slice
        phases = [rng.integers(0, interval, len(b))[:, None] for b in blocks]
        offsets = np.arange(k, dtype=np.int64) * interval
        reset_slice = (None if self.counter_reset_s is None
                       else math.ceil(self.counter_reset_s * 1000 / (interval * k)))
        for s in range(self.slices):
            base = self.start_ms + s * interval * k
            for block, phase in zip(blocks, phases, strict=True):
                if s == reset_slice and block.kind == "COUNTER":
                    block.total[block.services == 0] = 0.0
                ts = base + phase + offsets
                values = block.values(ts, rng, interval / 1000.0)
                for i, (name, labels) in enumerate(zip(block.names, block.labels, strict=True)):
                    yield Chunk(name, labels, block.kind, ts[i], values[i])


# -- benchmark messages ----------------------------------------------------------------------

def _long(n: int) -> bytes:
    """Avro's zigzag varint encoding of one long."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return _long(len(raw)) + raw


def _varints(ts_ms: np.ndarray, width: int) -> np.ndarray | None:
    """Zigzag varints of `width` bytes each as a (..., width) uint8 array; None if some value
    needs another width (Avro writes the shortest form)."""
    z = (ts_ms.astype(np.int64) << 1) ^ (ts_ms.astype(np.int64) >> 63)
    z = z.view(np.uint64)
    low = np.uint64(1 << (7 * (width - 1))) if width > 1 else np.uint64(0)
    if width < 10 and ((z >= np.uint64(1 << (7 * width))).any() or (z < low).any()):
        return None
    shifts = np.arange(0, 7 * width, 7, dtype=np.uint64)
    out = ((z[..., None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    out[..., :-1] |= 0x80
    return out


class _Template:
    """A MetricBatch whose series all hold `samples` samples with timestamps of one varint
    width: everything but the sample bytes is fixed, so a message is one copy plus two
    scattered writes. Bytes are exactly what fastavro writes for the same record."""

    def __init__(self, source: str, symbols: Sequence[str],
                 series: Sequence[tuple[Sequence[int], str]], samples: int, width: int) -> None:
        self.source, self.symbols, self.series = source, list(symbols), list(series)
        self.width = width
        head = _string(source) + (_long(len(symbols)) + b"".join(map(_string, symbols))
                                  if symbols else b"") + b"\x00" + _long(len(series))
        parts, ts_at, values_at = [head], [], []
        size = len(head)
        for refs, kind in series:
            fixed = ((_long(len(refs)) + b"".join(map(_long, refs)) if refs else b"") + b"\x00"
                     + _long(KINDS.index(kind)) + _long(samples))
            ts_at.append(size + len(fixed))
            size += len(fixed) + samples * width
            middle = b"\x00" + _long(samples)
            values_at.append(size + len(middle))
            size += len(middle) + 8 * samples + 1
            parts += [fixed, bytes(samples * width), middle, bytes(8 * samples), b"\x00"]
        parts.append(b"\x00")
        self.buffer = np.frombuffer(b"".join(parts), dtype=np.uint8)
        self.ts_index = (np.array(ts_at)[:, None] + np.arange(samples * width)).ravel()
        self.values_index = (np.array(values_at)[:, None] + np.arange(8 * samples)).ravel()

    def fill(self, ts_ms: np.ndarray, values: np.ndarray) -> bytes:
        """The message with these (series × samples) timestamps and values."""
        varints = _varints(ts_ms, self.width)
        if varints is None:
            return encode("MetricBatch", _record(self.source, self.symbols, self.series,
                                                 ts_ms, values))
        buffer = self.buffer.copy()
        buffer[self.ts_index] = varints.ravel()
        buffer[self.values_index] = np.ascontiguousarray(values, dtype="<f8").view(np.uint8).ravel()
        return buffer.tobytes()


def _record(source: str, symbols: list[str], series: Sequence[tuple[Sequence[int], str]],
            ts_ms: np.ndarray, values: np.ndarray) -> dict[str, object]:
    return {"source": source, "symbols": symbols, "series": [
        {"labels_refs": list(refs), "kind": kind, "ts_ms": ts_ms[i].tolist(),
         "values": values[i].tolist()} for i, (refs, kind) in enumerate(series)]}


def _symbol_table(chunks: Sequence[tuple[str, Mapping[str, str], str]]
                  ) -> tuple[list[str], list[tuple[list[int], str]]]:
    """Symbols and (labels_refs, kind) per series, `__name__` first as producers write it."""
    symbols: dict[str, int] = {}
    series = []
    for name, labels, kind in chunks:
        refs = []
        for key, value in (("__name__", name), *sorted(labels.items())):
            refs += [symbols.setdefault(key, len(symbols)), symbols.setdefault(value, len(symbols))]
        series.append((refs, kind))
    return list(symbols), series


def _fixed_messages(n_messages: int, seed: int, services: int, per_kind: dict[str, int],
                    samples: int, step_ms: int, round_ms: int) -> list[tuple[bytes, bytes]]:
    """Messages of one service each, service after service in rounds; every round covers the
    next `round_ms` of event time for all services, so no partition's stream time runs ahead
    of a service sharing it and windows close as rounds go by."""
    rng = np.random.default_rng(seed)
    names = service_names(services)
    blocks = [_Block(kind, names, n, rng) for kind, n in per_kind.items() if n]
    phases = np.concatenate([rng.integers(0, step_ms, len(b)) for b in blocks])
    offsets = np.arange(samples, dtype=np.int64) * step_ms
    # Rows of the stacked blocks that belong to each service, in message order.
    first_row = np.cumsum([0, *map(len, blocks)])
    rows = [np.concatenate([np.flatnonzero(b.services == s) + first_row[i]
                            for i, b in enumerate(blocks)]) for s in range(services)]
    templates: dict[tuple[int, int], _Template] = {}
    out: list[tuple[bytes, bytes]] = []
    for r in range(math.ceil(n_messages / services)):
        ts = DEFAULT_START_MS + r * round_ms + phases[:, None] + offsets
        values = np.concatenate([
            block.values(ts[first_row[i]:first_row[i + 1]], rng, step_ms / 1000.0)
            for i, block in enumerate(blocks)])
        width = len(_long(int(ts.max())))
        for s in range(min(services, n_messages - len(out))):
            template = templates.get((s, width))
            if template is None:
                labelled = [(blocks[i].names[j], blocks[i].labels[j], blocks[i].kind)
                            for i, b in enumerate(blocks) for j in np.flatnonzero(b.services == s)]
                symbols, series = _symbol_table(labelled)
                template = templates[(s, width)] = _Template("bench", symbols, series,
                                                             samples, width)
            out.append((names[s].encode(), template.fill(ts[rows[s]], values[rows[s]])))
    return out


def standard_messages(n_messages: int, seed: int = 0, services: int = 20
                      ) -> list[tuple[bytes, bytes]]:
    """(service key, MetricBatch) pairs of the standard shape: 1,000 samples over 20 series,
    50 samples each 100 ms apart (5 s of event time per message); about 14.6 kB each."""
    return _fixed_messages(n_messages, seed, services,
                           {"COUNTER": 8, "OBSERVATION": 6, "GAUGE": 6}, 50, 100, 5_000)


def scrape_messages(n_messages: int, seed: int = 0, services: int = 10
                    ) -> list[tuple[bytes, bytes]]:
    """(service key, MetricBatch) pairs of the scrape shape: 1,000 series × 1 sample, each
    service scraped every 10 s."""
    return _fixed_messages(n_messages, seed, services,
                           {"COUNTER": 500, "OBSERVATION": 200, "GAUGE": 300}, 1, 10_000, 10_000)


# -- accounting: a workload with known results ---------------------------------------------

@dataclass(frozen=True)
class Message:
    """One message of an explicit workload: its key and series, or `raw` bytes to send as
    they are (undecodable input). Series may lack `service`: `payload` encodes them anyway."""

    key: bytes | None
    series: tuple[Chunk, ...] = ()
    raw: bytes | None = None
    source: str = "accounting"

    def payload(self) -> bytes:
        if self.raw is not None:
            return self.raw
        symbols, refs = _symbol_table([(c.name, c.labels, c.kind) for c in self.series])
        return encode("MetricBatch", {"source": self.source, "symbols": symbols, "series": [
            {"labels_refs": r, "kind": kind, "ts_ms": c.ts_ms.tolist(),
             "values": c.values.tolist()}
            for (r, kind), c in zip(refs, self.series, strict=True)]})

    @property
    def service(self) -> str | None:
        """The service the pipeline routes the message by (its first series with one)."""
        return next((c.labels["service"] for c in self.series if c.labels.get("service")),
                    None)


@dataclass(frozen=True)
class ExpectedWindow:
    """What one closed window of one series must aggregate to; None where the kind has no
    such value (increase/rate: COUNTER only; quantiles: OBSERVATION only)."""

    series_id: str
    name: str
    service: str
    kind: str
    width_s: int
    window_start_ms: int
    count: int
    sum: float
    min: float
    max: float
    mean: float
    last: float
    increase: float | None = None
    rate: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None


WindowKey = tuple[str, int, int]  # (series_id, width_s, window_start_ms)


@dataclass
class Expectation:
    """Results of a message sequence: every window its samples fall in (emitted once the
    windows close), dead-lettered samples and dead-letter records per reason."""

    windows: dict[WindowKey, ExpectedWindow]
    dead_samples: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    verdicts: list[list[np.ndarray]] = field(default_factory=list)  # per message, per series


def _by_key(message: Message) -> Hashable:
    return message.key if message.key is not None else (message.service or "").encode()


def expected_results(messages: Sequence[Message], widths_s: Sequence[int] = (10, 60),
                     grace_ms: int = 5_000,
                     partition_of: Callable[[Message], Hashable] = _by_key,
                     per_sample: bool = False) -> Expectation:
    """Compute, with plain numpy and no pipeline code, what the pipeline must output.

    Messages are taken in order; `partition_of` says which share a stream time (default:
    those with the same key, i.e. one partition per service). A sample is judged against
    the stream time before its message (with `per_sample`, before the sample itself, in
    message order), and is late when its window has closed for any width: window end +
    grace ≤ that stream time. Reasons: `missing_service` (whole series), `non_finite`
    (before lateness), `late`, `undecodable` (raw messages, counted as dead letters only).
    Dead letters are counted one per series and reason per message.
    """
    widths_ms = [w * 1000 for w in widths_s]
    streams: dict[Hashable, int] = {}
    accepted: dict[str, list[tuple[Chunk, np.ndarray]]] = {}
    result = Expectation({})

    def dead(reason: str, samples: int) -> None:
        if samples:
            result.dead_samples[reason] = result.dead_samples.get(reason, 0) + samples
        result.dead_letters[reason] = result.dead_letters.get(reason, 0) + 1

    for message in messages:
        if message.raw is not None:
            result.dead_letters["undecodable"] = result.dead_letters.get("undecodable", 0) + 1
            result.verdicts.append([])
            continue
        stream = partition_of(message)
        now = streams.get(stream, -(1 << 62))
        verdicts = []
        for chunk in message.series:
            verdict = np.full(chunk.ts_ms.size, "ok", dtype=object)
            if not chunk.labels.get("service"):
                verdict[:] = "missing_service"
                dead("missing_service", chunk.ts_ms.size)
                verdicts.append(verdict)
                continue
            finite = np.isfinite(chunk.values)
            verdict[~finite] = "non_finite"
            for i in np.flatnonzero(finite):
                t = int(chunk.ts_ms[i])
                if any(t - t % w + w + grace_ms <= now for w in widths_ms):
                    verdict[i] = "late"
                elif per_sample:
                    now = max(now, t)
            for reason in ("non_finite", "late"):
                if (verdict == reason).any():
                    dead(reason, int((verdict == reason).sum()))
            ok = verdict == "ok"
            accepted.setdefault(series_id(chunk.name, chunk.labels), []).append((chunk, ok))
            verdicts.append(verdict)
        result.verdicts.append(verdicts)
        kept = [c.ts_ms[v == "ok"] for c, v in zip(message.series, verdicts, strict=True)]
        if any(k.size for k in kept):
            streams[stream] = max(now, max(int(k.max()) for k in kept if k.size))
    for sid, parts in accepted.items():
        first = parts[0][0]
        ts = np.concatenate([c.ts_ms[ok] for c, ok in parts])
        values = np.concatenate([c.values[ok] for c, ok in parts])
        for width in widths_s:
            for window in _windows(sid, first, ts, values, width):
                result.windows[(sid, width, window.window_start_ms)] = window
    return result


def _windows(sid: str, chunk: Chunk, ts: np.ndarray, values: np.ndarray,
             width_s: int) -> Iterator[ExpectedWindow]:
    """Windows of one series' accepted samples, straight from the definitions in §5."""
    width_ms = width_s * 1000
    starts = ts - ts % width_ms
    increase_of = np.zeros(ts.size)
    if chunk.kind == "COUNTER":
        order = np.argsort(ts, kind="stable")
        v = values[order]
        step = np.where(v[1:] >= v[:-1], v[1:] - v[:-1], v[1:])  # a drop is a restart
        increase_of[order[1:]] = step
    for start in np.unique(starts):
        inside = starts == start
        w_ts, w_values = ts[inside], values[inside]
        extra: dict[str, float | None] = {}
        if chunk.kind == "COUNTER":
            increase = float(increase_of[inside].sum())
            extra = {"increase": increase, "rate": increase / width_s}
        elif chunk.kind == "OBSERVATION":
            qs = np.quantile(w_values, QUANTILES, method="lower")
            extra = dict(zip(("p50", "p90", "p95", "p99"), map(float, qs), strict=True))
        total = float(w_values.sum())
        yield ExpectedWindow(
            sid, chunk.name, chunk.labels["service"], chunk.kind, width_s, int(start),
            int(w_values.size), total, float(w_values.min()), float(w_values.max()),
            total / w_values.size, float(w_values[w_ts.size - 1 - np.argmax(w_ts[::-1])]),
            **extra)  # `last`: the largest ts_ms, the later in input order on a tie


@dataclass
class AccountingWorkload:
    """Messages to produce in order, then `closing` (after the pipeline has consumed the
    rest: the unkeyed message is re-routed, so it must not race the closing ticks), and
    what must come out. The tick series (`TICK_NAME`) closes every window; its own windows
    stay open and are not expected."""

    messages: list[Message]
    closing: list[Message]
    expected: Expectation
    widths_s: tuple[int, ...]
    grace_ms: int


TICK_NAME = "vigil_accounting_tick"


def accounting_workload(seed: int = 0, widths_s: tuple[int, ...] = (10, 60),
                        grace_ms: int = 5_000) -> AccountingWorkload:
    """150 s of three services in 5 s messages (one per service per round, round-robin),
    with, in this order of event time:

    - acct-a: NaN in its cpu gauge (t=16 s) and +inf in its latency (t=37 s);
    - acct-a: a series without `service` (5 samples) in its t=50 s message;
    - acct-b: a cpu sample and a latency sample of t≈58 s delivered with the t=60 s message
      (out of order, inside the grace);
    - acct-b: undecodable text, acct-c: a truncated MetricBatch, after the t=60 s round;
    - acct-a: its 200 counter restarts from zero at t=72 s;
    - acct-c: a 500-counter sample (t=63 s) and a cpu sample (t=62 s) delivered with the
      t=80 s message: late for 10 s windows, not yet for 60 s ones;
    - acct-c: a NaN in its 200 counter (t=46 s);
    - acct-c: a latency sample of t=20 s delivered with the t=100 s message (late for both);
    - acct-d: one message without a key at t=150 s, last;
    - closing: one tick per service at t=200 s.
    """
    rng = np.random.default_rng(seed)
    start = DEFAULT_START_MS
    services = ["acct-a", "acct-b", "acct-c"]
    rounds = 30
    held: dict[tuple[str, str, int], list[tuple[int, float]]] = {}  # stragglers to deliver

    def series_of(service: str, offset_ms: int) -> dict[str, Chunk]:
        seconds = np.arange(rounds * 5, dtype=np.int64) * 1000 + start + offset_ms
        halves = np.arange(rounds * 10, dtype=np.int64) * 500 + start + offset_ms
        halves += rng.integers(0, 100, halves.size)
        ok = np.cumsum(rng.poisson(20, seconds.size)).astype(np.float64)
        errors = np.cumsum(rng.poisson(0.5, seconds.size)).astype(np.float64)
        return {
            "ok": Chunk("http_requests_total", {"service": service, "code": "200"}, "COUNTER",
                        seconds, ok),
            "errors": Chunk("http_requests_total", {"service": service, "code": "500"},
                            "COUNTER", seconds, errors),
            "latency": Chunk("http_request_duration_seconds", {"service": service},
                             "OBSERVATION", halves, rng.lognormal(np.log(0.05), 0.5, halves.size)),
            "cpu": Chunk("process_cpu_utilization", {"service": service}, "GAUGE", seconds,
                         np.round(rng.uniform(0.2, 0.6, seconds.size), 3)),
        }

    data = {s: series_of(s, 100 * i) for i, s in enumerate(services)}
    a, c = data["acct-a"], data["acct-c"]
    a["cpu"].values[16] = math.nan
    a["latency"].values[74] = math.inf
    c["ok"].values[46] = math.nan
    a["ok"].values[72:] -= a["ok"].values[71]  # restart: the t=72 s sample drops to its step
    # Stragglers: (service, series, index) → delivered with the message of `deliver_round`.
    stragglers = {("acct-b", "cpu", 58): 12, ("acct-b", "latency", 117): 12,
                  ("acct-c", "errors", 63): 16, ("acct-c", "cpu", 62): 16,
                  ("acct-c", "latency", 40): 20}
    for (service, key, index), deliver in stragglers.items():
        chunk = data[service][key]
        held.setdefault((service, key, deliver), []).append(
            (int(chunk.ts_ms[index]), float(chunk.values[index])))
    messages: list[Message] = []
    for r in range(rounds):
        lo, hi = start + r * 5_000, start + (r + 1) * 5_000
        for i, service in enumerate(services):
            series = []
            for key, chunk in data[service].items():
                keep = (chunk.ts_ms >= lo + 100 * i) & (chunk.ts_ms < hi + 100 * i)
                keep[[j for (s, k, j) in stragglers if s == service and k == key]] = False
                ts, values = chunk.ts_ms[keep], chunk.values[keep]
                late = held.get((service, key, r), [])
                if late:
                    ts = np.append(ts, [t for t, _ in late])
                    values = np.append(values, [v for _, v in late])
                series.append(Chunk(chunk.name, chunk.labels, chunk.kind, ts, values))
            if service == "acct-a" and r == 10:
                orphan_ts = lo + np.arange(5, dtype=np.int64) * 1000
                series.append(Chunk("http_requests_total", {"code": "200", "instance": "orphan"},
                                    "COUNTER", orphan_ts, np.arange(5, dtype=np.float64)))
            messages.append(Message(service.encode(), tuple(series)))
        if r == 12:
            messages.append(Message(b"acct-b", raw=b"this is not avro at all"))
            whole = messages[-2].payload()
            messages.append(Message(b"acct-c", raw=whole[: len(whole) // 2]))
    last = start + rounds * 5_000
    d_ts = last + np.arange(5, dtype=np.int64) * 1000
    messages.append(Message(None, (
        Chunk("http_requests_total", {"service": "acct-d", "code": "200"}, "COUNTER", d_ts,
              np.array([5.0, 9.0, 14.0, 2.0, 6.0])),
        Chunk("process_cpu_utilization", {"service": "acct-d"}, "GAUGE", d_ts,
              np.array([0.5, 0.25, 0.75, 0.125, 0.5])))))
    tick = np.array([last + 50_000], dtype=np.int64)
    closing = [Message(s.encode(), (Chunk(TICK_NAME, {"service": s}, "GAUGE", tick,
                                          np.ones(1)),))
               for s in [*services, "acct-d"]]
    expected = expected_results(messages, widths_s, grace_ms)
    return AccountingWorkload(messages, closing, expected, tuple(widths_s), grace_ms)
