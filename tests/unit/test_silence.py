import doctest
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipeline.silence
from pipeline.alerts import AlertBook
from pipeline.silence import Matcher, SilenceBook

HOUR = 3_600_000
LAT = {"alertname": "LatencySpike", "service": "checkout", "severity": "warning"}


def feedback(matchers: dict[str, str], ts: int = 0, until: int | None = HOUR,
             target: str = "ops-1", action: str = "SILENCE") -> dict:
    return {"ts_ms": ts, "target_id": target, "action": action, "actor": "ana",
            "until_ms": until, "matchers": matchers, "comment": "deploying", "success": None}


def change(kind: str, service: str, ts: int, **attributes: str) -> dict:
    return {"ts_ms": ts, "service": service, "kind": kind, "description": "db upgrade",
            "attributes": attributes}


def test_docstring_examples_run() -> None:
    assert doctest.testmod(pipeline.silence).failed == 0


@pytest.mark.parametrize(
    ("matcher", "value", "expected"),
    [
        (Matcher("env", "=", "prod"), "prod", True),
        (Matcher("env", "=", "prod"), "prod2", False),
        (Matcher("env", "!=", "prod"), "dev", True),
        (Matcher("env", "=~", "pro"), "prod", False),  # anchored: a prefix is not a match
        (Matcher("env", "=~", "prod|dev"), "dev", True),
        (Matcher("env", "!~", "prod|dev"), "qa", True),
        (Matcher("env", "!~", "prod|dev"), "prod", False),
        (Matcher("env", "=~", "(?i)PROD"), "prod", True),  # RE2-style leading flags work
        (Matcher("env", "=", ""), None, True),  # a missing label is the empty string
        (Matcher("env", "!=", ""), None, False),
    ],
)
def test_matcher_operators(matcher: Matcher, value: str | None, expected: bool) -> None:
    labels = {} if value is None else {"env": value}
    assert matcher.matches(labels) is expected


def test_invalid_matchers_are_named() -> None:
    with pytest.raises(ValueError, match='matcher env=~"\\(".*invalid regex'):
        Matcher("env", "=~", "(")
    with pytest.raises(ValueError, match="operator '=='"):
        Matcher("env", "==", "x")
    with pytest.raises(ValueError, match="expected name"):
        Matcher.parse("no operator here")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('alertname="ServiceDown"', Matcher("alertname", "=", "ServiceDown")),
        ("severity =~ warning|info", Matcher("severity", "=~", "warning|info")),
        ('env!~"qa.*"', Matcher("env", "!~", "qa.*")),
        ('msg!="say \\"hi\\""', Matcher("msg", "!=", 'say "hi"')),
    ],
)
def test_matcher_text_form(text: str, expected: Matcher) -> None:
    assert Matcher.parse(text) == expected


@given(st.sampled_from(["=", "!=", "=~", "!~"]), st.text(alphabet='ab"\\= !~\n', max_size=8))
def test_matcher_text_round_trips(op: str, value: str) -> None:
    try:
        matcher = Matcher("name", op, value)
    except ValueError:
        return  # not a valid regex; nothing to round-trip
    assert Matcher.parse(str(matcher)) == matcher


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("checkout", Matcher("service", "=", "checkout")),
        ("=~check.*", Matcher("service", "=~", "check.*")),
        ("!~canary-.*", Matcher("service", "!~", "canary-.*")),
        ("!=checkout", Matcher("service", "!=", "checkout")),
        ("==odd", Matcher("service", "=", "=odd")),
    ],
)
def test_feedback_matcher_values_use_an_operator_prefix(spec: str, expected: Matcher) -> None:
    assert Matcher.from_entry("service", spec) == expected


def test_feedback_silence_covers_its_time_range_only() -> None:
    book = SilenceBook()
    silence = book.on_feedback(feedback({"service": "checkout", "alertname": "=~Latency.*"},
                                         ts=1_000, until=HOUR))
    assert silence is not None
    assert book.is_silenced(LAT, 999) is None
    assert book.is_silenced(LAT, 1_000) == silence.silence_id
    assert book.is_silenced(LAT, HOUR - 1) == silence.silence_id
    assert book.is_silenced(LAT, HOUR) is None
    assert book.is_silenced({**LAT, "service": "orders"}, 2_000) is None
    assert book.is_silenced({**LAT, "alertname": "ErrorRate"}, 2_000) is None


def test_feedback_silence_without_until_lasts_the_default_duration() -> None:
    book = SilenceBook(default_duration_ms=10_000)
    silence = book.on_feedback(feedback({"service": "checkout"}, ts=5, until=None))
    assert silence is not None and silence.ends_at_ms == 10_005


def test_feedback_silence_ending_before_it_starts_is_rejected() -> None:
    with pytest.raises(ValueError, match="target_id=ops-1.*until_ms 5 must be after ts_ms 10"):
        SilenceBook().on_feedback(feedback({"service": "checkout"}, ts=10, until=5))


def test_feedback_without_matchers_silences_the_target_alert() -> None:
    book = AlertBook()
    [target] = book.observe(LAT, {}, "anomaly", True, 0)
    [other] = book.observe({**LAT, "severity": "info"}, {}, "anomaly", True, 0)
    silences = SilenceBook()
    silence = silences.on_feedback(feedback({}, target=target.fingerprint))
    assert silence is not None
    assert silences.is_silenced(target.match_labels(), 10) == silence.silence_id
    assert silences.is_silenced(other.match_labels(), 10) is None


def test_replayed_feedback_replaces_its_own_silence() -> None:
    book = SilenceBook()
    first = book.on_feedback(feedback({"service": "checkout"}))
    again = book.on_feedback(feedback({"service": "checkout"}))
    assert first == again and len(book) == 1


def test_other_feedback_actions_are_ignored() -> None:
    book = SilenceBook()
    assert book.on_feedback(feedback({"service": "x"}, action="ACK")) is None
    assert len(book) == 0


def test_maintenance_window_silences_the_service_until_its_end() -> None:
    book = SilenceBook()
    started = book.on_change(change("MAINTENANCE_START", "db", 1_000))
    assert started is not None
    db = {**LAT, "service": "db"}
    assert book.is_silenced(db, 2_000) == started.silence_id
    assert book.is_silenced(LAT, 2_000) is None
    book.on_change(change("MAINTENANCE_END", "db", 5_000))
    assert book.is_silenced(db, 4_999) == started.silence_id
    assert book.is_silenced(db, 5_000) is None


def test_maintenance_end_leaves_a_similarly_named_service_alone() -> None:
    book = SilenceBook()
    book.on_change(change("MAINTENANCE_START", "db", 0))
    kept = book.on_change(change("MAINTENANCE_START", "db-replica", 0))
    book.on_change(change("MAINTENANCE_END", "db", 10))
    assert kept is not None
    assert book.is_silenced({**LAT, "service": "db-replica"}, 20) == kept.silence_id
    assert book.is_silenced({**LAT, "service": "db"}, 20) is None


def test_maintenance_without_end_stops_at_the_maximum_or_its_own_until() -> None:
    book = SilenceBook(max_maintenance_ms=HOUR)
    capped = book.on_change(change("MAINTENANCE_START", "db", 0))
    short = book.on_change(change("MAINTENANCE_START", "cache", 0, until_ms="60000"))
    assert capped is not None and capped.ends_at_ms == HOUR
    assert short is not None and short.ends_at_ms == 60_000
    assert book.on_change(change("DEPLOYMENT", "db", 0)) is None


def test_expire_drops_ended_silences_only() -> None:
    book = SilenceBook()
    a = book.on_feedback(feedback({"service": "a"}, until=100))
    b = book.on_feedback(feedback({"service": "b"}, until=300))
    assert a is not None and b is not None
    assert book.expire(100) == [a.silence_id]
    assert len(book) == 1 and book.is_silenced({**LAT, "service": "b"}, 150) == b.silence_id


def test_round_trip_keeps_every_silence() -> None:
    book = SilenceBook()
    book.on_feedback(feedback({"service": "checkout", "alertname": '=~Lat"ency.*'}))
    book.on_change(change("MAINTENANCE_START", "db", 0))
    again = SilenceBook.from_dict(json.loads(json.dumps(book.to_dict())))
    assert again.to_dict() == book.to_dict()
    assert again.is_silenced({**LAT, "service": "db"}, 10) is not None
