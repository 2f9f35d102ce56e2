"""The doors against bad input, without servers: label-set bounds, timestamps, text that
PostgreSQL refuses, dead letters that always fit their table and topic, and arbitrary bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.feedback import route
from agents.ingest import MAX_DLQ_PAYLOAD, DeadLetterBox
from pipeline.aggregate import Aggregator
from pipeline.batch import GAUGE, SampleBatch
from pipeline.codec import decode, encode
from pipeline.ingest import MAX_DETAIL, MetricsDoor, Origin, dead_letter, refused
from pipeline.metricbatch import LabelLimits, MetricBatchDecoder
from pipeline.settings import Settings

T0 = 1_767_225_600_000
ORIGIN = Origin("vigil.metrics", 0, 7, b"api", T0, 1)


def batch(*series: dict[str, str], ts: int = T0) -> bytes:
    """A MetricBatch of one gauge sample per label set (name and service included)."""
    symbols: list[str] = []
    refs: list[list[int]] = []
    for labels in series:
        refs.append([])
        for key, value in labels.items():
            for text in (key, value):
                if text not in symbols:
                    symbols.append(text)
                refs[-1].append(symbols.index(text))
    return encode("MetricBatch", {"source": "t", "symbols": symbols, "series": [
        {"labels_refs": r, "kind": "GAUGE", "ts_ms": [ts], "values": [1.0]} for r in refs]})


GOOD = {"__name__": "up", "service": "api"}


def test_label_sets_over_the_limits_are_left_out_alone() -> None:
    limits = LabelLimits(labels=8, label_bytes=64, series_bytes=200)
    decoder = MetricBatchDecoder(limits=limits)
    payload = batch(GOOD,
                    {**GOOD, **{f"l{i}": "v" for i in range(8)}},
                    {**GOOD, "blob": "x" * 65},
                    {**GOOD, **{f"k{i}": "é" * 20 for i in range(5)}},
                    {**GOOD, "path": "/a\x00b"})
    found, errors = decoder.decode(payload)
    assert found.series_ids == ['up{service="api"}']
    assert [(e.index, e.reason) for e in errors] == [
        (1, "too_many_labels"), (2, "label_too_long"), (3, "series_too_long"),
        (4, "invalid_text")]
    assert "10 labels, over the limit of 8" in errors[0].detail
    assert "65 bytes" in errors[1].detail and "x" * 65 not in errors[1].detail
    for error in errors:  # each dead letter holds its own series, as sent
        (series,) = decode("MetricBatch", error.payload)["series"]
        assert series["values"] == [1.0]
    assert not any(isinstance(m, tuple) for m in decoder._metas.values())  # not kept


def test_default_limits_fit_the_metric_aggregates_key() -> None:
    limits = LabelLimits()
    assert (limits.labels, limits.label_bytes, limits.series_bytes) == (32, 1024, 2048)
    defaults = Settings()
    assert LabelLimits(defaults.max_labels, defaults.max_label_bytes,
                       defaults.max_series_bytes) == limits
    found, errors = MetricBatchDecoder().decode(batch({**GOOD, "v": "y" * 1024}))
    assert errors == [] and found.sample_count == 1


def test_timestamps_before_the_epoch_are_refused_and_the_rest_kept() -> None:
    agg = Aggregator([10, 60], 5_000, 300_000)
    ts = np.array([T0, -1, -(2**63), -(2**62) - 5, T0 + 1], dtype=np.int64)
    samples = SampleBatch("t", ['up{service="api"}'], ["up"], ["api"], [{"service": "api"}],
                          np.array([GAUGE], np.int8), np.zeros(ts.size, np.int32), ts,
                          np.ones(ts.size))
    rejected = agg.add(samples, T0)
    assert rejected.positions.tolist() == [1, 2, 3]
    assert rejected.reason_counts() == {"invalid_timestamp": 3}
    assert "before 1970-01-01" in rejected.details(samples)[0][2]
    assert agg.open_windows == 2  # only the windows of T0


def test_dead_letter_details_always_fit_the_table() -> None:
    letter = dead_letter(ORIGIN, b"x", "invalid_text", "a\x00b " + "€" * 2_000)
    detail = letter["detail"]
    assert "\x00" not in detail and detail.startswith("a\\x00b ")
    assert len(detail.encode()) <= MAX_DETAIL
    assert detail.endswith("€")  # cut at a character boundary


def test_refused_records_name_why() -> None:
    latest = T0 + 300_000
    health = {"ts_ms": T0, "service": "api", "instance": "i-1", "check": "http",
              "status": "HEALTHY", "latency_ms": 1.0, "message": "m" * 5_000}
    assert refused("HealthCheckResult", health, 1024, latest) is None  # prose is not bounded
    cases = {
        "invalid_timestamp": {**health, "ts_ms": -1},
        "future": {**health, "ts_ms": latest + 1},
        "invalid_text": {**health, "instance": "i\x00"},
        "label_too_long": {**health, "service": "s" * 1025},
    }
    for reason, record in cases.items():
        found = refused("HealthCheckResult", record, 1024, latest)
        assert found is not None and found[0] == reason, (reason, found)
    change = {"ts_ms": T0, "service": "api", "kind": "DEPLOYMENT", "description": "d",
              "attributes": {"k" * 2_000: "v"}}
    found = refused("ChangeEvent", change, 1024, latest)
    assert found is not None and found[0] == "label_too_long"
    assert found[1].startswith("ChangeEvent.attributes['kkk")


def test_feedback_the_door_refuses_is_dead_lettered_not_forwarded() -> None:
    settings = Settings(partitions=2)
    feedback = {"ts_ms": T0, "target_id": "INC-2026-000001", "action": "ACK",
                "actor": "a\x00", "until_ms": None, "matchers": {}, "comment": None,
                "success": None}
    records, letter = route(encode("Feedback", feedback), ORIGIN, settings)
    assert records == [] and letter is not None and letter["reason"] == "invalid_text"
    records, letter = route(encode("Feedback", {**feedback, "actor": "sre"}), ORIGIN, settings)
    assert letter is None and [r[0] for r in records] == ["internal.incident-feed"]


class _Outbox:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def add(self, short: str, key: bytes | None, value: bytes) -> None:
        self.records.append((short, key, value))


class _Database:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    async def upsert(self, table: Any, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


def test_a_dead_letter_of_a_message_as_large_as_the_broker_takes_still_fits_the_dlq() -> None:
    outbox, database = _Outbox(), _Database()
    box = DeadLetterBox(outbox, database)  # type: ignore[arg-type]
    huge = bytes(16_700_000)
    box.add([dead_letter(ORIGIN, huge, "undecodable", "MetricBatch: bad")])
    asyncio.run(box.write())
    (short, key, value), = outbox.records
    letter = decode("DeadLetter", value)
    assert (short, key) == ("dlq", b"vigil.metrics")
    assert len(letter["payload"]) == MAX_DLQ_PAYLOAD and len(value) < 16_000_000
    assert letter["detail"].startswith(f"payload cut to {MAX_DLQ_PAYLOAD} of 16700000 bytes")
    assert database.rows[0]["detail"] == letter["detail"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.builds(lambda data, at, cut: batch(GOOD, {**GOOD, "x": "y"})[:at] + data
                           + batch(GOOD)[cut:], st.binary(max_size=8), st.integers(0, 60),
                           st.integers(0, 60))))
def test_any_bytes_are_admitted_or_dead_lettered_never_raised(payload: bytes) -> None:
    admitted = MetricsDoor().admit(payload, ORIGIN)
    samples = admitted.batch.sample_count if admitted.batch is not None else 0
    assert admitted.dead_letters or samples or admitted.rerouted or _empty(payload)
    for letter in admitted.dead_letters:
        assert letter["reason"] and letter["detail"]
        assert len(letter["detail"].encode()) <= MAX_DETAIL


def _empty(payload: bytes) -> bool:
    """A valid MetricBatch with no samples: nothing to aggregate, nothing wrong."""
    record = decode("MetricBatch", payload)
    return not any(series["values"] for series in record["series"])
