"""Backtests run the product detector row by row and read and write plain CSV."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.backtest import backtest, backtest_csv, parse_timestamp
from pipeline.detect import Detector, DetectorConfig
from pipeline.detect.synthetic import latency_spike


def spiky(n: int = 400, spike_at: int = 300) -> tuple[list[int], list[float]]:
    rng = np.random.default_rng(7)
    values = (50 + rng.normal(0, 2, n)).tolist()
    values[spike_at] = 120.0
    return [1_700_000_040 + 60 * i for i in range(n)], values


def test_backtest_is_the_product_detector_with_its_defaults() -> None:
    scenario = latency_spike(seed=1)
    rows = backtest(zip(scenario.ts_ms.tolist(), scenario.values.tolist(), strict=True))
    det = Detector(DetectorConfig(width_s=scenario.width_s))
    direct = [det.update(int(t), float(v)) for t, v in zip(scenario.ts_ms, scenario.values,
                                                            strict=True)]
    assert [r.score for r in rows] == direct
    assert sum(r.is_anomaly for r in rows) == 1


def test_each_row_is_scored_from_the_rows_before_and_at_it() -> None:
    ts, values = spiky()
    full = backtest(zip(ts, values, strict=True), season_s=None)
    prefix = backtest(zip(ts[:301], values[:301], strict=True), width_s=60, season_s=None)
    assert [r.anomaly_score for r in prefix] == [r.anomaly_score for r in full[:301]]
    assert prefix[300].is_anomaly and full[300].is_anomaly


def test_csv_round_trip_with_iso_and_epoch_timestamps(tmp_path: Path) -> None:
    ts, values = spiky()
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        for i, (t, v) in enumerate(zip(ts, values, strict=True)):
            stamp = datetime.fromtimestamp(t, UTC).isoformat() if i % 3 else str(t * 1000)
            writer.writerow([stamp, repr(v)])
    out = tmp_path / "out.csv"
    assert backtest_csv(src, out, season_s=None) == 1
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "is_anomaly"]
    assert len(rows) == len(ts)
    assert [i for i, r in enumerate(rows) if r["is_anomaly"] == "true"] == [300]
    assert all(0 <= float(r["anomaly_score"]) < 1 for r in rows)
    assert rows[1]["timestamp"] == datetime.fromtimestamp(ts[1], UTC).isoformat()


def test_csv_without_header(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("".join(f"{1_700_000_000 + 10 * i},{i % 5}\n" for i in range(50)))
    out = tmp_path / "out.csv"
    assert backtest_csv(src, out, season_s=None) == 0
    assert len(out.read_text().splitlines()) == 51


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("timestamp,value\n1700000000,1\n1700000060,abc\n", r"in\.csv:3: value 'abc'"),
        ("timestamp,value\n1700000000,1\nyesterday,2\n", r"in\.csv:3: timestamp 'yesterday'"),
        ("timestamp,value\n1700000000,1\n1700000060,nan\n", r"in\.csv:3: value 'nan'"),
        ("timestamp,value\n1700000000,1\n1700000060\n", r"in\.csv:3: expected timestamp"),
        ("timestamp,value\n1700000060,1\n1700000000,2\n1700000120,2\n",
         r"in\.csv:3: timestamp is not in a later 60 s window"),
        ("time,reading\n", r"in\.csv:1: timestamp 'time'.*header row must name"),
    ],
)
def test_a_bad_row_names_its_line(tmp_path: Path, body: str, message: str) -> None:
    src = tmp_path / "in.csv"
    src.write_text(body)
    with pytest.raises(ValueError, match=message):
        backtest_csv(src, tmp_path / "out.csv", width_s=60)


def test_counter_values_are_scored_as_their_rate() -> None:
    ts, values = spiky()
    rates = [v - 20 for v in values]  # stays positive
    cumulative = np.cumsum([r * 60 for r in rates]).tolist()
    cumulative[200:] = [c - cumulative[199] for c in cumulative[200:]]  # a restart
    as_counter = backtest(zip(ts, cumulative, strict=True), kind="COUNTER", season_s=None)
    as_rate = backtest(zip(ts[1:], rates[1:], strict=True), width_s=60, season_s=None)
    assert as_counter[0].score is None and not as_counter[0].is_anomaly
    assert [r.is_anomaly for r in as_counter[1:]].index(True) == 299
    assert sum(r.is_anomaly for r in as_rate) == 1


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind 'HISTOGRAM'"):
        backtest([(0, 1.0), (60, 2.0)], kind="HISTOGRAM")


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("2024-05-01T12:00:00Z", 1_714_564_800_000),
        ("2024-05-01T14:00:00+02:00", 1_714_564_800_000),
        ("2024-05-01 12:00:00", 1_714_564_800_000),
        ("1714564800", 1_714_564_800_000),
        ("1714564800.5", 1_714_564_800_500),
        (1_714_564_800_000, 1_714_564_800_000),
        (datetime(2024, 5, 1, 12, tzinfo=UTC), 1_714_564_800_000),
    ],
)
def test_parse_timestamp(raw: object, ms: int) -> None:
    assert parse_timestamp(raw) == ms


def test_docstring_examples_run() -> None:
    import doctest

    import pipeline.backtest

    result = doctest.testmod(pipeline.backtest)
    assert result.attempted > 0 and result.failed == 0
