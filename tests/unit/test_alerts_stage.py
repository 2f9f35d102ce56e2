"""The alert stage's clocks: the alerts of each source move on that source's event time, so
inputs that arrive at different delays (health results at once, rule conditions only after
their window closed) give the same alerts in whatever order they meet."""

from __future__ import annotations

from itertools import permutations
from types import SimpleNamespace
from typing import Any

from agents.alerts import AlertsStage, AlertsState
from pipeline.alerts import FIRING, PENDING, RESOLVED
from pipeline.envelope import wrap
from pipeline.settings import Settings

S = 1_000
T0 = 1_790_812_800_000
LABELS = {"alertname": "BusyCpu", "service": "api", "instance": "i-0", "severity": "warning"}


class Stand:
    """The parts of the app the stage touches outside a flush."""

    def Table(self, *args: Any, **kwargs: Any) -> dict[bytes, bytes]:
        return {}


def stage() -> AlertsStage:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings(), outbox=stand, database=stand)
    return AlertsStage(vigil)  # type: ignore[arg-type]


def condition(active: bool, ts_ms: int) -> tuple[str, bytes]:
    return "condition", wrap("AlertCondition", {
        "labels": LABELS, "annotations": {}, "source": "rule", "active": active,
        "pulse": False, "ts_ms": ts_ms, "for_ms": 20 * S, "keep_firing_for_ms": 0})


def health(ts_ms: int) -> tuple[str, dict[str, Any]]:
    return "health", {"service": "api", "instance": "i-0", "check": "http", "status": "HEALTHY",
                      "ts_ms": ts_ms, "latency_ms": 3.0, "message": None}


def feed(inputs: list[tuple[str, Any]]) -> list[tuple[str, int]]:
    alerts = stage()
    state: AlertsState = alerts.new_state(0)
    for kind, value in inputs:
        if kind == "condition":
            alerts._internal(0, state, value)
        else:
            alerts._health(0, state, value)
    return [(t.status, t.updated_at_ms) for t, _ in state.out
            if t.alertname == LABELS["alertname"]]


def test_a_source_running_ahead_does_not_fire_a_pending_alert_of_another() -> None:
    # CPU is high in one window and back to normal in the next, 10 s later: the rule alert
    # (for 20 s) is pending, then resolved without firing. Health results for the same
    # service arrive long before the second condition, with event times past the `for`.
    conditions = [condition(True, T0), condition(False, T0 + 10 * S)]
    results = [health(T0 + 25 * S), health(T0 + 40 * S)]
    want = [(PENDING, T0), (RESOLVED, T0 + 10 * S)]
    for order in permutations(range(4)):
        inputs = [(conditions + results)[i] for i in order]
        if inputs.index(conditions[0]) > inputs.index(conditions[1]):
            continue  # one source's records keep their order
        assert feed(inputs) == want, order


def test_a_pending_alert_fires_on_its_own_source_time() -> None:
    inputs = [condition(True, T0), health(T0 + 60 * S), condition(True, T0 + 10 * S)]
    assert feed(inputs[:2]) == [(PENDING, T0)]  # health time does not move rule alerts
    assert feed([*inputs, condition(True, T0 + 20 * S)]) == [(PENDING, T0), (FIRING, T0 + 20 * S)]
