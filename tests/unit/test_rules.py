"""Threshold, dynamic-threshold and deadman rules: loading, evaluation, state round trips."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.rules
from pipeline import ROOT
from pipeline.aggregate import ClosedWindow
from pipeline.alerts import AlertBook
from pipeline.codec import decode, encode
from pipeline.configfile import ConfigError
from pipeline.rules import (
    STALE_MS,
    Condition,
    DeadmanRule,
    DynamicThresholdRule,
    RuleDocument,
    RuleSet,
    Template,
    format_value,
    load_rules,
    parse_duration_ms,
)
from pipeline.selector import parse_selector

S = 1000
W = 10 * S  # the default (smallest) window width
GRACE = 5 * S


def win(name: str, service: str, start_ms: int, *, width_s: int = 10, kind: str = "GAUGE",
        labels: dict[str, str] | None = None, **values: float | None) -> ClosedWindow:
    every = {"service": service, **(labels or {})}
    series_id = name + json.dumps(every, sort_keys=True)
    row: dict[str, Any] = dict(count=1, sum=0.0, min=0.0, max=0.0, mean=0.0, last=0.0,
                               increase=None, rate=None, p50=None, p90=None, p95=None, p99=None)
    row.update(values)
    return ClosedWindow(series_id, name, service, every, kind, width_s, start_ms, **row)


def latency(service: str, start_ms: int, p99: float, route: str = "/pay") -> ClosedWindow:
    return win("http_request_duration_seconds", service, start_ms, kind="OBSERVATION",
               labels={"route": route}, p99=p99)


def requests(service: str, start_ms: int, code: str, increase: float) -> ClosedWindow:
    return win("http_requests_total", service, start_ms, kind="COUNTER", labels={"code": code},
               increase=increase, rate=increase / 10)


def load(tmp_path: Path, text: str, **kwargs: Any) -> RuleSet:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(text)
    return load_rules(tmp_path, **kwargs)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [str(p) for p in info.value.problems]


def summary(conditions: list[Condition]) -> list[tuple[str, bool, int]]:
    return [(c.labels["service"], c.active, c.now_ms) for c in conditions]


LATENCY_RULE = """\
kind: ThresholdRule
name: HighLatencyP99
selector: 'http_request_duration_seconds{route!~"/health.*"}'
field: p99
op: '>'
value: 0.5
for: 2m
keep_firing_for: 1m30s
labels: {team: payments}
annotations:
  summary: '{{ service }} {{ labels.route }}: {{ value | round(2) }}s > {{ threshold }}'
  what: '{{ name }}/{{ field }}{{ labels.missing }}'
"""

RATIO_RULE = """\
kind: ThresholdRule
name: ErrorRatioHigh
ratio: {numerator: 'http_requests_total{code=~"5.."}', denominator: http_requests_total,
        field: increase}
op: '>'
value: 0.05
severity: critical
annotations: {summary: '{{ value | round(3) }}'}
"""

DEADMAN_RULE = """\
kind: DeadmanRule
name: NoMetrics
selector: '{__name__=~".+"}'
scope: %s
windows: 3
forget_after: 1h
"""

DYNAMIC_RULE = """\
kind: DynamicThresholdRule
name: Unusual
selector: http_request_duration_seconds
field: p99
direction: %s
k: 3
history: %d
min_history: 5
forget_after: 10m
"""


def test_module_doctest() -> None:
    assert doctest.testmod(pipeline.rules).failed == 0


@pytest.mark.parametrize(("text", "ms"), [
    ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000), ("0", 0),
    ("1h30m", 5_400_000), ("500ms", 500), ("1w", 604_800_000), ("0s", 0),
])
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["2minutes", "", "5", 5, "1.5h", "m", "30m1h", None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration_ms(text)


# --- static thresholds ---------------------------------------------------------------------


def test_threshold_fires_clears_and_carries_alert_arguments(tmp_path: Path) -> None:
    rules = load(tmp_path, LATENCY_RULE)
    [fire] = rules.evaluate([latency("checkout", 0, 0.734), latency("checkout", 0, 9, "/health")],
                            now_ms=15_000)
    assert fire == Condition(
        {"service": "checkout", "route": "/pay", "team": "payments",
         "alertname": "HighLatencyP99", "severity": "warning"},
        {"summary": "checkout /pay: 0.73s > 0.5", "what": "HighLatencyP99/p99"},
        "rule", True, 15_000, 120_000, 90_000,
    )
    [again] = rules.evaluate([latency("checkout", W, 0.9)], now_ms=25_000)
    assert again.active and again.annotations["summary"] == "checkout /pay: 0.9s > 0.5"
    [clear] = rules.evaluate([latency("checkout", 2 * W, 0.5)], now_ms=35_000)
    assert (clear.active, clear.labels, clear.annotations) == (False, fire.labels, {})
    assert rules.evaluate([latency("checkout", 3 * W, 0.1)], now_ms=45_000) == []


def test_conditions_drive_the_alert_book(tmp_path: Path) -> None:
    rules = load(tmp_path, LATENCY_RULE.replace("for: 2m", "for: 20s"))
    book = AlertBook()
    statuses = []
    for step, p99 in enumerate([0.9, 0.9, 0.9, 0.1]):
        now = (step + 1) * W + GRACE
        for condition in rules.evaluate([latency("checkout", step * W, p99)], now):
            statuses += [t.status for t in condition.observe(book)]
    statuses += [t.status for t in book.tick(10**9)]
    assert statuses == ["pending", "firing", "resolved"]


@pytest.mark.parametrize(("op", "hits"), [
    (">", [2.0]), (">=", [1.0, 2.0]), ("<", [0.0]), ("<=", [0.0, 1.0]), ("==", [1.0]),
    ("!=", [0.0, 2.0]),
])
def test_operators(tmp_path: Path, op: str, hits: list[float]) -> None:
    rules = load(tmp_path, f"kind: ThresholdRule\nname: G\nselector: g\nfield: last\n"
                           f"op: '{op}'\nvalue: 1\n")
    fired = [v for v in (0.0, 1.0, 2.0)
             if any(c.active for c in rules.evaluate([win("g", f"s{v}", 0, last=v)], 1))]
    assert fired == hits


def test_series_without_the_field_and_other_widths_are_skipped(tmp_path: Path) -> None:
    rules = load(tmp_path, "kind: ThresholdRule\nname: I\nselector: '{__name__=~\"m.*\"}'\n"
                           "field: increase\nop: '>='\nvalue: 0\nwidth_s: 60\n")
    windows = [win("m_gauge", "a", 0, width_s=60, last=5.0),
               win("m_counter", "a", 0, width_s=10, kind="COUNTER", increase=5.0),
               win("m_counter", "a", 0, width_s=60, kind="COUNTER", increase=5.0)]
    [only] = rules.evaluate(windows, 70_000)
    assert only.active and "code" not in only.labels and only.labels["service"] == "a"
    assert only.annotations["summary"] == (
        'I: increase of {__name__=~"m.*"} is 5 (>= 0), service a')


def test_holding_condition_goes_stale_without_data(tmp_path: Path) -> None:
    rules = load(tmp_path, LATENCY_RULE)
    rules.evaluate([latency("a", 0, 1.0), latency("b", 0, 1.0)], 15_000)
    rules.evaluate([latency("a", W, 0.1)], 25_000)  # a clears itself; b goes quiet
    due = W + STALE_MS
    assert rules.tick(due - 1) == []
    assert summary(rules.tick(due + 60_000)) == [("b", False, due)]
    assert rules.tick(due + 10**7) == []


# --- ratio ---------------------------------------------------------------------------------


def test_ratio_joins_numerator_and_denominator_per_service_and_window(tmp_path: Path) -> None:
    rules = load(tmp_path, RATIO_RULE)
    batch = [
        requests("a", 0, "200", 90), requests("a", 0, "500", 6), requests("a", 0, "503", 4),
        requests("b", 0, "200", 99), requests("b", 0, "500", 1),
        requests("a", W, "200", 100),  # a, second window: no 5xx series at all -> 0
        requests("c", 0, "500", 3),  # the denominator's selector matches 5xx series too
        win("http_requests_total", "d", 0, kind="GAUGE", last=1.0),  # no increase: skipped
    ]
    conditions = rules.evaluate(batch, 25_000)
    assert [(c.labels, c.annotations, c.active) for c in conditions] == [
        ({"service": "a", "alertname": "ErrorRatioHigh", "severity": "critical"},
         {"summary": "0.1"}, True),
        ({"service": "a", "alertname": "ErrorRatioHigh", "severity": "critical"}, {}, False),
        ({"service": "c", "alertname": "ErrorRatioHigh", "severity": "critical"},
         {"summary": "1"}, True),
    ]


def test_ratio_needs_a_denominator_series(tmp_path: Path) -> None:
    rules = load(tmp_path, RATIO_RULE.replace("denominator: http_requests_total",
                                              "denominator: 'http_requests_total{code=\"200\"}'"))
    assert rules.evaluate([requests("c", 0, "500", 3)], 15_000) == []
    [fire] = rules.evaluate([requests("c", W, "500", 3), requests("c", W, "200", 3)], 25_000)
    assert fire.annotations == {"summary": "1"}


def test_ratio_division_by_zero_follows_promql(tmp_path: Path) -> None:
    rules = load(tmp_path, RATIO_RULE)
    [inf] = rules.evaluate([requests("a", 0, "500", 0), requests("a", 0, "503", 2),
                            win("http_requests_total", "a", 0, kind="COUNTER",
                                labels={"code": "200"}, increase=-2.0)], 15_000)
    assert inf.active and inf.annotations == {"summary": "+Inf"}
    [nan] = rules.evaluate([requests("a", W, "500", 0), requests("a", W, "200", 0)], 25_000)
    assert not nan.active


# --- dynamic thresholds --------------------------------------------------------------------


def test_dynamic_threshold_warms_up_fires_and_clears(tmp_path: Path) -> None:
    rules = load(tmp_path, DYNAMIC_RULE % ("above", 30))
    rng = np.random.default_rng(7)
    values = list(0.2 + 0.01 * rng.standard_normal(12))
    values[3] = 5.0  # a spike during warm-up is learned, not reported
    values[10] = 20.0
    active = []
    for step, value in enumerate(values):
        for c in rules.evaluate([latency("a", step * W, value)], (step + 1) * W):
            active.append((step, c.active))
    assert active == [(10, True), (11, False)]


@given(st.lists(st.floats(-1e3, 1e3), min_size=5, max_size=40), st.floats(-2e3, 2e3))
@settings(max_examples=60, deadline=None)
def test_dynamic_band_is_mean_plus_minus_k_std_while_history_is_short(
    history: list[float], probe: float
) -> None:
    # With a long EWMA span the first windows are weighted equally: exact mean and stddev.
    rule = DynamicThresholdRule(
        name="D", selector=parse_selector("x"), field="last", direction="both", k=2.0,
        history=1000, min_history=5, annotations={"t": Template.parse("{{ threshold }}")})
    rules = RuleSet([rule])
    for step, value in enumerate(history):
        rules.evaluate([win("x", "a", step * W, last=value)], step)
    out = rules.evaluate([win("x", "a", len(history) * W, last=probe)], len(history))
    mean, std = float(np.mean(history)), float(np.std(history))
    upper, lower = mean + 2 * std, mean - 2 * std
    tolerance = 1e-7 * (1 + abs(mean) + std)
    active = bool(out) and out[0].active
    if min(abs(probe - upper), abs(probe - lower)) > tolerance:
        assert active == (probe > upper or probe < lower)
    if active:
        expected = upper if probe >= mean else lower
        assert math.isclose(float(out[0].annotations["t"]), expected, abs_tol=tolerance)


@pytest.mark.parametrize(("direction", "fires"), [
    ("above", [5.0]), ("below", [-5.0]), ("both", [5.0, -5.0]),
])
def test_dynamic_directions(tmp_path: Path, direction: str, fires: list[float]) -> None:
    fired = []
    for probe in (5.0, -5.0):
        rules = load(tmp_path, DYNAMIC_RULE % (direction, 30))
        for step in range(8):
            rules.evaluate([latency("a", step * W, 0.2 + 0.01 * (step % 2))], step)
        if any(c.active for c in rules.evaluate([latency("a", 8 * W, probe)], 9)):
            fired.append(probe)
    assert fired == fires


def test_dynamic_forgets_idle_series_and_ignores_replays(tmp_path: Path) -> None:
    rules = load(tmp_path, DYNAMIC_RULE % ("above", 30))
    for step in range(6):
        rules.evaluate([latency("a", step * W, 0.2 + 0.01 * (step % 2))], step)
    assert rules.evaluate([latency("a", 5 * W, 50.0)], 7) == []  # replayed window
    assert rules.evaluate([latency("a", 6 * W, 50.0)], 8)[0].active
    state = rules.to_dict()["rules"]
    [dynamic] = state.values()
    assert len(dynamic["baseline"]) == 1
    rules.tick(6 * W + W + 10 * 60_000 - 1)
    assert len(rules.to_dict()["rules"][next(iter(state))]["baseline"]) == 1
    rules.tick(6 * W + W + 10 * 60_000)
    assert rules.to_dict()["rules"][next(iter(state))]["baseline"] == {}
    assert rules.evaluate([latency("a", 200 * W, 50.0)], 9) == []  # learning afresh


# --- deadman -------------------------------------------------------------------------------


def test_deadman_service_scope_fires_once_and_recovers(tmp_path: Path) -> None:
    rules = load(tmp_path, DEADMAN_RULE % "service")
    for start in (0, W, 2 * W):
        rules.evaluate([win("m", "a", start), win("m2", "a", start, labels={"x": "1"}),
                        win("m", "b", start)], start + W + GRACE)
    rules.evaluate([win("m", "b", 3 * W)], 4 * W + GRACE)
    fire_at = 2 * W + 4 * W + GRACE  # the third empty window after 2*W has closed
    assert rules.tick(fire_at - 1) == []
    [fire] = rules.tick(fire_at)
    assert fire == Condition({"service": "a", "alertname": "NoMetrics", "severity": "critical"},
                             {"summary": "NoMetrics: no data from service a for 30s"},
                             "deadman", True, fire_at, 0, 0)
    # b went quiet after 3*W, so it is due one window later than a; a is not repeated.
    assert summary(rules.tick(fire_at + 5 * W)) == [("b", True, fire_at + W)]
    [back] = rules.evaluate([win("m2", "a", 9 * W, labels={"x": "1"})], 10 * W + GRACE)
    assert (back.active, back.labels, back.source) == (False, fire.labels, "deadman")
    assert summary(rules.tick(13 * W + GRACE)) == [("a", True, 13 * W + GRACE)]


def test_deadman_series_scope_names_the_silent_series(tmp_path: Path) -> None:
    rules = load(tmp_path, (DEADMAN_RULE % "series").replace('{__name__=~".+"}', "hb"))
    for start in range(0, 6 * W, W):
        batch = [win("hb", "a", start, labels={"i": "1"})]
        if start < W:
            batch.append(win("hb", "a", start, labels={"i": "2"}))
        rules.evaluate([*batch, win("other", "z", start)], start + W + GRACE)
    [fire] = rules.tick(4 * W + GRACE)
    assert fire.labels == {"service": "a", "i": "2", "alertname": "NoMetrics",
                           "severity": "critical"}
    assert fire.annotations["summary"] == "NoMetrics: no data from series hb of a for 30s"


def test_deadman_output_does_not_depend_on_tick_frequency(tmp_path: Path) -> None:
    dense, sparse = (load(tmp_path, DEADMAN_RULE % "service") for _ in range(2))
    for rules in (dense, sparse):
        rules.evaluate([win("m", "a", 0)], W + GRACE)
    fine = [c for t in range(0, 400 * W, 777) for c in dense.tick(t)]
    assert fine == sparse.tick(400 * W - 1)
    assert [(c.active, c.now_ms) for c in fine] == [(True, 4 * W + GRACE), (False, W + 3_600_000)]


def test_deadman_forgets_a_long_silent_service(tmp_path: Path) -> None:
    rules = load(tmp_path, DEADMAN_RULE % "service")
    rules.evaluate([win("m", "a", 0)], W + GRACE)
    out = rules.tick(10 * 3_600_000)
    assert [(c.active, c.now_ms) for c in out] == [(True, 4 * W + GRACE), (False, W + 3_600_000)]
    assert rules.to_dict()["rules"].popitem()[1]["seen"] == {}
    assert rules.tick(20 * 3_600_000) == []


def test_deadman_counts_only_its_width(tmp_path: Path) -> None:
    rules = load(tmp_path, DEADMAN_RULE % "service")
    rules.evaluate([win("m", "a", 0)], W + GRACE)
    rules.evaluate([win("m", "a", 60_000, width_s=60)], 125_000)
    assert [c.active for c in rules.tick(125_000)][:1] == [True]


# --- templates -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "{{ __import__('os') }}", "{{ __import__('os').system('id') }}", "{{ value.__class__ }}",
    "{{ labels['x'] }}", "{{ value | round(2) | upper }}", "{{ value | int }}",
    "{{ name | round(2) }}", "{{ service.x }}", "{{ labels }}", "{{ self }}", "{{ value ",
    "x }}", "{{ lipsum.__globals__ }}", "{{ value + 1 }}",
])
def test_templates_reject_anything_but_variables(text: str) -> None:
    with pytest.raises(ValueError):
        Template.parse(text)


def test_templates_render_variables_only() -> None:
    template = Template.parse("{{service}}: {{ value|round(1) }} vs {{ threshold }} "
                              "[{{ labels.team }}|{{ labels.none }}] {% raw %} {{ field }}")
    values = {"service": "api", "value": 0.26, "threshold": 3.0, "field": "p99", "name": "X"}
    assert template.render(values, {"team": "core"}) == "api: 0.3 vs 3 [core|] {% raw %} p99"
    assert template.variables == {"service", "value", "threshold", "labels", "field"}


@pytest.mark.parametrize(("value", "text"), [
    (3.0, "3"), (0.25, "0.25"), (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"),
    (7, "7"), (1e20, "1e+20"), ("x", "x"),
])
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text


def test_injection_in_a_rule_file_is_a_config_error(tmp_path: Path) -> None:
    text = LATENCY_RULE.replace("{{ name }}", "{{ __import__(\"os\").system(\"touch pwned\") }}")
    [problem] = problems(tmp_path, text)
    assert problem.startswith("rules/r.yaml:12: annotations.what: template expression")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


# --- config errors -------------------------------------------------------------------------

BASE = "kind: ThresholdRule\nname: R\nselector: x\nfield: p99\nop: '>'\nvalue: 1\n"


@pytest.mark.parametrize(("text", "expected"), [
    (BASE.replace("'>'", "'=>'"), "r.yaml:5: op: Input should be '>', '>=',"),
    (BASE.replace("p99", "p999"), "r.yaml:4: field: Input should be 'count'"),
    (BASE.replace("selector: x", "selector: 'x{a=~\"(\"}'"),
     "r.yaml:3: selector: invalid selector at column 6: bad regex for 'a'"),
    (BASE.replace("selector: x", "selector: '{a=~\".*\"}'"),
     "r.yaml:3: selector: invalid selector at column 1: selector must name a metric"),
    (BASE + "for: 2minutes\n", "r.yaml:7: for: expected a duration such as 30s"),
    (BASE + "keep_firing_for: 10\n", "r.yaml:7: keep_firing_for: expected a duration"),
    (BASE.replace("value: 1", "value: .nan"), "r.yaml:6: value: must be a finite number"),
    (BASE + "ratio: {numerator: a, denominator: b, field: increase}\n",
     "r.yaml:7: ratio: give either selector (with field) or ratio, not both"),
    ("kind: ThresholdRule\nname: R\nop: '>'\nvalue: 1\n",
     "r.yaml:1: needs selector and field, or ratio"),
    (BASE.replace("field: p99\n", ""), "r.yaml:1: field: required with selector"),
    ("kind: ThresholdRule\nname: R\nop: '>'\nvalue: 1\nfield: count\n"
     "ratio: {numerator: a, denominator: b, field: increase}\n",
     "r.yaml:5: field: with ratio, field goes inside ratio"),
    ("kind: ThresholdRule\nname: R\nop: '>'\nvalue: 1\n"
     "ratio: {numerator: a, denominator: 'b{', field: increase}\n",
     "r.yaml:5: ratio.denominator: invalid selector at column 3"),
    (BASE + "annotations:\n  summary: ok\n  x: '{{ foo }}'\n",
     "r.yaml:9: annotations.x: unknown template variable 'foo'"),
    (BASE + "width_s: 30\n", "r.yaml:7: width_s: 30 is not a configured window width (10, 60)"),
    (BASE + "severity: page\n", "r.yaml:7: severity: Input should be 'critical'"),
    (BASE + "labels: {severity: x}\n", "r.yaml:7: labels: 'severity' is set by Vigil"),
    (BASE + "labels: {'bad-name': x}\n", "r.yaml:7: labels: 'bad-name' is not a label name"),
    (BASE.replace("name: R", "name: 9lives"), "r.yaml:2: name: must be letters"),
    (BASE + "sevrity: info\n", "r.yaml:7: sevrity: unknown field"),
    (BASE.replace("ThresholdRule", "Threshold"), "r.yaml:1: kind: must be one of"),
    (BASE.replace("kind: ThresholdRule\n", ""), "r.yaml:1: kind: required field missing"),
    (BASE + "---\n" + BASE + "annotations: {summary: other}\n",
     "r.yaml:9: name: rule 'R' is defined identically (but for annotations) at rules/r.yaml:1"),
    ("kind: DeadmanRule\nname: D\nselector: x\nannotations: {summary: '{{ field }}'}\n",
     "r.yaml:4: annotations.summary: unknown template variable 'field' in a DeadmanRule"),
    ("kind: DeadmanRule\nname: D\nselector: x\nwindows: 5\nforget_after: 1m\n",
     "r.yaml:5: forget_after: must be longer than (windows + 1) × width_s + grace (65s)"),
    ("kind: DeadmanRule\nname: D\nselector: x\nscope: host\n", "r.yaml:4: scope: Input should"),
    ("kind: DynamicThresholdRule\nname: D\nselector: x\nfield: p99\nk: 0\n",
     "r.yaml:5: k: Input should be greater than 0"),
    ("kind: DynamicThresholdRule\nname: D\nselector: x\nfield: p99\nmin_history: 1\n",
     "r.yaml:5: min_history: Input should be greater than or equal to 2"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].startswith("rules/" + expected), found


def test_example_rule_files_load() -> None:
    rules = load_rules(ROOT / "config" / "examples")
    kinds = {type(rule).__name__ for rule in rules.rules}
    assert kinds == {"ThresholdRule", "DynamicThresholdRule", "DeadmanRule"}
    assert any(isinstance(r, DeadmanRule) and r.scope == "series" for r in rules.rules)


def test_missing_rules_directory_means_no_rules(tmp_path: Path) -> None:
    assert len(load_rules(tmp_path)) == 0


# --- state ---------------------------------------------------------------------------------

ALL_RULES = "---\n".join([LATENCY_RULE, RATIO_RULE, DEADMAN_RULE % "service",
                          (DEADMAN_RULE % "series").replace("NoMetrics", "SeriesGone"),
                          DYNAMIC_RULE % ("both", 20)])


def scenario(seed: int, steps: int) -> list[tuple[list[ClosedWindow], int]]:
    """Batches with spikes, error bursts, and services and series that come and go."""
    rng = np.random.default_rng(seed)
    batches = []
    for step in range(steps):
        start, batch = step * W, []
        for service in ("a", "b", "c"):
            if rng.random() < 0.15:
                continue  # service silent this window
            spike = rng.random() < 0.1
            batch.append(latency(service, start, float(5.0 if spike else 0.2 + rng.random() / 10)))
            if rng.random() < 0.8:
                batch.append(latency(service, start, float(rng.random()), route="/cart"))
            batch.append(requests(service, start, "200", float(rng.integers(0, 100))))
            if rng.random() < 0.3:
                batch.append(requests(service, start, "500", float(rng.integers(0, 20))))
        batches.append((batch, start + W + GRACE + int(rng.integers(0, 3 * W))))
    return batches


def run(rules: RuleSet, batches: list[tuple[list[ClosedWindow], int]]) -> list[Condition]:
    out = []
    for batch, now in batches:
        out += rules.evaluate(batch, now)
        out += rules.tick(now)
    return out


ALL = [RuleDocument.model_validate(doc).root for doc in yaml.safe_load_all(ALL_RULES)]


@given(st.integers(0, 2**32 - 1), st.integers(0, 60))
@settings(max_examples=15, deadline=None)
def test_restoring_mid_stream_gives_identical_conditions(seed: int, cut: int) -> None:
    batches = scenario(seed, 60)
    expected = run(RuleSet(ALL, grace_ms=GRACE), batches)
    first = RuleSet(ALL, grace_ms=GRACE)
    head = run(first, batches[:cut])
    saved = json.loads(json.dumps(first.to_dict(), allow_nan=False))
    resumed = RuleSet(ALL, grace_ms=GRACE).from_dict(saved)
    assert head + run(resumed, batches[cut:]) == expected
    assert {c.labels["alertname"] for c in expected} >= {"HighLatencyP99", "NoMetrics"}


def test_alerts_of_removed_rules_are_cleared_after_restore(tmp_path: Path) -> None:
    rules = RuleSet(ALL, grace_ms=GRACE)
    rules.evaluate([latency("a", 0, 9.0), requests("a", 0, "500", 5)], 15_000)
    saved = json.loads(json.dumps(rules.to_dict()))
    edited = [r for r in ALL if r.name != "HighLatencyP99"]
    resumed = RuleSet(edited, grace_ms=GRACE).from_dict(saved)
    assert json.loads(json.dumps(resumed.to_dict()))["orphans"] == [[
        {"service": "a", "route": "/pay", "team": "payments", "alertname": "HighLatencyP99",
         "severity": "warning"}, "rule"]]
    cleared = resumed.tick(16_000)
    assert [(c.labels["alertname"], c.active, c.now_ms) for c in cleared] == [
        ("HighLatencyP99", False, 16_000)]
    assert resumed.tick(17_000) == []
    # The ratio rule is unchanged, so its held alert clears the ordinary way.
    [ratio] = resumed.evaluate([requests("a", W, "200", 5)], 25_000)
    assert (ratio.labels["alertname"], ratio.active) == ("ErrorRatioHigh", False)


def test_state_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="rule state version 99"):
        RuleSet(ALL).from_dict({"version": 99, "rules": {}, "orphans": []})


def test_condition_encodes_as_an_alert_condition_record(tmp_path: Path) -> None:
    [fire] = load(tmp_path, LATENCY_RULE).evaluate([latency("a", 0, 1.0)], 15_000)
    record = fire.to_record()
    assert decode("AlertCondition", encode("AlertCondition", record)) == record
    assert (record["ts_ms"], record["pulse"], record["for_ms"]) == (15_000, False, 120_000)
