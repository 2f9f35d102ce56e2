"""The fast MetricBatch decoder must agree exactly with fastavro, or refuse the bytes."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.batch import KIND_NAMES, SampleBatch
from pipeline.codec import CodecError, decode, encode
from pipeline.metricbatch import MetricBatchDecoder, decode_metric_batch

T0 = 1_760_000_000_000


def zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def blocked(items: list[bytes], cuts: list[int], sized: bool) -> bytes:
    """An Avro array written as several blocks, optionally with negative counts + sizes."""
    out = bytearray()
    bounds = [0, *sorted(c % (len(items) + 1) for c in cuts), len(items)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        body = b"".join(items[a:b])
        out += zigzag(-(b - a)) + zigzag(len(body)) if sized else zigzag(b - a)
        out += body
    return bytes(out + b"\x00")


def encode_blocked(record: dict[str, Any], cuts: list[int], sized: bool) -> bytes:
    """MetricBatch bytes with every array split into blocks: valid Avro no writer we use makes."""

    def string(s: str) -> bytes:
        return zigzag(len(s.encode())) + s.encode()

    series = [
        blocked([zigzag(r) for r in s["labels_refs"]], cuts, sized)
        + zigzag(KIND_NAMES.index(s["kind"]))
        + blocked([zigzag(t) for t in s["ts_ms"]], cuts, sized)
        + blocked([struct.pack("<d", v) for v in s["values"]], cuts, sized)
        for s in record["series"]
    ]
    return (
        string(record["source"])
        + blocked([string(s) for s in record["symbols"]], cuts, sized)
        + blocked(series, cuts, sized)
    )


def series_id(labels: dict[str, str]) -> str:
    def escape(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    body = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{labels['__name__']}{{{body}}}"


def assert_matches(batch: SampleBatch, record: dict[str, Any]) -> None:
    """`batch` holds exactly the series of `record` (all of them well-formed)."""
    series = record["series"]
    symbols = record["symbols"]
    labels = [
        {symbols[r[i]]: symbols[r[i + 1]] for i in range(0, len(r), 2)}
        for r in (s["labels_refs"] for s in series)
    ]
    assert batch.source == record["source"]
    assert batch.series_ids == [series_id(ls) for ls in labels]
    assert batch.names == [ls["__name__"] for ls in labels]
    assert batch.services == [ls["service"] for ls in labels]
    assert batch.labels == [{k: v for k, v in ls.items() if k != "__name__"} for ls in labels]
    assert batch.kinds.dtype == np.int8
    assert batch.kinds.tolist() == [KIND_NAMES.index(s["kind"]) for s in series]
    assert batch.series_index.dtype == np.int32
    assert batch.series_index.tolist() == [i for i, s in enumerate(series) for _ in s["ts_ms"]]
    assert batch.ts_ms.dtype == np.int64
    assert batch.ts_ms.tolist() == [t for s in series for t in s["ts_ms"]]
    assert batch.values.dtype == np.float64
    expected = np.array([v for s in series for v in s["values"]], dtype=np.float64)
    assert batch.values.view(np.int64).tolist() == expected.view(np.int64).tolist()


label_values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)


@st.composite
def metric_batches(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed batches: shared symbols, required labels, equal lengths, wild numbers."""
    symbols = ["__name__", "service", *draw(st.lists(label_values, max_size=10, unique=True))]
    extra_names = [s for s in symbols[2:] if s not in ("__name__", "service")]
    series = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.integers(0, 12))
        names = draw(st.lists(st.sampled_from(extra_names), unique=True)) if extra_names else []
        non_empty = st.sampled_from([i for i, s in enumerate(symbols) if s])
        refs = [0, draw(non_empty), 1, draw(non_empty)]
        for name in names:
            refs += [symbols.index(name), draw(st.integers(0, len(symbols) - 1))]
        series.append(
            {
                "labels_refs": refs,
                "kind": draw(st.sampled_from(KIND_NAMES)),
                "ts_ms": draw(
                    st.lists(
                        st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(T0, T0 + 10**6)),
                        min_size=n,
                        max_size=n,
                    )
                ),
                "values": [
                    struct.unpack("<d", struct.pack("<Q", bits))[0]
                    for bits in draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))
                ],
            }
        )
    return {"source": draw(st.text(max_size=8)), "symbols": symbols, "series": series}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metric_batches())
def test_agrees_with_fastavro(record: dict[str, Any]) -> None:
    payload = encode("MetricBatch", record)
    batch, errors = MetricBatchDecoder().decode(payload)
    assert errors == []
    assert_matches(batch, record)
    again, _ = MetricBatchDecoder().decode(payload)
    assert again.series_ids == batch.series_ids  # cached path too


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metric_batches(), st.lists(st.integers(0, 40), max_size=4), st.booleans())
def test_reads_multi_block_arrays(record: dict[str, Any], cuts: list[int], sized: bool) -> None:
    payload = encode_blocked(record, cuts, sized)
    # fastavro reads the same record from them (compared as bytes: NaN != NaN)
    assert encode("MetricBatch", decode("MetricBatch", payload)) == encode("MetricBatch", record)
    batch, errors = MetricBatchDecoder().decode(payload)
    assert errors == []
    assert_matches(batch, record)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(metric_batches(), st.booleans())
def test_every_truncation_and_any_trailing_byte_is_refused(
    record: dict[str, Any], blocks: bool
) -> None:
    payload = encode_blocked(record, [1, 3], True) if blocks else encode("MetricBatch", record)
    decoder = MetricBatchDecoder()
    for end in range(len(payload)):
        with pytest.raises(CodecError, match="^MetricBatch"):
            decoder.decode(payload[:end])
    with pytest.raises(CodecError, match="^MetricBatch: 1 trailing bytes"):
        decoder.decode(payload + b"\x00")


def good_record() -> dict[str, Any]:
    return {
        "source": "test",
        "symbols": ["__name__", "up", "service", "checkout", "zone", 'a"b\\c\nd', "payments"],
        "series": [
            {"labels_refs": [0, 1, 2, 3, 4, 5], "kind": "GAUGE", "ts_ms": [T0, T0 + 1],
             "values": [1.0, float("nan")]},
            {"labels_refs": [2, 6, 0, 1], "kind": "COUNTER", "ts_ms": [T0 - 5], "values": [3.0]},
        ],
    }  # fmt: skip


def test_series_id_is_sorted_and_escaped() -> None:
    batch, errors = decode_metric_batch(encode("MetricBatch", good_record()))
    assert not errors
    assert batch.series_ids == [
        'up{service="checkout",zone="a\\"b\\\\c\\nd"}',
        'up{service="payments"}',
    ]
    assert batch.labels[1] == {"service": "payments"}
    assert batch.sample_count == 3


@pytest.mark.parametrize(
    ("refs", "ts", "values", "reason", "detail"),
    [
        ([0, 1, 4, 5], [T0], [1.0], "missing_service", "no service label (name=up)"),
        ([2, 3], [T0], [1.0], "missing_name", "no __name__ label"),
        ([0, 1, 2, 3, 2, 6], [T0], [1.0], "duplicate_label", "label 'service' appears more"),
        ([0, 1, 2, 3], [T0, T0 + 1], [1.0], "length_mismatch", "2 ts_ms but 1 values"),
    ],
)
def test_a_bad_series_is_reported_alone(
    refs: list[int], ts: list[int], values: list[float], reason: str, detail: str
) -> None:
    record = good_record()
    bad = {"labels_refs": refs, "kind": "OBSERVATION", "ts_ms": ts, "values": values}
    record["series"].insert(1, bad)
    batch, errors = MetricBatchDecoder().decode(encode("MetricBatch", record))
    assert_matches(batch, {**record, "series": [record["series"][0], record["series"][2]]})
    [error] = errors
    assert (error.index, error.reason) == (1, reason)
    assert error.detail.startswith(f"MetricBatch.series[1]: {detail}")
    assert decode("MetricBatch", error.payload) == {**record, "series": [bad]}


@pytest.mark.parametrize(
    ("refs", "kind", "message"),
    [
        ([0, 1, 2], 0, r"^MetricBatch\.series\[1\]\.labels_refs: odd length 3"),
        ([0, 1, 2, 7], 0, r"^MetricBatch\.series\[1\]\.labels_refs: symbol index 7 out of range"),
        ([0, 1, 2, -1], 0, r"^MetricBatch\.series\[1\]\.labels_refs: symbol index -1 out of"),
        ([0, 1, 2, 3], 3, r"^MetricBatch\.series\[1\]\.kind: enum index 3 at byte \d+ is not"),
        ([0, 1, 2, 3], -1, r"^MetricBatch\.series\[1\]\.kind: enum index -1 at byte \d+ is not"),
    ],
)
def test_structural_errors_refuse_the_message(refs: list[int], kind: int, message: str) -> None:
    record = good_record()
    record["series"][1]["labels_refs"] = refs
    payload = encode("MetricBatch", record)
    if kind:
        cut = payload.rindex(zigzag(1) + zigzag(T0 - 5)) - 1  # the kind byte of series[1]
        payload = payload[:cut] + zigzag(kind) + payload[cut + 1 :]
    with pytest.raises(CodecError, match=message):
        MetricBatchDecoder().decode(payload)


def test_overlong_and_overflowing_timestamps_are_refused() -> None:
    record = good_record()
    record["series"] = record["series"][1:]
    payload = encode("MetricBatch", record)
    ts_at = payload.rindex(zigzag(T0 - 5))
    width = len(zigzag(T0 - 5))
    for bad in (b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x02"):
        with pytest.raises(CodecError, match=r"^MetricBatch\.series\[0\]\.ts_ms\[0\]: varint"):
            MetricBatchDecoder().decode(payload[:ts_at] + bad + payload[ts_at + width :])


def test_random_garbage_raises_only_codec_errors() -> None:
    rng = np.random.default_rng(11)
    decoder = MetricBatchDecoder()
    for size in rng.integers(0, 300, 400):
        try:
            decoder.decode(rng.bytes(int(size)))
        except CodecError as exc:
            assert str(exc).startswith("MetricBatch")


def test_small_caches_still_decode_exactly() -> None:
    decoder = MetricBatchDecoder(max_tables=1, max_series=1)
    first = encode("MetricBatch", good_record())
    other = good_record()
    other["symbols"] = [*other["symbols"], "unused"]
    second = encode("MetricBatch", other)
    for payload, record in [(first, good_record()), (second, other), (first, good_record())]:
        batch, _ = decoder.decode(payload)
        assert_matches(batch, record)


def test_same_shaped_series_take_the_one_match_path_exactly() -> None:
    symbols = ["__name__", "m", "service", "a", "b", "zone", "z"]
    shapes = [([0, 1, 2, 3], 3), ([0, 1, 2, 4], 3), ([0, 1, 2, 3, 5, 6], 3), ([0, 1, 2, 4], 0)]
    series = [
        {
            "labels_refs": refs,
            "kind": KIND_NAMES[i % 3],
            "ts_ms": [T0 + i * 100 + j for j in range(n)],
            "values": [float(i * j) for j in range(n)],
        }
        for i, (refs, n) in enumerate(shapes * 3)
    ]
    record = {"source": "s", "symbols": symbols, "series": series}
    batch, errors = MetricBatchDecoder().decode(encode("MetricBatch", record))
    assert errors == []
    assert_matches(batch, record)
    bad = {**series[1], "labels_refs": [0, 1, 5, 6]}  # same shape as its neighbours, no service
    with_bad = {**record, "series": [*series[:2], bad, *series[2:]]}
    batch, errors = MetricBatchDecoder().decode(encode("MetricBatch", with_bad))
    assert [(e.index, e.reason) for e in errors] == [(2, "missing_service")]
    assert_matches(batch, record)


def test_refs_out_of_int_range_are_refused_by_the_schema() -> None:
    record = good_record()
    payload = encode("MetricBatch", record)
    refs = zigzag(4) + zigzag(2) + zigzag(6) + zigzag(0) + zigzag(1) + b"\x00"
    at = payload.index(refs)
    huge = zigzag(4) + zigzag(2) + zigzag(2**31) + zigzag(0) + zigzag(1) + b"\x00"
    with pytest.raises(
        CodecError, match=r"^MetricBatch\.series\[1\]\.labels_refs\[1\]: 2147483648 at byte \d+ "
    ):
        MetricBatchDecoder().decode(payload[:at] + huge + payload[at + len(refs) :])


def test_a_kind_written_in_more_bytes_than_needed_is_read_as_avro_says() -> None:
    record = good_record()
    payload = encode("MetricBatch", record)
    cut = payload.rindex(zigzag(1) + zigzag(T0 - 5)) - 1  # the kind byte of series[1]
    payload = payload[:cut] + bytes([payload[cut] | 0x80, 0]) + payload[cut + 1 :]
    assert encode("MetricBatch", decode("MetricBatch", payload)) == encode("MetricBatch", record)
    batch, errors = MetricBatchDecoder().decode(payload)
    assert errors == [] and batch.kinds.tolist() == [0, 1]


def test_a_payload_that_is_not_bytes_is_a_type_error() -> None:
    for payload in (None, bytearray(encode("MetricBatch", good_record())), "text"):
        with pytest.raises(TypeError):
            MetricBatchDecoder().decode(payload)  # type: ignore[arg-type]


def test_columns_are_owned_writable_arrays() -> None:
    batch, _ = MetricBatchDecoder().decode(encode("MetricBatch", good_record()))
    for column in (batch.kinds, batch.series_index, batch.ts_ms, batch.values):
        assert column.flags.owndata and column.flags.writeable and column.flags.c_contiguous


def test_a_long_rejected_series_does_not_disturb_its_neighbours() -> None:
    """A series whose timestamps outnumber what the message could hold as samples."""
    record = good_record()
    long_one = {"labels_refs": [0, 1, 2, 3], "kind": "GAUGE",
                "ts_ms": list(range(T0, T0 + 20_000)), "values": [2.5]}  # fmt: skip
    record["series"].insert(1, long_one)
    batch, errors = MetricBatchDecoder().decode(encode("MetricBatch", record))
    assert [(e.index, e.reason) for e in errors] == [(1, "length_mismatch")]
    assert errors[0].detail == "MetricBatch.series[1]: 20000 ts_ms but 1 values"
    assert_matches(batch, {**record, "series": [record["series"][0], record["series"][2]]})


def fuzz_seeds() -> list[bytes]:
    record = good_record()
    bad = {"labels_refs": [2, 3], "kind": "GAUGE", "ts_ms": [T0], "values": [1.0]}
    with_bad = {**record, "series": [*record["series"], bad]}
    return [
        encode("MetricBatch", record),
        encode("MetricBatch", with_bad),
        encode_blocked(record, [1, 3], True),
        encode_blocked(with_bad, [2], False),
    ]


def mutate(rng: np.random.Generator, payload: bytes) -> bytes:
    data = bytearray(payload)
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(0, len(data) + 1))
        how = int(rng.integers(0, 5))
        if how == 0 and at < len(data):
            data[at] = int(rng.integers(0, 256))
        elif how == 1 and at < len(data):
            data[at] = int(rng.choice([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF]))
        elif how == 2:
            data[at:at] = rng.bytes(int(rng.integers(1, 5)))
        elif how == 3:
            del data[at : at + int(rng.integers(1, 9))]
        else:
            data[at:] = data[at : at + int(rng.integers(0, 3))]
    return bytes(data)


def test_random_mutations_are_read_exactly_or_refused_with_a_reason() -> None:
    """20k mutated messages: what is accepted fastavro reads alike, the rest is named."""
    rng = np.random.default_rng(20_000)
    seeds = fuzz_seeds()
    decoder = MetricBatchDecoder(max_tables=3, max_series=20)  # eviction under way too
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(20_000):
        payload = mutate(rng, seeds[int(rng.integers(0, len(seeds)))])
        try:
            batch, errors = decoder.decode(payload)
        except CodecError as exc:
            # Refused by the codec's reader too, which names the byte (never "undecodable").
            assert str(exc).startswith("MetricBatch") and "undecodable" not in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        record = decode("MetricBatch", payload)
        left_out = {e.index for e in errors}
        kept = [s for i, s in enumerate(record["series"]) if i not in left_out]
        assert_matches(batch, {**record, "series": kept})
        for error in errors:  # compared as bytes: NaN != NaN
            alone = {**record, "series": [record["series"][error.index]]}
            assert encode("MetricBatch", decode("MetricBatch", error.payload)) == encode(
                "MetricBatch", alone
            )
    assert min(outcomes.values()) > 1_000, outcomes
