import doctest
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.alerts
from pipeline.alerts import (
    FIRING,
    PENDING,
    RESOLVED,
    AlertBook,
    Transition,
    fingerprint,
)
from pipeline.codec import codec

LAT = {"alertname": "HighLatency", "service": "checkout", "severity": "warning"}
ERR = {"alertname": "ErrorRate", "service": "checkout", "severity": "critical"}
S = 1_000


def statuses(transitions: list[Transition]) -> list[tuple[str, int]]:
    return [(t.status, t.updated_at_ms) for t in transitions]


def test_docstring_examples_run() -> None:
    assert doctest.testmod(pipeline.alerts).failed == 0


def test_fingerprint_is_a_stable_hash_of_the_sorted_labels() -> None:
    reordered = dict(reversed(list(LAT.items())))
    assert fingerprint(LAT) == fingerprint(reordered)
    assert len(fingerprint(LAT)) == 16 and int(fingerprint(LAT), 16) >= 0
    assert fingerprint(LAT) != fingerprint({**LAT, "severity": "critical"})
    # Pinned: the fingerprint is stored and joined on; changing the scheme is a migration.
    assert fingerprint({"alertname": "A", "service": "s", "severity": "info"}) == (
        fingerprint({"severity": "info", "service": "s", "alertname": "A"})
    ) == "f1663bf5743e740a"


@pytest.mark.parametrize("missing", ["alertname", "service", "severity"])
def test_required_labels_are_named_when_missing(missing: str) -> None:
    labels = {k: v for k, v in LAT.items() if k != missing}
    with pytest.raises(ValueError, match=f"'{missing}' is required"):
        AlertBook().observe(labels, {}, "rule", True, 0)


def test_unknown_source_and_negative_durations_are_rejected() -> None:
    with pytest.raises(ValueError, match="source 'cron'"):
        AlertBook().observe(LAT, {}, "cron", True, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        AlertBook().observe(LAT, {}, "rule", True, 0, for_ms=-1)


def test_an_episode_that_ends_where_it_starts_gives_the_next_one_its_own_ids() -> None:
    # A health check flaps with identical timestamps: down, up, down again at one instant.
    book = AlertBook()
    out = book.observe(ERR, {}, "health", True, 10 * S)
    out += book.observe(ERR, {}, "health", False, 10 * S)
    restored = AlertBook.from_dict(json.loads(json.dumps(book.to_dict())))  # a snapshot
    out += restored.observe(ERR, {}, "health", True, 10 * S)
    out += restored.observe(ERR, {}, "health", False, 20 * S)
    fp = fingerprint(ERR)
    assert [t.event_id for t in out] == [f"{fp}:10000:firing", f"{fp}:10000:resolved",
                                         f"{fp}:10000.1:firing", f"{fp}:10000.1:resolved"]
    assert restored.tick(11 * S) == [] and restored.to_dict()["instants"] == []


def test_tick_moves_only_the_alerts_of_the_sources_named() -> None:
    book = AlertBook()
    book.observe(LAT, {}, "rule", True, 0, for_ms=60 * S)
    book.observe(ERR, {}, "slo", True, 0, for_ms=60 * S)
    assert book.tick(90 * S, ("health", "anomaly")) == []
    assert [(t.alertname, t.status) for t in book.tick(90 * S, ("slo",))] == [
        ("ErrorRate", FIRING)]
    assert [(t.alertname, t.updated_at_ms) for t in book.tick(90 * S)] == [
        ("HighLatency", 60 * S)]


def test_for_zero_fires_at_once_without_pending() -> None:
    book = AlertBook()
    [t] = book.observe(ERR, {"summary": "5xx"}, "rule", True, 10 * S)
    assert (t.status, t.starts_at_ms, t.ends_at_ms, t.updated_at_ms) == (
        FIRING, 10 * S, None, 10 * S)
    assert (t.alertname, t.service, t.severity, t.source) == (
        "ErrorRate", "checkout", "critical", "rule")
    assert t.annotations == {"summary": "5xx"} and t.fingerprint == fingerprint(ERR)


def test_pending_becomes_firing_when_for_has_elapsed_on_tick_or_observation() -> None:
    by_tick, by_obs = AlertBook(), AlertBook()
    for book in (by_tick, by_obs):
        assert statuses(book.observe(LAT, {}, "rule", True, 0, for_ms=60 * S)) == [(PENDING, 0)]
        assert book.tick(59 * S) == []
    assert statuses(by_tick.tick(70 * S)) == [(FIRING, 60 * S)]
    late = by_obs.observe(LAT, {}, "rule", True, 70 * S, for_ms=60 * S)
    assert statuses(late) == [(FIRING, 60 * S)]
    assert by_tick.tick(80 * S) == [] and by_obs.tick(80 * S) == []


def test_pending_that_clears_before_for_resolves_without_firing_and_is_forgotten() -> None:
    book = AlertBook()
    book.observe(LAT, {}, "rule", True, 0, for_ms=60 * S)
    [t] = book.observe(LAT, {}, "rule", False, 30 * S, for_ms=60 * S)
    assert (t.status, t.ends_at_ms, t.starts_at_ms) == (RESOLVED, 30 * S, 0)
    assert len(book) == 0 and book.tick(120 * S) == []


def test_repeats_of_a_firing_alert_are_deduplicated_but_refresh_annotations() -> None:
    book = AlertBook()
    book.observe(ERR, {"value": "0.1"}, "rule", True, 0)
    for i in range(1, 5):
        assert book.observe(ERR, {"value": f"0.{i + 1}"}, "rule", True, i * 10 * S) == []
    alert = book.get(fingerprint(ERR))
    assert alert is not None and alert.annotations == {"value": "0.5"} and alert.state == FIRING


def test_resolves_only_after_keep_firing_for_of_false_condition() -> None:
    book = AlertBook()
    book.observe(ERR, {}, "rule", True, 0, keep_firing_for_ms=60 * S)
    assert book.observe(ERR, {}, "rule", False, 10 * S, keep_firing_for_ms=60 * S) == []
    assert book.observe(ERR, {}, "rule", False, 20 * S, keep_firing_for_ms=60 * S) == []
    assert book.tick(69 * S) == []
    [t] = book.tick(75 * S)
    assert (t.status, t.ends_at_ms, t.starts_at_ms) == (RESOLVED, 70 * S, 0)
    assert len(book) == 0


def test_condition_true_again_during_keep_firing_for_cancels_the_resolution() -> None:
    book = AlertBook()
    book.observe(ERR, {}, "rule", True, 0, keep_firing_for_ms=60 * S)
    book.observe(ERR, {}, "rule", False, 10 * S, keep_firing_for_ms=60 * S)
    assert book.observe(ERR, {}, "rule", True, 40 * S, keep_firing_for_ms=60 * S) == []
    assert book.tick(100 * S) == []
    assert book.observe(ERR, {}, "rule", False, 110 * S, keep_firing_for_ms=60 * S) == []
    assert statuses(book.tick(200 * S)) == [(RESOLVED, 170 * S)]


def test_refire_after_resolution_is_a_new_episode() -> None:
    book = AlertBook()
    [first] = book.observe(ERR, {}, "rule", True, 0)
    [gone] = book.observe(ERR, {}, "rule", False, 10 * S)
    [again] = book.observe(ERR, {}, "rule", True, 20 * S)
    assert (gone.status, again.status) == (RESOLVED, FIRING)
    assert again.starts_at_ms == 20 * S and first.starts_at_ms == 0
    assert len({first.event_id, gone.event_id, again.event_id}) == 3


def test_late_observation_applies_what_fell_due_before_it() -> None:
    book = AlertBook()
    book.observe(ERR, {}, "rule", True, 0, keep_firing_for_ms=30 * S)
    book.observe(ERR, {}, "rule", False, 10 * S, keep_firing_for_ms=30 * S)
    # No tick ran; the condition holds again at 60 s, after the resolution fell due at 40 s.
    got = book.observe(ERR, {}, "rule", True, 60 * S, keep_firing_for_ms=30 * S)
    assert statuses(got) == [(RESOLVED, 40 * S), (FIRING, 60 * S)]
    assert got[1].starts_at_ms == 60 * S


def test_false_for_an_unknown_alert_does_nothing() -> None:
    book = AlertBook()
    assert book.observe(ERR, {}, "rule", False, 0) == [] and len(book) == 0
    assert book.take_changes() == {}


def test_anomaly_pulses_keep_firing_until_quiet_for_keep_firing_for() -> None:
    book = AlertBook()
    spike = {"alertname": "LatencySpike", "service": "checkout", "severity": "warning"}
    first = book.pulse(spike, {}, "anomaly", 0, keep_firing_for_ms=120 * S)
    assert statuses(first) == [(FIRING, 0)]
    for t in (60, 120, 170):
        assert book.pulse(spike, {}, "anomaly", t * S, keep_firing_for_ms=120 * S) == []
    assert book.tick(289 * S) == []
    assert statuses(book.tick(300 * S)) == [(RESOLVED, 290 * S)]


def test_pulse_with_no_keep_firing_for_fires_and_resolves_together() -> None:
    book = AlertBook()
    got = book.pulse(LAT, {}, "anomaly", 5 * S, keep_firing_for_ms=0)
    assert statuses(got) == [(FIRING, 5 * S), (RESOLVED, 5 * S)]


def test_firing_lists_only_firing_alerts_of_the_service() -> None:
    book = AlertBook()
    book.observe(ERR, {}, "rule", True, 0)
    book.observe(LAT, {}, "rule", True, 0, for_ms=60 * S)
    book.observe({**ERR, "service": "db"}, {}, "rule", True, 0)
    assert [a.fingerprint for a in book.firing("checkout")] == [fingerprint(ERR)]
    assert book.firing("nobody") == []


def test_take_changes_reports_state_and_forgotten_alerts_once() -> None:
    book = AlertBook()
    book.observe(ERR, {}, "rule", True, 0)
    state = book.take_changes()[fingerprint(ERR)]
    assert state is not None and state["state"] == FIRING
    assert book.take_changes() == {}
    book.observe(ERR, {}, "rule", False, 5 * S)
    assert book.take_changes() == {fingerprint(ERR): None}
    # Restoring from the per-alert table values gives the same book.
    book.observe(LAT, {}, "rule", True, 0, for_ms=60 * S)
    values = [v for v in book.take_changes().values() if v is not None]
    assert AlertBook.from_dict({"alerts": values}).to_dict() == book.to_dict()


def test_transition_dict_is_json_and_suppression_only_marks() -> None:
    [t] = AlertBook().observe(ERR, {"runbook": "x"}, "health", True, 0)
    muted = t.suppress("sil-abc")
    data = json.loads(json.dumps(muted.to_dict()))
    assert data["suppressed"] is True and data["suppressed_by"] == "sil-abc"
    assert data["status"] == FIRING and data["labels"] == ERR and t.suppressed is False
    assert t.match_labels()["__source__"] == "health"
    assert t.match_labels()["__fingerprint__"] == t.fingerprint


steps = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 40 * S), st.booleans(), st.integers(0, 3)),
    max_size=30,
)


def run(steps_: list[tuple[int, int, bool, int]], tick_every: int | None,
        restore_at: int | None = None) -> list[dict]:
    book, out, now = AlertBook(), [], 0
    for i, (which, dt, active, kind) in enumerate(steps_):
        if restore_at == i:
            book = AlertBook.from_dict(json.loads(json.dumps(book.to_dict())))
        if tick_every:
            for t in range(now + tick_every, now + dt, tick_every):
                out += book.tick(t)
        now += dt
        labels = [LAT, ERR, {**LAT, "service": "db"}][which]
        if kind == 0:
            out += book.pulse(labels, {}, "anomaly", now, 30 * S)
        else:
            out += book.observe(labels, {}, "rule", active, now, for_ms=(kind - 1) * 20 * S,
                                keep_firing_for_ms=15 * S)
    out += book.tick(now + 10**9)
    return [t.to_dict() for t in out]


def per_alert(transitions: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for t in transitions:
        grouped.setdefault(t["fingerprint"], []).append(t)
    return grouped


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(1 * S, 25 * S))
def test_output_does_not_depend_on_tick_cadence(steps_: list, tick_every: int) -> None:
    reference = run(steps_, None)
    # Alerts interleave differently (a tick reports sooner), but each alert's own history
    # is the same, timestamps included.
    assert per_alert(run(steps_, tick_every)) == per_alert(reference)
    # Per alert, the statuses follow the lifecycle and time never runs backwards.
    allowed = {None: {PENDING, FIRING}, PENDING: {FIRING, RESOLVED}, FIRING: {RESOLVED}}
    state: dict[str, str | None] = {}
    last: dict[str, int] = {}
    for t in reference:
        fp = t["fingerprint"]
        assert t["status"] in allowed[state.get(fp)]
        assert t["updated_at_ms"] >= last.get(fp, 0)
        state[fp] = None if t["status"] == RESOLVED else t["status"]
        last[fp] = t["updated_at_ms"]
    assert len({t["event_id"] for t in reference}) == len(reference)


@settings(max_examples=100, deadline=None)
@given(steps, st.integers(0, 30))
def test_restoring_from_a_snapshot_mid_stream_changes_nothing(steps_: list, at: int) -> None:
    assert run(steps_, 7 * S, restore_at=at) == run(steps_, 7 * S)


def test_transitions_fit_the_alert_event_schema() -> None:
    book = AlertBook()
    out = book.observe(LAT, {"summary": "slow"}, "rule", True, 0, for_ms=10 * S)
    out += book.tick(10 * S) + book.observe(LAT, {}, "rule", False, 20 * S, for_ms=10 * S)
    out.append(out[-1].suppress("sil-1"))
    alert_event = codec("AlertEvent")
    for t in out:
        record = t.to_dict()
        alert_event.validate(record)
        assert alert_event.decode(alert_event.encode(record)) == record
