"""Whole-window encoders: Avro byte-identical to fastavro, binary COPY tuples that say what
the rows hold, internal.windows messages that carry many records and read back in order."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.aggregate import Aggregator, WindowAggregates
from pipeline.aggregate_codec import (
    COPY_COLUMNS,
    AggregateEncoder,
    decode_windows,
    windows_messages,
)
from pipeline.batch import SampleBatch
from pipeline.codec import CodecError, encode
from pipeline.sinks.timescale import METRIC_AGGREGATES
from pipeline.slo import le_key

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
SERIES = st.tuples(st.sampled_from(["m", "http_requests_total", "é\\\t\"x"]), TEXT,
                   st.sampled_from(["svc-a", "svc\tb", "ünï"]), st.integers(0, 2))
CATALOG: dict[str, Mapping[str, Any]] = {
    "svc-a": {"team": "core", "tier": "1", "environment": None},
    "ünï": {"team": "t\\\n", "tier": None, "environment": "prod"},
}


def closed_windows(series: list[tuple[str, str, str, int]], values: list[float],
                   seed: int) -> list[WindowAggregates]:
    """Windows the aggregator closes over random samples of the given series."""
    unique = {f'{name}{{extra="{extra}",service="{svc}"}}': (name, extra, svc, kind)
              for name, extra, svc, kind in series}
    ids = list(unique)
    rng = np.random.default_rng(seed)
    n = len(values)
    batch = SampleBatch(
        "test", ids, [unique[i][0] for i in ids], [unique[i][2] for i in ids],
        [{"extra": unique[i][1], "service": unique[i][2]} for i in ids],
        np.array([unique[i][3] for i in ids], dtype=np.int8),
        rng.integers(0, len(ids), n).astype(np.int32),
        np.sort(rng.integers(1_700_000_000_000, 1_700_000_030_000, n)),
        np.array(values))
    agg = Aggregator([10, 60], grace_ms=0, max_future_ms=10**9)
    agg.add(batch, now_ms=1_700_000_000_000)
    closer = SampleBatch("test", ['z{service="svc-a"}'], ["z"], ["svc-a"],
                         [{"service": "svc-a"}], np.zeros(1, np.int8), np.zeros(1, np.int32),
                         np.array([1_700_000_200_000]), np.ones(1))
    agg.add(closer, now_ms=1_700_000_200_000)
    return agg.close_due()


def expected_records(window: WindowAggregates, bounds: tuple[float, ...]
                     ) -> list[dict[str, Any]]:
    """What the stage published before the encoder existed: one dict per row."""
    le = {le_key(b): window.count_at_most(b).tolist() for b in bounds}
    out = []
    for i, row in enumerate(window):
        info = CATALOG.get(row.service)
        out.append({
            "series_id": row.series_id, "name": row.name, "service": row.service,
            "labels": row.labels, "kind": row.kind, "width_s": row.width_s,
            "window_start_ms": row.window_start_ms,
            "window_end_ms": row.window_start_ms + row.width_s * 1000,
            **{k: info.get(k) if info else None for k in ("team", "tier", "environment")},
            "count": row.count, "sum": row.sum, "min": row.min, "max": row.max,
            "mean": row.mean, "last": row.last, "increase": row.increase, "rate": row.rate,
            "p50": row.p50, "p90": row.p90, "p95": row.p95, "p99": row.p99,
            "le_counts": ({k: float(v[i]) for k, v in le.items()}
                          if row.kind == "OBSERVATION" else {}),
        })
    return out


def parse_copy_row(data: bytes) -> dict[str, bytes | None]:
    """One binary COPY tuple: field count, then (length, bytes) per field, -1 for NULL."""
    (fields,) = struct.unpack_from("!h", data)
    pos, out = 2, {}
    for column in COPY_COLUMNS[:fields]:
        (size,) = struct.unpack_from("!i", data, pos)
        pos += 4
        out[column] = None if size < 0 else data[pos:pos + size]
        pos += max(size, 0)
    assert pos == len(data) and fields == len(COPY_COLUMNS)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(SERIES, min_size=1, max_size=6),
       st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
       st.sampled_from([(), (0.25,), (0.1, 1.0, 0.1)]), st.integers(0, 1000))
def test_avro_is_byte_identical_to_fastavro_and_copy_rows_hold_the_row(
        series: list[tuple[str, str, str, int]], values: list[float],
        bounds: tuple[float, ...], seed: int) -> None:
    encoder = AggregateEncoder(bounds)
    windows = closed_windows(series, values, seed)
    assert windows
    for window in windows * 2:  # the second pass runs from the per-series cache
        got = encoder.encode(window, CATALOG.get)
        expected = expected_records(window, bounds)
        assert got.records == [encode("WindowAggregate", r) for r in expected]
        assert decode_windows(b"".join(got.records)) == expected
        for row, record in zip(got.rows, expected, strict=True):
            fields = parse_copy_row(row)
            assert struct.unpack("!q", fields["bucket"] or b"")[0] == \
                (record["window_start_ms"] - 946_684_800_000) * 1000
            assert fields["labels"] is not None and fields["labels"][:1] == b"\x01"
            for column in ("service", "name", "series_id", "kind", "team", "tier",
                           "environment"):
                value = fields[column]
                assert (value.decode() if value is not None else None) == record[column]
            assert struct.unpack("!q", fields["count"] or b"")[0] == record["count"]
            for column in ("sum", "min", "max", "mean", "last", "increase", "rate", "p50",
                           "p90", "p95", "p99"):
                value = fields[column]
                assert (struct.unpack("!d", value)[0] if value is not None else None) == \
                    record[column]


def test_copy_columns_are_the_tables_columns() -> None:
    assert sorted(COPY_COLUMNS) == sorted(METRIC_AGGREGATES.columns)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.binary(min_size=1,
                                                                       max_size=40)),
                max_size=40), st.integers(1, 100))
def test_windows_messages_keep_each_services_records_in_order_within_the_limit(
        rows: list[tuple[str, bytes]], limit: int) -> None:
    window = AggregateEncoder().encode(closed_windows([("m", "", "svc-a", 0)], [1.0], 0)[0],
                                       CATALOG.get)
    window.services = [s for s, _ in rows]
    window.records = [r for _, r in rows]
    messages = windows_messages(window, limit)
    for service in {s for s, _ in rows}:
        payloads = [p for s, p in messages if s == service]
        assert b"".join(payloads) == b"".join(r for s, r in rows if s == service)
        assert all(len(p) <= limit or len(p) == max(len(r) for _, r in rows) or
                   p in {r for _, r in rows} for p in payloads)


def test_a_bad_record_in_a_windows_message_is_named_by_position() -> None:
    window = closed_windows([("m", "x", "svc-a", 0)], [1.0, 2.0], 1)[0]
    good = AggregateEncoder().encode(window, CATALOG.get).records[0]
    with pytest.raises(CodecError, match=r"WindowAggregate\[1\]"):
        decode_windows(good + good[:-3])
    with pytest.raises(CodecError, match=r"WindowAggregate"):
        decode_windows(b"")
