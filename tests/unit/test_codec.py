"""The codec against its schemas, against the reference `avro` package, and on bad input."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import avro.io
import avro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import SCHEMA_DIR
from pipeline.codec import CodecError, codec, decode, encode, record_types

T0 = 1_760_000_000_000

SAMPLES: dict[str, dict[str, Any]] = {
    "MetricBatch": {
        "source": "collector-1",
        "symbols": ["__name__", "http_requests_total", "service", "checkout", "code", "200"],
        "series": [
            {
                "labels_refs": [0, 1, 2, 3, 4, 5],
                "kind": "COUNTER",
                "ts_ms": [T0, T0 + 1000],
                "values": [10.0, 12.5],
            },
            {"labels_refs": [0, 1, 2, 3], "kind": "GAUGE", "ts_ms": [], "values": []},
        ],
    },
    "LogBatch": {
        "source": "fluent",
        "records": [
            {
                "ts_ms": T0,
                "service": "checkout",
                "level": "ERROR",
                "message": "timeout calling payments",
                "trace_id": "abc",
                "attributes": {"pod": "checkout-1"},
            },
            {
                "ts_ms": T0 + 1,
                "service": "checkout",
                "level": "INFO",
                "message": "ok",
                "trace_id": None,
                "attributes": {},
            },
        ],
    },
    "SpanBatch": {
        "source": "otel",
        "spans": [
            {
                "trace_id": "t1",
                "span_id": "s1",
                "parent_span_id": None,
                "service": "checkout",
                "operation": "POST /pay",
                "start_ms": T0,
                "duration_ms": 12.5,
                "status": "OK",
                "attributes": {"http.status_code": "200"},
            }
        ],
    },
    "HealthCheckResult": {
        "ts_ms": T0,
        "service": "checkout",
        "instance": "checkout-1",
        "check": "http",
        "status": "DEGRADED",
        "latency_ms": 250.0,
        "message": "slow",
    },
    "ChangeEvent": {
        "ts_ms": T0,
        "service": "checkout",
        "kind": "DEPLOYMENT",
        "description": "v1.2.3",
        "attributes": {"commit": "abc123"},
    },
    "ServiceInfo": {
        "service": "checkout",
        "team": "payments",
        "tier": "CRITICAL",
        "environment": "prod",
        "runbook_url": None,
        "depends_on": ["payments", "inventory"],
        "channels": ["#payments"],
    },
    "Feedback": {
        "ts_ms": T0,
        "target_id": "INC-2025-000001",
        "action": "SILENCE",
        "actor": "alice",
        "until_ms": T0 + 3_600_000,
        "matchers": {"service": "checkout"},
        "comment": None,
        "success": True,
    },
    "WindowAggregate": {
        "series_id": 'http_requests_total{code="200",service="checkout"}',
        "name": "http_requests_total",
        "service": "checkout",
        "labels": {"code": "200", "service": "checkout"},
        "kind": "COUNTER",
        "width_s": 10,
        "window_start_ms": T0,
        "window_end_ms": T0 + 10_000,
        "team": "payments",
        "tier": None,
        "environment": "prod",
        "count": 2,
        "sum": 22.5,
        "min": 10.0,
        "max": 12.5,
        "mean": 11.25,
        "last": 12.5,
        "increase": 2.5,
        "rate": 0.25,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
        "le_counts": {},
    },
    "PerformanceAnomalyDetectedEvent": {
        "anomaly_id": "an-1",
        "detected_at_ms": T0,
        "type": "LATENCY_SPIKE",
        "severity": "critical",
        "affected_service": "checkout",
        "metric_name": "http_request_duration_seconds",
        "series_id": 'http_request_duration_seconds{service="checkout"}',
        "labels": {"service": "checkout"},
        "current_value": 1.5,
        "expected_value": 0.2,
        "deviation_percentage": 650.0,
        "confidence_score": 0.97,
        "anomaly_score": 0.91,
        "window_start_ms": T0,
        "width_s": 60,
        "recent_deployments": [{"ts_ms": T0 - 60_000, "kind": "DEPLOYMENT", "description": "v2"}],
        "correlated_anomalies": ["an-0"],
    },
    "AlertCondition": {
        "labels": {"alertname": "HighLatency", "service": "checkout", "severity": "warning"},
        "annotations": {"summary": "p99 above 0.5 s"},
        "source": "rule",
        "active": True,
        "pulse": False,
        "ts_ms": T0,
        "for_ms": 60_000,
        "keep_firing_for_ms": 0,
    },
    "StreamTime": {"source": "alerts/0", "ts_ms": T0},
    "InternalMessage": {"kind": "AlertCondition", "payload": b"\x00\x02"},
    "AlertEvent": {
        "event_id": "f00d:1700000000000:firing",
        "fingerprint": "f00d",
        "alertname": "HighLatency",
        "service": "checkout",
        "severity": "page",
        "status": "firing",
        "source": "rule",
        "labels": {"alertname": "HighLatency", "service": "checkout"},
        "annotations": {"runbook": "https://runbooks/latency"},
        "starts_at_ms": T0,
        "ends_at_ms": None,
        "updated_at_ms": T0 + 5,
        "incident_id": "INC-2025-000001",
        "suppressed": False,
        "suppressed_by": None,
    },
    "IncidentEvent": {
        "event_id": "INC-2025-000001:3",
        "incident_id": "INC-2025-000001",
        "event": "ESCALATED",
        "title": "checkout latency",
        "severity": "critical",
        "priority": "P1",
        "status": "INVESTIGATING",
        "assigned_to": "payments",
        "escalation_level": "L2",
        "services": ["checkout", "payments"],
        "root_cause_service": "payments",
        "alert_fingerprints": ["f00d"],
        "opened_at_ms": T0,
        "acknowledged_at_ms": None,
        "resolved_at_ms": None,
        "resolution": None,
        "timeline": [{"ts_ms": T0, "kind": "created", "message": "opened"}],
        "updated_at_ms": T0 + 900_000,
    },
    "SloStatus": {
        "slo": "checkout-availability",
        "service": "checkout",
        "ts_ms": T0,
        "objective": 0.999,
        "sli": 0.9985,
        "error_budget_remaining": 0.42,
        "burn_rate_5m": 14.4,
        "burn_rate_30m": 6.0,
        "burn_rate_1h": 3.0,
        "burn_rate_2h": 2.0,
        "burn_rate_6h": 1.5,
        "burn_rate_1d": 1.0,
        "burn_rate_3d": 0.5,
        "exhaustion_at_ms": T0 + 86_400_000,
    },
    "SystemHealthStatusEvent": {
        "ts_ms": T0,
        "status": "DEGRADED",
        "components": {"kafka": "HEALTHY", "database": "UNHEALTHY"},
        "detail": "database unreachable",
    },
    "RemediationCommand": {
        "command_id": "cmd-1",
        "incident_id": "INC-2025-000001",
        "ts_ms": T0,
        "action": "restart",
        "service": "checkout",
        "parameters": {"deployment": "checkout"},
        "alert_fingerprint": "f00d",
    },
    "DeadLetter": {
        "ts_ms": T0,
        "topic": "vigil.metrics",
        "partition": 3,
        "offset": 12345,
        "key": b"checkout",
        "payload": b"\x00\xff",
        "reason": "undecodable",
        "detail": "MetricBatch: truncated at byte 2",
    },
}


def avro_schema(record_type: str) -> avro.schema.Schema:
    return avro.schema.parse((SCHEMA_DIR / f"{record_type}.avsc").read_text())


def avro_encode(record_type: str, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    avro.io.DatumWriter(avro_schema(record_type)).write(record, avro.io.BinaryEncoder(out))
    return out.getvalue()


def avro_decode(record_type: str, payload: bytes) -> Any:
    reader = avro.io.DatumReader(avro_schema(record_type))
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(payload)))


def test_every_schema_has_a_sample_and_its_own_file() -> None:
    assert sorted(SAMPLES) == record_types()
    for record_type in record_types():
        schema = json.loads((SCHEMA_DIR / f"{record_type}.avsc").read_text())
        assert (schema["name"], schema["namespace"]) == (record_type, "vigil")


@pytest.mark.parametrize("record_type", sorted(SAMPLES))
def test_round_trip(record_type: str) -> None:
    record = SAMPLES[record_type]
    assert decode(record_type, encode(record_type, record)) == record


@pytest.mark.parametrize("record_type", sorted(SAMPLES))
def test_interoperates_with_reference_avro(record_type: str) -> None:
    record = SAMPLES[record_type]
    ours = encode(record_type, record)
    assert avro_encode(record_type, record) == ours
    assert decode(record_type, avro_encode(record_type, record)) == record
    assert avro_decode(record_type, ours) == record


def test_nullable_fields_may_be_omitted() -> None:
    record = {k: v for k, v in SAMPLES["AlertEvent"].items() if v is not None}
    decoded = decode("AlertEvent", encode("AlertEvent", record))
    assert decoded["ends_at_ms"] is None
    assert decoded["suppressed_by"] is None


def test_metric_kind_is_the_same_enum_wherever_it_appears() -> None:
    def kinds(record_type: str) -> list[str]:
        text = (SCHEMA_DIR / f"{record_type}.avsc").read_text()
        start = text.index('"MetricKind"')
        return json.loads("[" + text[start:].split("[", 1)[1].split("]", 1)[0] + "]")

    assert kinds("MetricBatch") == kinds("WindowAggregate") == ["GAUGE", "COUNTER", "OBSERVATION"]


@pytest.mark.parametrize(
    ("record_type", "patch", "message"),
    [
        (
            "ServiceInfo",
            {"tier": "GOLD"},
            "ServiceInfo.tier: 'GOLD' is not one of CRITICAL|BUSINESS|",
        ),
        ("HealthCheckResult", {"latency_ms": "fast"}, "HealthCheckResult.latency_ms: expected a"),
        ("AlertEvent", {"labels": {"a": 1}}, "AlertEvent.labels['a']: expected string, got int"),
        ("Feedback", {"success": "yes"}, "Feedback.success: expected boolean, got str"),
    ],
)
def test_encoding_a_wrong_value_names_the_field(
    record_type: str, patch: dict[str, Any], message: str
) -> None:
    with pytest.raises(CodecError, match="^" + message.replace("[", r"\[").replace("|", r"\|")):
        encode(record_type, {**SAMPLES[record_type], **patch})


@pytest.mark.parametrize(
    ("record_type", "patch", "message"),
    [
        ("DeadLetter", {"partition": 2**31}, r"DeadLetter\.partition: 2147483648 out of range"),
        ("ServiceInfo", {"depends_on": "payments"}, r"ServiceInfo\.depends_on: expected an array"),
        ("AlertEvent", {"suppressed": None}, r"AlertEvent\.suppressed: expected boolean, got None"),
    ],
)
def test_validate_catches_what_encode_lets_through(
    record_type: str, patch: dict[str, Any], message: str
) -> None:
    codec(record_type).validate(SAMPLES[record_type])
    with pytest.raises(CodecError, match="^" + message):
        codec(record_type).validate({**SAMPLES[record_type], **patch})


def test_encoding_a_nested_wrong_value_names_the_path() -> None:
    record = json.loads(json.dumps(SAMPLES["MetricBatch"]))
    record["series"][1]["kind"] = "HISTOGRAM"
    with pytest.raises(CodecError) as caught:
        encode("MetricBatch", record)
    assert caught.value.field_path == "series[1].kind"
    assert str(caught.value).startswith("MetricBatch.series[1].kind: 'HISTOGRAM' is not one of")


def test_encoding_without_a_required_field_names_it() -> None:
    record = dict(SAMPLES["SloStatus"])
    del record["sli"]
    with pytest.raises(CodecError, match=r"^SloStatus\.sli: missing"):
        encode("SloStatus", record)


@pytest.mark.parametrize("record_type", sorted(SAMPLES))
def test_every_truncation_raises_a_codec_error_naming_the_record(record_type: str) -> None:
    payload = encode(record_type, SAMPLES[record_type])
    for end in range(len(payload)):
        with pytest.raises(CodecError, match=f"^{record_type}[.:]") as caught:
            decode(record_type, payload[:end])
        assert f"truncated at byte {end}" in caught.value.reason


def test_truncation_names_the_field_it_cut() -> None:
    payload = encode("MetricBatch", SAMPLES["MetricBatch"])
    with pytest.raises(CodecError) as caught:
        decode("MetricBatch", payload[:-12])
    assert caught.value.field_path == "series[0].values[1]"


@pytest.mark.parametrize("record_type", sorted(SAMPLES))
def test_trailing_bytes_are_refused(record_type: str) -> None:
    payload = encode(record_type, SAMPLES[record_type])
    with pytest.raises(CodecError, match=f"^{record_type}: 3 trailing bytes"):
        decode(record_type, payload + b"\x00\x00\x00")


def test_enum_index_out_of_range_names_the_field() -> None:
    payload = bytearray(encode("ServiceInfo", SAMPLES["ServiceInfo"]))
    tier_at = 1 + len("checkout") + 1 + len("payments")
    assert payload[tier_at] == 0  # CRITICAL
    payload[tier_at] = 2 * 7
    with pytest.raises(CodecError, match=r"^ServiceInfo\.tier: enum index 7 at byte 18"):
        decode("ServiceInfo", bytes(payload))


def test_bad_union_branch_and_negative_length_name_the_field() -> None:
    with pytest.raises(CodecError, match=r"^DeadLetter\.key: union branch 2 "):
        decode("DeadLetter", b"\x02\x00\x02\x02\x04")
    with pytest.raises(CodecError, match=r"^LogBatch\.source: negative length -3"):
        decode("LogBatch", b"\x05abc")


def test_random_garbage_raises_only_codec_errors() -> None:
    rng = random.Random(7)
    refused = 0
    for record_type in record_types():
        for _ in range(200):
            garbage = rng.randbytes(rng.randrange(0, 64))
            try:
                decode(record_type, garbage)
            except CodecError as exc:
                assert str(exc).startswith(record_type)
                refused += 1
    assert refused > 0.9 * 200 * len(record_types())


def test_unknown_record_type_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="^Nope: no schema Nope.avsc"):
        codec("Nope")


names = st.text(min_size=1, max_size=12)
metric_batches = st.builds(
    lambda source, symbols, series: {"source": source, "symbols": symbols, "series": series},
    st.text(max_size=20),
    st.lists(names, max_size=8),
    st.lists(
        st.integers(0, 50).flatmap(
            lambda n: st.fixed_dictionaries(
                {
                    "labels_refs": st.lists(st.integers(0, 2**31 - 1), max_size=8),
                    "kind": st.sampled_from(["GAUGE", "COUNTER", "OBSERVATION"]),
                    "ts_ms": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n),
                    "values": st.lists(st.floats(allow_nan=False), min_size=n, max_size=n),
                }
            )
        ),
        max_size=6,
    ),
)


@settings(max_examples=150, deadline=None)
@given(metric_batches)
def test_metric_batch_round_trips_and_matches_reference_avro(record: dict[str, Any]) -> None:
    payload = encode("MetricBatch", record)
    assert decode("MetricBatch", payload) == record
    assert avro_encode("MetricBatch", record) == payload
