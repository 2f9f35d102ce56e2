import doctest

import pytest

import pipeline.inhibit
from pipeline.alerts import AlertBook, Transition
from pipeline.inhibit import Inhibitor, InhibitRule
from pipeline.silence import Matcher

DOWN = {"alertname": "ServiceDown", "service": "db", "severity": "critical"}
SLOW = {"alertname": "LatencySpike", "service": "db", "severity": "warning"}


def fire(book: AlertBook, labels: dict[str, str], source: str = "rule") -> Transition:
    [t] = book.observe(labels, {}, source, True, 0)
    return t


def test_docstring_examples_run() -> None:
    assert doctest.testmod(pipeline.inhibit).failed == 0


def test_service_down_inhibits_latency_warnings_and_info_of_the_same_service() -> None:
    book = AlertBook()
    down = fire(book, DOWN)
    for severity in ("warning", "info"):
        slow = fire(book, {**SLOW, "severity": severity})
        assert Inhibitor().inhibited_by(slow, book.firing("db")) == down.fingerprint


@pytest.mark.parametrize(
    "target",
    [
        {**SLOW, "service": "checkout"},  # another service
        {**SLOW, "severity": "critical"},  # not a warning
        {**SLOW, "alertname": "ErrorRateIncrease"},  # not about latency
    ],
)
def test_service_down_leaves_other_alerts_alone(target: dict[str, str]) -> None:
    book = AlertBook()
    fire(book, DOWN)
    t = fire(book, target)
    assert Inhibitor().inhibited_by(t, book.firing("db") + book.firing("checkout")) is None


def test_critical_health_alert_inhibits_but_a_critical_rule_alert_does_not() -> None:
    unhealthy = {"alertname": "AllInstancesUnhealthy", "service": "db", "severity": "critical"}
    for source, inhibits in (("health", True), ("rule", False)):
        book = AlertBook()
        src = fire(book, unhealthy, source)
        slow = fire(book, SLOW, "anomaly")
        expected = src.fingerprint if inhibits else None
        assert Inhibitor().inhibited_by(slow, book.firing("db")) == expected


def test_only_firing_sources_inhibit() -> None:
    book = AlertBook()
    book.observe(DOWN, {}, "health", True, 0, for_ms=60_000)
    slow = fire(book, SLOW)
    assert Inhibitor().inhibited_by(slow, book.firing("db")) is None


def test_an_alert_matching_source_and_target_does_not_inhibit_itself() -> None:
    rule = InhibitRule("self", (Matcher("severity", "=", "warning"),),
                       (Matcher("severity", "=", "warning"),))
    book = AlertBook()
    slow = fire(book, SLOW)
    assert Inhibitor([rule]).inhibited_by(slow, book.firing("db")) is None


def test_equal_labels_must_agree_and_the_smallest_fingerprint_wins() -> None:
    rule = InhibitRule.from_config({
        "name": "zone-down",
        "source_matchers": ['alertname="ZoneDown"'],
        "target_matchers": ['severity=~"warning|info"'],
        "equal": ["service", "zone"],
    })
    book = AlertBook()
    sources = [fire(book, {**DOWN, "alertname": "ZoneDown", "zone": "a", "n": str(i)})
               for i in range(5)]
    fire(book, {**DOWN, "alertname": "ZoneDown", "zone": "b"})
    slow = fire(book, {**SLOW, "zone": "a"})
    firing = book.firing("db")
    expected = min(s.fingerprint for s in sources)
    assert Inhibitor([rule]).inhibited_by(slow, firing) == expected
    assert Inhibitor([rule]).inhibited_by(slow, list(reversed(firing))) == expected
    elsewhere = fire(book, {**SLOW, "zone": "c"})
    assert Inhibitor([rule]).inhibited_by(elsewhere, book.firing("db")) is None


def test_rule_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"inhibit_rules\[0\].source_matchers: a non-empty list"):
        InhibitRule.from_config({"target_matchers": ["a=b"]}, where="inhibit_rules[0]")
    with pytest.raises(ValueError, match=r"inhibit_rules.target_matchers: matcher.*invalid regex"):
        InhibitRule.from_config({"source_matchers": ["a=b"], "target_matchers": ["a=~("]})
