"""One-step forecast of a window aggregate from recent and seasonal lags.

Its residual is a novelty feature and its prediction is the `expected_value` of an anomaly.
"""

from __future__ import annotations

import math

from river import linear_model

_ALPHA = 0.05  # EWMA weight of level and scale: about the last 20 learned points
_SETTLE = 10  # points that only set level and scale, so early inputs are not wildly scaled


class SeasonalForecast:
    """river's BayesianLinearRegression on lags taken relative to a slow level.

    Inputs and target are `(v - level) / scale`, with `level` an EWMA of the learned values
    and `scale` an EWMA of their absolute deviation, so the same prior fits a request rate
    of 1e5/s and an error ratio of 1e-4, and the coefficients stay valid as the level
    drifts. Absent seasonal lags (NaN) are left out, which the model reads as "at the level".

    >>> fc = SeasonalForecast(lags=2)
    >>> series = [10.0, 11.0] * 100  # alternates, so the last value tells the next
    >>> for i in range(2, len(series)):
    ...     fc.learn_one(fc.features(series[i - 2 : i], math.nan, math.nan), series[i])
    >>> round(fc.predict_one(fc.features([11.0, 10.0], math.nan, math.nan)), 1)
    11.0
    """

    def __init__(self, lags: int):
        self.lags = lags
        self.names = [f"lag{i + 1}" for i in range(lags)]
        self.model = linear_model.BayesianLinearRegression()
        self.level = math.nan
        self.abs_dev = 0.0
        self.scale = 1.0
        self.n = 0

    def features(self, recent: list[float], season: float, season_next: float) -> dict[str, float]:
        """Model inputs; `recent` holds the last values, oldest first."""
        x = {"bias": 1.0}
        if not self.n:
            return x
        level, scale = self.level, self.scale
        for name, v in zip(self.names, reversed(recent), strict=False):
            x[name] = (v - level) / scale
        if not math.isnan(season):
            x["season"] = (season - level) / scale
        if not math.isnan(season_next):
            x["season_next"] = (season_next - level) / scale
        return x

    def predict_one(self, x: dict[str, float]) -> float:
        if not self.n:
            return math.nan
        return self.level + self.scale * self.model.predict_one(x)

    def learn_one(self, x: dict[str, float], y: float) -> None:
        """Learn `y` from the inputs `x` built by `features` before this point."""
        if self.n >= _SETTLE:
            self.model.learn_one(x, (y - self.level) / self.scale)
        if self.n:
            self.abs_dev += _ALPHA * (abs(y - self.level) - self.abs_dev)
            self.level += _ALPHA * (y - self.level)
        else:
            self.level = y
        self.n += 1
        # Bias-corrected EWMA (abs_dev starts with the second point), floored so a flat
        # series does not divide by zero.
        dev = self.abs_dev / (1.0 - (1.0 - _ALPHA) ** (self.n - 1)) if self.n > 1 else 0.0
        self.scale = max(dev, 1e-6 * abs(self.level), 1e-12)
