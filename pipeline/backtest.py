"""Replay a recorded series through the product detector, exactly as the pipeline scores it.

Each row is scored by the same `Detector` the detect stage runs, with the same defaults,
using only the rows before and at it, so a backtest shows what Vigil would have alerted on.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.detect import Detector, DetectorConfig, OutOfOrder, Score

KINDS = ("GAUGE", "COUNTER", "OBSERVATION")
_MS_FROM = 1e11  # a bare number at or above this is epoch milliseconds (1e11 s is year 5138)


@dataclass(frozen=True, slots=True)
class BacktestRow:
    """One scored row; `score` is None for a counter's first row, which has no rate yet."""

    timestamp: object
    value: float
    score: Score | None

    @property
    def anomaly_score(self) -> float:
        return self.score.score if self.score else 0.0

    @property
    def is_anomaly(self) -> bool:
        return self.score.is_anomaly if self.score else False


def parse_timestamp(raw: object) -> int:
    """Epoch milliseconds from ISO-8601 text, a datetime, or epoch seconds or milliseconds.

    A bare number below 1e11 is seconds, else milliseconds; a time without a zone is UTC.

    >>> parse_timestamp("2024-05-01T12:00:00Z"), parse_timestamp("1714564800")
    (1714564800000, 1714564800000)
    >>> parse_timestamp(1714564800000.0)
    1714564800000
    """
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, int | float | np.integer | np.floating):
        return _epoch_ms(float(raw), raw)
    else:
        text = str(raw).strip()
        try:
            return _epoch_ms(float(text), raw)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"timestamp {raw!r}: expected ISO-8601 or epoch seconds or milliseconds"
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _epoch_ms(number: float, raw: object) -> int:
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"timestamp {raw!r}: not a non-negative epoch time")
    return round(number if number >= _MS_FROM else number * 1000)


def _value(raw: object) -> float:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"value {raw!r}: not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"value {raw!r}: NaN and infinities are not allowed")
    return value


def _score(ts_ms: list[int], values: list[float], where: Callable[[int], str],
           width_s: float | None, sensitivity: float, kind: str,
           season_s: float | None) -> list[Score | None]:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if width_s is None:
        steps = np.diff(np.asarray(ts_ms, dtype=np.int64))
        steps = steps[steps > 0]
        if not len(steps):
            raise ValueError("width_s: cannot infer the window width from fewer than two times")
        width_s = float(np.median(steps)) / 1000.0
    detector = Detector(DetectorConfig(width_s=width_s, sensitivity=sensitivity,
                                       season_s=season_s))
    scores: list[Score | None] = []
    for i, (ts, value) in enumerate(zip(ts_ms, values, strict=True)):
        if kind == "COUNTER":
            if i == 0:
                scores.append(None)
                continue
            # The per-second rate, as the aggregate stage derives it; a drop is a restart.
            previous = values[i - 1]
            value = (value - previous if value >= previous else value) / (
                (ts - ts_ms[i - 1]) / 1000.0 or width_s
            )
        try:
            scores.append(detector.update(ts, value))
        except OutOfOrder:
            raise ValueError(
                f"{where(i)}: timestamp is not in a later {width_s:g} s window than the row "
                f"before it (rows must be in time order, one per window)"
            ) from None
    return scores


def backtest(rows: Iterable[tuple[object, float]], *, width_s: float | None = None,
             sensitivity: float = 0.5, kind: str = "GAUGE",
             season_s: float | None = 86400.0) -> list[BacktestRow]:
    """Score `(timestamp, value)` rows, one per window in time order.

    `width_s` defaults to the median step between timestamps. `kind` COUNTER means the
    values are a cumulative counter, scored as its per-second rate; GAUGE and OBSERVATION
    values (already window aggregates such as a p99) are scored as they are. Rows are scored
    only once the detector has warmed up (a day plus 120 windows with the default season;
    pass `season_s=None` for data without a daily pattern); before that the score is 0.
    """
    raw: list[tuple[object, float]] = []
    ts_ms: list[int] = []
    values: list[float] = []
    for i, (timestamp, value) in enumerate(rows):
        try:
            ts_ms.append(parse_timestamp(timestamp))
            values.append(_value(value))
        except ValueError as err:
            raise ValueError(f"row {i + 1}: {err}") from None
        raw.append((timestamp, values[-1]))
    scores = _score(ts_ms, values, lambda i: f"row {i + 1}", width_s, sensitivity, kind,
                    season_s)
    return [BacktestRow(t, v, s) for (t, v), s in zip(raw, scores, strict=True)]


def backtest_csv(in_path: Path | str, out_path: Path | str, *, width_s: float | None = None,
                 sensitivity: float = 0.5, kind: str = "GAUGE",
                 season_s: float | None = 86400.0) -> int:
    """Read `timestamp,value` CSV, write `timestamp,value,anomaly_score,is_anomaly`.

    A header row is optional; with one, the columns are found by name. Returns the number
    of anomalies; a bad row fails with its file and line, e.g. `in.csv:7: value 'x': ...`.
    """
    in_path = Path(in_path)
    texts: list[tuple[str, str]] = []
    lines: list[int] = []
    ts_ms: list[int] = []
    values: list[float] = []
    with in_path.open(newline="") as handle:
        reader = csv.reader(handle)
        cols = (0, 1)
        for record in reader:
            line = reader.line_num
            if not record or not "".join(record).strip():
                continue
            if not lines and not texts and record[0].strip().lower() == "timestamp":
                names = [c.strip().lower() for c in record]
                if "value" not in names:
                    raise ValueError(f"{in_path}:{line}: header has no 'value' column")
                cols = (names.index("timestamp"), names.index("value"))
                continue
            try:
                if len(record) <= max(cols):
                    raise ValueError(f"expected timestamp and value, got {record!r}")
                ts_ms.append(parse_timestamp(record[cols[0]]))
                values.append(_value(record[cols[1]]))
            except ValueError as err:
                hint = "" if texts else " (a header row must name columns timestamp and value)"
                raise ValueError(f"{in_path}:{line}: {err}{hint}") from None
            texts.append((record[cols[0]], record[cols[1]]))
            lines.append(line)
    scores = _score(ts_ms, values, lambda i: f"{in_path}:{lines[i]}", width_s, sensitivity,
                    kind, season_s)
    anomalies = 0
    with Path(out_path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("timestamp", "value", "anomaly_score", "is_anomaly"))
        for (ts_text, value_text), score in zip(texts, scores, strict=True):
            flag = bool(score and score.is_anomaly)
            anomalies += flag
            writer.writerow((ts_text, value_text, f"{score.score if score else 0.0:.6f}",
                             "true" if flag else "false"))
    return anomalies
