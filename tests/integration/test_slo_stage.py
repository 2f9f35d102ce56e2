"""SLOs end to end on the real broker and database: three days of event time through the
metrics path and the SLO stage, every minute's status checked against figures computed
here from the counts sent, burn alerts as the SRE workbook's table says, the monthly SLA
view by hand, and a kill -9 in the middle changing nothing."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.codec import encode
from pipeline.envelope import unwrap
from pipeline.ingest import partition_for
from pipeline.kafka import client_config, create_topics
from pipeline.producer import MetricsProducer
from pipeline.settings import Settings
from pipeline.slo import BURN_RULES, BURN_WINDOWS, MINUTE_MS
from tests.integration.harness import Worker, wait_for

pytestmark = pytest.mark.integration

T0 = 1_790_812_800_000  # 2026-10-01T00:00:00Z
MINUTES = 3 * 1440 + 60  # minutes 0..MINUTES-1 of traffic; minute -1 primes the counters
BURST = 2 * 1440  # the burst starts on day 2, after a day of clean traffic fills 1d and 6h
BUDGET = 0.001
WINDOW_S = 30 * 86400
PARTITIONS = 4
CHUNK = 240  # minutes per MetricBatch
# One window width halves the pipeline's work (minute M is then complete once minute M+1's
# windows close, so the heartbeats that close the last minute are two minutes apart), and
# the stages these tests do not look at stay off.
WORKER_ENV = {"VIGIL_WINDOW_WIDTHS_S": "[60]",
              "VIGIL_STAGES": '["catalog", "metrics", "slo", "alerts", "web"]'}

# Bad requests per minute, and all requests per minute, by scenario.
SCENARIOS: dict[str, tuple[Callable[[int], int], int]] = {
    "steady": (lambda m: 10, 1000),  # 1 %: burn 10
    "burst": (lambda m: 200 if BURST <= m < BURST + 10 else 0, 1000),  # 20 % for 10 min
    "slow": (lambda m: 2, 1000),  # 0.2 %: burn 2
    "leak": (lambda m: 1, 2000),  # 0.05 %: burn 0.5
}


def service_names(tag: str, scenarios: tuple[str, ...] = tuple(SCENARIOS)) -> dict[str, str]:
    """Scenario → service name, each on a partition of its own: a partition's stream time
    is shared, so one service per partition lets each batch span many minutes."""
    names: dict[str, str] = {}
    taken: set[int] = set()
    for scenario in scenarios:
        for i in itertools.count():
            name = f"{scenario}{tag}{i}"
            partition = partition_for(name.encode(), PARTITIONS)
            if partition not in taken:
                taken.add(partition)
                names[scenario] = name
                break
    return names


SLO_YAML = """\
apiVersion: openslo/v1
kind: SLO
metadata: {name: SERVICE-availability}
spec:
  service: SERVICE
  budgetingMethod: Occurrences
  timeWindow: [{duration: 30d, isRolling: true}]
  objectives: [{target: 0.999}]
  indicator:
    spec:
      ratioMetric:
        counter: true
        good:  {metricSource: {type: vigil, spec: {query: 'http_requests_total{code!~"5.."}'}}}
        total: {metricSource: {type: vigil, spec: {query: 'http_requests_total'}}}
"""


def configure(settings: Settings, tmp_path: Path, services: dict[str, str]) -> None:
    slos = tmp_path / "config" / "slos"
    slos.mkdir(parents=True)
    for service in services.values():
        (slos / f"{service}.yaml").write_text(SLO_YAML.replace("SERVICE", service))
    settings.config_dir = tmp_path / "config"
    settings.partitions = PARTITIONS
    create_topics(settings)


def produce(settings: Settings, services: dict[str, str], minutes: range,
            close: bool) -> None:
    """Cumulative counters, one sample per series per minute of event time, CHUNK minutes
    per message with the two series interleaved minute by minute (the aggregator judges
    samples in message order: a series listed after another's later samples is late);
    `close` adds two heartbeats after the last minute so every minute's windows close."""
    producer = MetricsProducer(client_config(settings), settings.topic("metrics"))
    for scenario, service in services.items():
        bad_of, total = SCENARIOS[scenario]
        bad = np.array([0] + [bad_of(m) for m in range(MINUTES)])  # minute -1 primes
        good = np.where(np.arange(MINUTES + 1) > 0, total, 0) - bad
        cumulative = {"200": np.cumsum(good).tolist(), "500": np.cumsum(bad).tolist()}
        symbols = ["__name__", "http_requests_total", "service", service, "code", "200", "500"]
        for lo in range(0, len(minutes), CHUNK):
            series = [{"labels_refs": [0, 1, 2, 3, 4, 5 + i], "kind": "COUNTER",
                       "ts_ms": [T0 + m * MINUTE_MS], "values": [cumulative[code][m + 1]]}
                      for m in minutes[lo:lo + CHUNK] for i, code in enumerate(cumulative)]
            batch = {"source": "test", "symbols": symbols, "series": series}
            producer.send_raw(encode("MetricBatch", batch), service.encode())
        if close:
            producer.add_many("heartbeat", {"service": service}, "GAUGE",
                              [T0 + MINUTES * MINUTE_MS, T0 + (MINUTES + 2) * MINUTE_MS],
                              [1.0, 1.0])
    producer.flush()


# --- what the SLO stage must say, computed here from the counts ------------------------


def expected_statuses(scenario: str, slo: str) -> list[dict[str, Any]]:
    """Every minute from the priming one, per PRODUCT.md §5 and pipeline/slo.py's rules."""
    bad_of, total = SCENARIOS[scenario]
    bad = np.array([0] + [bad_of(m) for m in range(MINUTES)], dtype=np.int64)
    all_ = np.array([0] + [total] * MINUTES, dtype=np.int64)
    cum_bad = np.concatenate(([0], np.cumsum(bad)))
    cum_all = np.concatenate(([0], np.cumsum(all_)))
    out = []
    for i in range(MINUTES + 1):  # i = 0 is minute -1

        def burn(minutes: int, i: int = i) -> float:
            lo = max(0, i + 1 - minutes)
            b, t = cum_bad[i + 1] - cum_bad[lo], cum_all[i + 1] - cum_all[lo]
            return float(b) / float(t) / BUDGET if t else 0.0

        rates = {w: burn(m) for w, m in BURN_WINDOWS.items()}
        remaining = 1.0 - burn(30 * 1440)
        ts = T0 + i * MINUTE_MS
        if remaining <= 0:
            tte: float | None = 0.0
        elif rates["1h"] > 0:
            tte = remaining * WINDOW_S / rates["1h"]
        else:
            tte = None
        good = float(cum_all[i + 1] - cum_bad[i + 1])
        sli = good / float(cum_all[i + 1]) if cum_all[i + 1] else 1.0
        out.append({"slo": slo, "ts_ms": ts, "sli": sli, "error_budget_remaining": remaining,
                    **{f"burn_rate_{w}": r for w, r in rates.items()},
                    "exhaustion_at_ms": None if tte is None else ts + round(tte * 1000)})
    return out


def expected_conditions(statuses: list[dict[str, Any]]) -> list[tuple[str, int, bool]]:
    """(alertname, ts_ms, active): every minute a rule holds, and the minute it stops."""
    out = []
    for rule in BURN_RULES:
        held = False
        for s in statuses:
            active = (s[f"burn_rate_{rule.long_window}"] > rule.factor
                      and s[f"burn_rate_{rule.short_window}"] > rule.factor)
            if active or held:
                out.append((rule.alertname, s["ts_ms"], active))
            held = active
    return sorted(out, key=lambda c: (c[1], c[0]))


# --- what it said ------------------------------------------------------------------------

COLUMNS = ("slo", "ts_ms", "sli", "error_budget_remaining",
           *(f"burn_rate_{w}" for w in BURN_WINDOWS), "exhaustion_at_ms")


def status_rows(dsn: str, slo: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(
            "SELECT slo, (extract(epoch FROM ts) * 1000)::bigint, sli, error_budget_remaining, "
            "burn_rate_5m, burn_rate_30m, burn_rate_1h, burn_rate_2h, burn_rate_6h, "
            "burn_rate_1d, burn_rate_3d, (extract(epoch FROM exhaustion_at) * 1000)::bigint "
            "FROM slo_status WHERE slo = %s ORDER BY ts", (slo,))
        return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]


def all_rows(dsn: str, services: dict[str, str]) -> dict[str, list[dict[str, Any]]] | None:
    rows = {s: status_rows(dsn, f"{s}-availability") for s in services.values()}
    return rows if all(len(r) == MINUTES + 1 for r in rows.values()) else None


def assert_statuses(found: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        for column, value in want.items():
            close = value if not isinstance(value, float) else pytest.approx(value, rel=1e-12)
            assert got[column] == close, (column, got, want)


def conditions(settings: Settings, wanted: int) -> dict[str, list[tuple[str, int, bool]]]:
    """Distinct slo conditions on internal.conditions by service, in the order first seen;
    each record's key must be its service."""
    consumer = Consumer({**client_config(settings), "group.id": "check-conditions",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic("internal.conditions")])
    found: dict[str, list[tuple[str, int, bool]]] = {}
    seen: set[tuple[str, str, int, bool]] = set()
    try:
        def more() -> bool:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                return len(seen) >= wanted
            kind, record = unwrap(message.value() or b"")
            if kind == "AlertCondition" and record["source"] == "slo":  # detect's go here too
                labels = record["labels"]
                assert message.key() == labels["service"].encode()
                item = (labels["alertname"], record["ts_ms"], record["active"])
                if (labels["service"], *item) not in seen:
                    seen.add((labels["service"], *item))
                    found.setdefault(labels["service"], []).append(item)
            return len(seen) >= wanted
        wait_for(more, 120, f"{wanted} SLO conditions", every_s=0)
    finally:
        consumer.close()
    return found


Found = tuple[dict[str, list[dict[str, Any]]], dict[str, list[tuple[str, int, bool]]]]


def committed_windows(settings: Settings) -> int:
    """Windows the SLO stage (the only one reading them here) has acknowledged."""
    consumer = Consumer({**client_config(settings), "group.id": f"{settings.topic_prefix}worker"})
    try:
        partitions = [TopicPartition(settings.topic("internal.windows"), p)
                      for p in range(PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def alert_events(settings: Settings, service: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(settings.database_dsn() or "") as conn:
        return conn.execute(
            "SELECT alertname, status, (extract(epoch FROM ts) * 1000)::bigint "
            "FROM alert_events WHERE service = %s AND source = 'slo' ORDER BY ts, status",
            (service,)).fetchall()


def check_everything(settings: Settings, services: dict[str, str]) -> Found:
    """Statuses and conditions equal to those computed here; returns both by service."""
    dsn = settings.database_dsn() or ""
    rows = wait_for(lambda: all_rows(dsn, services), 300, "a status for every minute")
    assert rows is not None
    expected = {scenario: expected_statuses(scenario, f"{service}-availability")
                for scenario, service in services.items()}
    for scenario, service in services.items():
        assert_statuses(rows[service], expected[scenario])
    want = {services[s]: expected_conditions(e) for s, e in expected.items()}
    found = conditions(settings, sum(map(len, want.values())))
    for service, items in want.items():
        assert sorted(found.get(service, []), key=lambda c: (c[1], c[0])) == items, service
    return rows, found


# --- the tests ---------------------------------------------------------------------------


def test_burn_rates_alerts_and_budgets_are_exact(settings: Settings, tmp_path: Path) -> None:
    services = service_names("a")
    configure(settings, tmp_path, services)
    with Worker(settings, tmp_path, **WORKER_ENV):
        produce(settings, services, range(-1, MINUTES), close=True)
        by_service, found = check_everything(settings, services)
        events = wait_for(lambda: e if len(e := alert_events(settings, services["burst"])) >= 2
                          else None, 60, "the burst's alert firing and resolved")
    dsn = settings.database_dsn() or ""
    rows = {scenario: by_service[service] for scenario, service in services.items()}

    # Steady 1 % errors against 99.9 %: burn 10 in every window once 3 d of history fill it.
    for row in rows["steady"][1 + 3 * 1440:]:
        assert [row[f"burn_rate_{w}"] for w in BURN_WINDOWS] == [10.0] * len(BURN_WINDOWS)
    fired = {s: {name for name, _, active in found.get(services[s], []) if active}
             for s in SCENARIOS}
    # 10 > 6 pages through 6h/30m; 10 < 14.4 never through 1h/5m.
    assert fired["steady"] == {"SLOBurnRatePageSlow", "SLOBurnRateTicketFast",
                               "SLOBurnRateTicketSlow"}
    # A 20 % burst: 1h burn at its k-th minute is 200 k / 60 > 14.4 from k = 5.
    burst = found[services["burst"]]
    assert fired["burst"] == {"SLOBurnRatePageFast"}
    assert burst[0] == ("SLOBurnRatePageFast", T0 + (BURST + 5) * MINUTE_MS, True)
    # Resolved once the 5 m window is clean (5 minutes after the burst), 1h still burning.
    assert burst[-1] == ("SLOBurnRatePageFast", T0 + (BURST + 15) * MINUTE_MS, False)
    assert rows["burst"][1 + BURST + 14]["burn_rate_1h"] == pytest.approx(2000 / 60 / 1000 / BUDGET)
    # ... and the alert state machine turns that into one firing and one resolved event.
    assert events == [("SLOBurnRatePageFast", "firing", T0 + (BURST + 5) * MINUTE_MS),
                      ("SLOBurnRatePageFast", "resolved", T0 + (BURST + 15) * MINUTE_MS)]
    # 0.2 % for three days: burn 2 > 1 tickets over 3d/6h, 2 < 3 nothing else.
    assert fired["slow"] == {"SLOBurnRateTicketSlow"}
    assert fired["leak"] == set()

    # Budget by hand. Leak: 1 bad in 2000 = half the 0.1 % budget; at a burn of 0.5 the
    # other half lasts 0.5 × 30 d / 0.5 = 30 d.
    last = rows["leak"][-1]
    assert last["error_budget_remaining"] == 0.5
    assert last["exhaustion_at_ms"] == last["ts_ms"] + WINDOW_S * 1000
    # Burst: 2000 bad in 1000 requests a minute over MINUTES minutes.
    assert rows["burst"][-1]["error_budget_remaining"] == pytest.approx(
        1 - 2000 / (1000 * MINUTES) / BUDGET, rel=1e-12)
    assert rows["burst"][-1]["exhaustion_at_ms"] is None  # nothing burns in the last hour

    # The analyst view for October 2026, by hand: the month's last status of each SLO.
    with psycopg.connect(dsn) as conn:
        sla = {r[0]: r[1:] for r in conn.execute(
            "SELECT service, slos, worst_sli, strictest_objective, error_budget_used, "
            "budget_exhausted, uptime_pct::float8, extract(epoch FROM period)::float8 / 86400 "
            "FROM sla_monthly WHERE month = '2026-10-01T00:00:00Z'")}
    slos, worst_sli, objective, used, exhausted, uptime, days = sla[services["leak"]]
    assert (slos, exhausted, uptime, days) == (1, False, 100.0, 31.0)
    assert (worst_sli, objective, used) == pytest.approx((1999 / 2000, 0.999, 0.5), rel=1e-12)
    assert sla[services["steady"]][3] == pytest.approx(10.0)
    assert sla[services["steady"]][4] is True
    assert sla[services["burst"]][3] == pytest.approx(2000 / (1000 * MINUTES) / BUDGET)


def test_a_kill_mid_run_changes_no_status(settings: Settings, tmp_path: Path) -> None:
    services = service_names("k", ("burst", "leak"))
    configure(settings, tmp_path, services)
    dsn = settings.database_dsn() or ""
    half = MINUTES // 2
    worker = Worker(settings, tmp_path, VIGIL_SLO_CHECKPOINT_S="1", **WORKER_ENV).start()
    try:
        produce(settings, services, range(-1, half), close=False)
        # Input the stage acknowledged is not read again: from here on, the later minutes
        # come out right only if the snapshot restores every SLO's past.
        wait_for(lambda: committed_windows(settings) > half // 2, 120,
                 "the SLO stage to acknowledge windows")
    finally:
        worker.kill()
    assert len(status_rows(dsn, f"{services['burst']}-availability")) < MINUTES
    produce(settings, services, range(half, MINUTES), close=True)
    with Worker(settings, tmp_path, name="again", **WORKER_ENV):
        check_everything(settings, services)
