"""Synthetic workloads: determinism, benchmark message shapes, the fast encoder against
fastavro, and the accounting workload's independently computed expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.aggregate import Aggregator
from pipeline.codec import CodecError, decode, encode
from pipeline.metricbatch import decode_metric_batch
from pipeline.workload import (
    DEFAULT_START_MS,
    TICK_NAME,
    Chunk,
    Message,
    Workload,
    _Template,
    accounting_workload,
    expected_results,
    scrape_messages,
    series_id,
    standard_messages,
)

S = 1000  # ms per second


def _arrays(chunks: list[Chunk]) -> list[tuple[str, dict[str, str], str, bytes, bytes]]:
    return [(c.name, c.labels, c.kind, c.ts_ms.tobytes(), c.values.tobytes()) for c in chunks]


# -- Workload --------------------------------------------------------------------------------

def test_workload_is_a_function_of_its_seed() -> None:
    w = Workload(seed=7, services=3, series_per_service=10, samples_per_s=600, duration_s=20)
    assert _arrays(list(w.chunks())) == _arrays(list(w.chunks()))
    other = Workload(seed=8, services=3, series_per_service=10, samples_per_s=600, duration_s=20)
    assert _arrays(list(w.chunks())) != _arrays(list(other.chunks()))


def test_workload_yields_slices_in_event_time_order_with_realistic_shapes() -> None:
    w = Workload(seed=1, services=4, series_per_service=10, samples_per_s=400, duration_s=60,
                 slice_s=5, counter_reset_s=30)
    chunks = list(w.chunks())
    assert sum(c.ts_ms.size for c in chunks) == w.sample_count == 400 * 60
    per_slice = len(chunks) // w.slices
    assert per_slice == w.series_count
    spans = [(min(int(c.ts_ms.min()) for c in group), max(int(c.ts_ms.max()) for c in group))
             for group in (chunks[i:i + per_slice] for i in range(0, len(chunks), per_slice))]
    assert all(hi < lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False))
    ids = {series_id(c.name, c.labels) for c in chunks}
    assert len(ids) == w.series_count
    by_id: dict[str, list[Chunk]] = {}
    for c in chunks:
        assert c.labels["service"].startswith("svc-")
        by_id.setdefault(series_id(c.name, c.labels), []).append(c)
    resets = set()
    for sid, parts in by_id.items():
        values = np.concatenate([p.values for p in parts])
        kind = parts[0].kind
        if kind == "COUNTER":
            drops = np.flatnonzero(np.diff(values) < 0)
            if drops.size:
                resets.add(parts[0].labels["service"])
                assert drops.size == 1
        elif kind == "OBSERVATION":
            assert (values > 0).all() and 0.005 < np.median(values) < 1.0, sid
        else:
            assert ((values >= 0) & (values <= 1)).all(), sid
    assert resets == {"svc-000"}


def test_workload_kind_mix_is_respected_and_validated() -> None:
    w = Workload(services=1, series_per_service=10, mix=(0.2, 0.3, 0.5), duration_s=5)
    kinds = [c.kind for c in w.chunks()]
    assert (kinds.count("COUNTER"), kinds.count("OBSERVATION"), kinds.count("GAUGE")) == (2, 3, 5)
    with pytest.raises(ValueError, match="mix"):
        Workload(mix=(0.5, 0.5, 0.5))


# -- benchmark messages ----------------------------------------------------------------------

@pytest.mark.parametrize(("make", "series", "per_series"),
                         [(standard_messages, 20, 50), (scrape_messages, 1000, 1)])
def test_benchmark_messages_have_their_shape(make, series: int, per_series: int) -> None:
    messages = make(45, seed=3)
    assert messages == make(45, seed=3)
    assert messages != make(45, seed=4)
    assert len(messages) == 45
    first_ts = []
    for key, payload in messages:
        batch, errors = decode_metric_batch(payload)
        assert errors == []
        assert batch.sample_count == 1000
        assert len(batch.series_ids) == len(set(batch.series_ids)) == series
        assert (np.bincount(batch.series_index) == per_series).all()
        assert set(batch.services) == {key.decode()}
        assert np.isfinite(batch.values).all()
        first_ts.append(int(batch.ts_ms.min()))
    # Keys spread over services; every round moves event time on, so windows close.
    assert len({key for key, _ in messages}) > 1
    assert max(first_ts) - min(first_ts) >= 10 * S


def test_benchmark_bytes_are_what_fastavro_writes() -> None:
    for _, payload in standard_messages(3) + scrape_messages(2):
        assert encode("MetricBatch", decode("MetricBatch", payload)) == payload


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=6, max_size=6),
       st.lists(st.floats(allow_nan=False), min_size=6, max_size=6),
       st.sampled_from([1, 6, 9]))
def test_template_matches_fastavro_whatever_the_timestamps(ts: list[int], values: list[float],
                                                          width: int) -> None:
    symbols = ["__name__", "m", "service", "a", "code", "200"]
    series = [([0, 1, 2, 3], "GAUGE"), ([0, 1, 2, 3, 4, 5], "COUNTER"), ([], "OBSERVATION")]
    template = _Template("src", symbols, series, 2, width)
    ts2 = np.array(ts, dtype=np.int64).reshape(3, 2)
    values2 = np.array(values).reshape(3, 2)
    expected = encode("MetricBatch", {"source": "src", "symbols": symbols, "series": [
        {"labels_refs": refs, "kind": kind, "ts_ms": ts2[i].tolist(), "values": values2[i].tolist()}
        for i, (refs, kind) in enumerate(series)]})
    assert template.fill(ts2, values2) == expected


# -- expectations ----------------------------------------------------------------------------

def _chunk(name: str, kind: str, ts_s: list[float], values: list[float],
           **labels: str) -> Chunk:
    return Chunk(name, {"service": "a", **labels}, kind,
                 (np.array(ts_s) * S).astype(np.int64), np.array(values, dtype=float))


def test_expectations_by_hand() -> None:
    counter = 'c{service="a"}'
    messages = [
        Message(b"a", (_chunk("c", "COUNTER", [1, 5, 9], [10, 15, 3]),
                       _chunk("g", "GAUGE", [2, 8, 4], [0.5, 0.25, 0.75]))),
        Message(b"a", (_chunk("c", "COUNTER", [12, 14], [4, math.nan]),
                       _chunk("g", "GAUGE", [3, 16], [1.0, 2.0]))),
        # Stream time is 16 s: [0, 10) closed at 15 s, so the 9.5 s sample is late.
        Message(b"a", (_chunk("o", "OBSERVATION", [9.5, 21, 22, 23, 24], [9, 1, 2, 3, 4]),)),
        Message(b"a", raw=b"\xff"),
    ]
    got = expected_results(messages, widths_s=(10,), grace_ms=5 * S)
    first = got.windows[(counter, 10, 0)]
    # 10 → 15 adds 5, 15 → 3 is a restart and adds 3; the first sample ever adds nothing.
    assert (first.count, first.increase, first.rate, first.last) == (3, 8.0, 0.8, 3.0)
    second = got.windows[(counter, 10, 10_000)]
    assert (second.count, second.sum, second.increase) == (1, 4.0, 1.0)  # NaN refused
    gauge = got.windows[('g{service="a"}', 10, 0)]
    assert (gauge.count, gauge.min, gauge.max, gauge.last, gauge.mean) == (4, 0.25, 1.0, 0.25,
                                                                           0.625)
    assert gauge.increase is None and gauge.p50 is None
    obs = got.windows[('o{service="a"}', 10, 20_000)]
    assert (obs.count, obs.p50, obs.p90, obs.p99) == (4, 2.0, 3.0, 3.0)  # numpy 'lower'
    assert ('o{service="a"}', 10, 0) not in got.windows
    assert got.dead_samples == {"non_finite": 1, "late": 1}
    assert got.dead_letters == {"non_finite": 1, "late": 1, "undecodable": 1}


def test_per_message_stream_time_judges_a_whole_message_alike() -> None:
    # The message's later series starts before the first series' last sample, minus grace.
    message = Message(b"a", (_chunk("g", "GAUGE", [0, 20], [1, 2]),
                             _chunk("h", "GAUGE", [1, 2], [3, 4])))
    per_message = expected_results([message], widths_s=(10,), grace_ms=0)
    per_sample = expected_results([message], widths_s=(10,), grace_ms=0, per_sample=True)
    assert per_message.dead_samples == {}
    assert per_sample.dead_samples == {"late": 2}


# -- the accounting workload -----------------------------------------------------------------

@pytest.fixture(scope="module")
def accounting():
    return accounting_workload(seed=0)


def test_accounting_is_deterministic(accounting) -> None:
    again = accounting_workload(seed=0)
    assert [(m.key, m.payload()) for m in again.messages] == [
        (m.key, m.payload()) for m in accounting.messages]
    assert again.expected.windows == accounting.expected.windows


def test_accounting_holds_every_kind_of_trouble(accounting) -> None:
    exp = accounting.expected
    assert exp.dead_samples == {"non_finite": 3, "missing_service": 5, "late": 3}
    assert exp.dead_letters == {"non_finite": 3, "missing_service": 1, "late": 3,
                                "undecodable": 2}
    raws = [m for m in accounting.messages if m.raw is not None]
    for m in raws:
        with pytest.raises(CodecError):
            decode("MetricBatch", m.raw)
    unkeyed = [m for m in accounting.messages if m.key is None]
    assert [m.service for m in unkeyed] == ["acct-d"] and accounting.messages[-1] is unkeyed[0]
    orphan = [m for m in accounting.messages
              if any("service" not in c.labels for c in m.series)]
    assert len(orphan) == 1
    _, errors = decode_metric_batch(orphan[0].payload())
    assert [e.reason for e in errors] == ["missing_service"]
    # acct-a's 200 counter restarts at t=72 s: its window's increase includes the drop.
    reset = exp.windows[(series_id("http_requests_total", {"service": "acct-a", "code": "200"}),
                         10, DEFAULT_START_MS + 70 * S)]
    assert reset.increase is not None and 0 < reset.increase < 400
    # The out-of-order acct-b samples arrived in time and count in their window.
    cpu_b = exp.windows[(series_id("process_cpu_utilization", {"service": "acct-b"}), 10,
                         DEFAULT_START_MS + 50 * S)]
    assert cpu_b.count == 10
    assert not any(k[0].startswith(TICK_NAME) for k in exp.windows)


def test_accounting_verdicts_do_not_depend_on_partitioning_or_stream_time_rule(accounting
                                                                               ) -> None:
    reference = accounting.expected
    one_partition = expected_results(accounting.messages, partition_of=lambda m: 0)
    per_sample = expected_results(accounting.messages, per_sample=True)
    both = expected_results(accounting.messages, partition_of=lambda m: 0, per_sample=True)
    for other in (one_partition, per_sample, both):
        assert other.windows == reference.windows
        assert other.dead_samples == reference.dead_samples
        for ours, theirs in zip(reference.verdicts, other.verdicts, strict=True):
            assert all((a == b).all() for a, b in zip(ours, theirs, strict=True))


def test_the_aggregator_agrees_with_the_accounting_expectations(accounting) -> None:
    aggregators: dict[bytes, Aggregator] = {}
    rejected: dict[str, int] = {}
    rows = {}
    for m in accounting.messages + accounting.closing:
        if m.raw is not None:
            continue
        key = m.key or (m.service or "").encode()
        agg = aggregators.setdefault(key, Aggregator([10, 60], 5 * S, 300 * S))
        batch, _ = decode_metric_batch(m.payload())
        for reason, n in agg.add(batch, now_ms=DEFAULT_START_MS + 86_400 * S).reason_counts(
                ).items():
            rejected[reason] = rejected.get(reason, 0) + n
    for agg in aggregators.values():
        for window in agg.close_due():
            for row in window:
                if row.name != TICK_NAME:
                    rows[(row.series_id, row.width_s, row.window_start_ms)] = row
    expected = accounting.expected
    assert rejected == {k: v for k, v in expected.dead_samples.items() if k != "missing_service"}
    assert rows.keys() == expected.windows.keys()
    for key, want in expected.windows.items():
        row = rows[key]
        for name in ("count", "sum", "min", "max", "mean", "last", "increase", "rate"):
            w, g = getattr(want, name), getattr(row, name)
            assert (w is None and g is None) or math.isclose(w, g, rel_tol=1e-9), (key, name)
        for name in ("p50", "p90", "p95", "p99"):
            w, g = getattr(want, name), getattr(row, name)
            assert (w is None and g is None) or math.isclose(w, g, rel_tol=0.01), (key, name)
