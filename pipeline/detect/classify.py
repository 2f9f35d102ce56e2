"""Name an anomaly's type and severity from what broke out, which way, and how far.

`classify` reads the metric name and aggregate field the way PRODUCT.md §5 names the
anomaly types; `severity` maps the detector score and the service tier to a severity.
"""

from __future__ import annotations

from typing import Literal

from pipeline.detect.base import Direction

AnomalyType = Literal[
    "LATENCY_SPIKE", "THROUGHPUT_DROP", "ERROR_RATE_INCREASE", "SATURATION", "OTHER"
]
Severity = Literal["critical", "warning", "info"]

_QUANTILES = frozenset({"p50", "p90", "p95", "p99"})
_THROUGHPUT_FIELDS = frozenset({"rate", "count", "increase"})
# Substrings of a lower-cased metric name, checked in the order of `classify`.
_ERROR_WORDS = ("error", "fail", "5xx")
_LATENCY_WORDS = ("latency", "duration", "response_time")
_SATURATION_WORDS = ("cpu", "memory", "disk", "pool", "queue", "utilization", "utilisation",
                     "saturation")
_THROUGHPUT_WORDS = ("request", "throughput", "rps", "qps")

# (critical at or above, warning at or above) per catalog tier. A score s is a novelty of
# s / (1 - s) range widths: 0.5 is one width past the range, 0.75 three, 0.9 nine.
# SUPPORT and BATCH services never page as critical. An unknown tier counts as BUSINESS.
SEVERITY_THRESHOLDS: dict[str, tuple[float, float]] = {
    "CRITICAL": (0.75, 0.5),
    "BUSINESS": (0.9, 0.6),
    "SUPPORT": (2.0, 0.75),
    "BATCH": (2.0, 0.9),
}


def _has(name: str, words: tuple[str, ...]) -> bool:
    return any(w in name for w in words)


def classify(metric_name: str, field: str, direction: Direction) -> AnomalyType:
    """The anomaly type of a series' aggregate `field` breaking out `direction`.

    >>> classify("http_request_duration_seconds", "p99", "up")
    'LATENCY_SPIKE'
    >>> classify("http_requests_total", "rate", "down")
    'THROUGHPUT_DROP'
    >>> classify("http_requests_error_ratio", "mean", "up")
    'ERROR_RATE_INCREASE'
    >>> classify("db_pool_in_use", "last", "up")
    'SATURATION'
    >>> classify("http_requests_total", "rate", "up")
    'OTHER'
    """
    name = metric_name.lower()
    up = direction == "up"
    if _has(name, _ERROR_WORDS):
        return "ERROR_RATE_INCREASE" if up else "OTHER"
    if field in _QUANTILES or _has(name, _LATENCY_WORDS):
        return "LATENCY_SPIKE" if up else "OTHER"
    if _has(name, _SATURATION_WORDS):
        return "SATURATION" if up else "OTHER"
    if field in _THROUGHPUT_FIELDS or _has(name, _THROUGHPUT_WORDS):
        return "OTHER" if up else "THROUGHPUT_DROP"
    return "OTHER"


def severity(score: float, tier: str | None) -> Severity:
    """Severity of an anomaly with detector `score` on a service of catalog `tier`.

    >>> severity(0.8, "CRITICAL"), severity(0.8, "BUSINESS"), severity(0.8, "BATCH")
    ('critical', 'warning', 'info')
    """
    critical, warning = SEVERITY_THRESHOLDS.get(tier or "BUSINESS", SEVERITY_THRESHOLDS["BUSINESS"])
    if score >= critical:
        return "critical"
    if score >= warning:
        return "warning"
    return "info"
