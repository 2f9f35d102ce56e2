"""The product detector: range novelty of a window aggregate and of derived features.

Follows the measured guidance in DETECTION.md: range novelty of the value, a short moving
average, a seasonal difference and the residual of an online forecast, against the whole
history and trailing windows; the maximum of those scores squashed into [0, 1); one alert
per episode; no alert before warm-up; and points judged anomalous are held out of
everything the detector learns, so an incident never becomes the new normal unless it lasts
longer than `max_episode` points.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass

import numpy as np

from pipeline.detect.base import Score, squash
from pipeline.detect.forecast import SeasonalForecast
from pipeline.detect.novelty import RangeNovelty
from pipeline.detect.seasonal import SeasonalMemory

FEATURES = ("value", "moving_average", "seasonal_difference", "forecast_residual")
_FORMAT = b"VGD1"  # bump when the pickled layout changes; old state is then refused
_BASE_THRESHOLD = 1.0  # novelty (in range widths) that alerts at sensitivity 0.5
_DEVIATION_CAP = 1e6  # percent; keeps deviation finite when the expected value is 0


class OutOfOrder(ValueError):
    """A point for a window at or before the last one scored (e.g. a replay)."""


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Detector parameters; every count is in points (closed windows) of one series.

    `sensitivity` in (0, 1] is the one knob: 0.5 alerts at a novelty of one range width,
    each 0.25 more halves that. `season_s` (default a day) sets the seasonal features;
    None turns them off. Before an alert is possible a series needs `min_history` points,
    and as many points that have a seasonal reference when seasonal features are on.
    """

    width_s: float = 60.0
    sensitivity: float = 0.5
    season_s: float | None = 86400.0
    windows: tuple[int, ...] = (300, 3000)
    moving_average: int = 5
    lags: int = 3
    min_history: int = 120
    refractory: int = 30
    max_episode: int = 360
    max_season_slots: int = 1440

    def __post_init__(self) -> None:
        if not self.width_s > 0:
            raise ValueError(f"DetectorConfig.width_s={self.width_s}: must be > 0")
        if not 0 < self.sensitivity <= 1:
            raise ValueError(f"DetectorConfig.sensitivity={self.sensitivity}: must be in (0, 1]")
        if self.season_s is not None and self.season_s < 2 * self.width_s:
            raise ValueError(
                f"DetectorConfig.season_s={self.season_s}: must span at least two windows "
                f"of {self.width_s} s, or be None"
            )
        for name in ("moving_average", "lags", "min_history", "refractory",
                     "max_episode", "max_season_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"DetectorConfig.{name}={getattr(self, name)}: must be >= 1")

    @property
    def season_points(self) -> int | None:
        return None if self.season_s is None else round(self.season_s / self.width_s)

    @property
    def threshold(self) -> float:
        """The score at and above which a point is anomalous."""
        return squash(_BASE_THRESHOLD * 4.0 ** (1.0 - 2.0 * self.sensitivity))


class Detector:
    """Scores one series' window aggregates online; each point is scored, then learned.

    >>> det = Detector(DetectorConfig(width_s=60, season_s=None))
    >>> scores = [det.update(i * 60_000, 100.0 + (i % 7)) for i in range(300)]
    >>> any(s.is_anomaly for s in scores)
    False
    >>> spike = det.update(300 * 60_000, 400.0)
    >>> spike.is_anomaly, spike.direction, round(spike.expected_value)
    (True, 'up', 103)
    >>> restored = Detector.from_bytes(det.to_bytes())
    >>> restored.update(301 * 60_000, 103.0) == det.update(301 * 60_000, 103.0)
    True
    """

    def __init__(self, config: DetectorConfig | None = None):
        cfg = self.config = config or DetectorConfig()
        self._width_ms = round(cfg.width_s * 1000)
        self._threshold = cfg.threshold
        n = len(FEATURES)
        self._novelty = RangeNovelty(n, windows=cfg.windows)
        season = cfg.season_points
        self._season = SeasonalMemory(season, cfg.max_season_slots) if season else None
        self._forecast = SeasonalForecast(cfg.lags)
        self._recent: list[float] = []
        self._keep = max(cfg.lags, cfg.moving_average - 1)
        self._last_p: int | None = None
        self._n = 0
        self._n_seasonal = 0
        self._quiet = cfg.refractory  # consecutive points not judged anomalous
        self._run = 0  # consecutive points judged anomalous

    def update(self, ts_ms: int, value: float) -> Score:
        """Score the window starting at `ts_ms`, then learn it (unless it is anomalous)."""
        if not math.isfinite(value):
            raise ValueError(f"Detector.update: value {value!r} at ts_ms={ts_ms} is not finite")
        p = ts_ms // self._width_ms
        if self._last_p is not None and p <= self._last_p:
            raise OutOfOrder(
                f"Detector.update: ts_ms={ts_ms} is not after the last window scored "
                f"(ts_ms={self._last_p * self._width_ms})"
            )
        self._last_p = p
        cfg = self.config

        window = self._recent[len(self._recent) - cfg.moving_average + 1 :]
        moving_average = (sum(window) + value) / (len(window) + 1)
        season, season_next = self._season.at(p) if self._season else (math.nan, math.nan)
        inputs = self._forecast.features(self._recent, season, season_next)
        forecast_warm = self._forecast.n >= cfg.min_history // 2
        forecast = self._forecast.predict_one(inputs)
        residual = value - forecast if forecast_warm else math.nan
        x = np.array((value, moving_average, value - season, residual))

        excess = self._novelty.score_one(x)
        best = int(np.argmax(np.abs(excess)))
        m = abs(float(excess[best]))
        warm = self._n >= cfg.min_history and (
            self._season is None or self._n_seasonal >= cfg.min_history
        )
        raw = squash(m) if warm else 0.0
        anomalous = raw >= self._threshold
        score = raw
        if self._quiet < cfg.refractory:
            score = min(raw, self._threshold * self._quiet / cfg.refractory)

        if anomalous:
            self._quiet, self._run = 0, self._run + 1
        else:
            self._quiet, self._run = self._quiet + 1, 0
        learn = not anomalous or self._run > cfg.max_episode
        expected = forecast if forecast_warm else self._forecast.level
        if math.isnan(expected):
            expected = value
        self._learn(p, x, inputs, value if learn else expected, learn)

        if m > 0:
            up = excess[best] > 0
        else:
            up = value >= expected
        return Score(
            value=value,
            score=score,
            is_anomaly=score >= self._threshold,
            expected_value=expected,
            deviation_percentage=_deviation(value, expected),
            direction="up" if up else "down",
            feature=FEATURES[best],
        )

    def _learn(self, p: int, x: np.ndarray, inputs: dict[str, float], seasonal: float,
               learn: bool) -> None:
        """Anomalous points update the lags only: the season remembers the expected value."""
        if learn:
            self._novelty.learn_one(x)
            self._forecast.learn_one(inputs, float(x[0]))
        if self._season is not None:
            self._n_seasonal += not math.isnan(x[2])
            self._season.learn_one(p, seasonal)
        self._recent.append(float(x[0]))
        if len(self._recent) > self._keep:
            del self._recent[0]
        self._n += 1

    def to_bytes(self) -> bytes:
        """Compact, versioned state for a changelog-backed table."""
        return _FORMAT + pickle.dumps(self, protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes) -> Detector:
        if data[: len(_FORMAT)] != _FORMAT:
            raise ValueError(
                f"Detector.from_bytes: state format {data[:len(_FORMAT)]!r} is not {_FORMAT!r}"
            )
        # Only Vigil's own changelog state is loaded here, never outside input.
        detector = pickle.loads(data[len(_FORMAT) :])
        if not isinstance(detector, cls):
            raise ValueError(f"Detector.from_bytes: state holds a {type(detector).__name__}")
        return detector


def _deviation(value: float, expected: float) -> float:
    if value == expected:
        return 0.0
    if expected == 0:
        return math.copysign(_DEVIATION_CAP, value)
    pct = 100.0 * (value - expected) / abs(expected)
    return max(-_DEVIATION_CAP, min(_DEVIATION_CAP, pct))
