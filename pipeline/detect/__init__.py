"""Online anomaly detection on closed window aggregates (PRODUCT.md §5, DETECTION.md).

One `Detector` per series: `update(ts_ms, value) -> Score` scores a window aggregate and
then learns it; `to_bytes()` / `Detector.from_bytes()` persist it in a changelog table.
`classify` and `severity` turn a score into the anomaly event's type and severity.
"""

from pipeline.detect.base import Direction, Score, squash
from pipeline.detect.classify import AnomalyType, Severity, classify, severity
from pipeline.detect.detector import FEATURES, Detector, DetectorConfig, OutOfOrder

__all__ = [
    "FEATURES",
    "AnomalyType",
    "Detector",
    "DetectorConfig",
    "Direction",
    "OutOfOrder",
    "Score",
    "Severity",
    "classify",
    "severity",
    "squash",
]
