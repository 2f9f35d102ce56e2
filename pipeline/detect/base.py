"""What a detector says about one window aggregate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["up", "down"]


def squash(m: float) -> float:
    """Map a non-negative score into [0, 1) without saturating, so top scores still rank."""
    return m / (1.0 + m)


@dataclass(frozen=True, slots=True)
class Score:
    """The verdict on one point.

    `score` is in [0, 1) and `is_anomaly` is exactly `score >= threshold` of the detector's
    sensitivity. `direction` says which side of its past the point broke out on, and
    `feature` which signal did it (value, moving_average, seasonal_difference,
    forecast_residual), so callers can classify and explain the anomaly.
    """

    value: float
    score: float
    is_anomaly: bool
    expected_value: float
    deviation_percentage: float
    direction: Direction
    feature: str
