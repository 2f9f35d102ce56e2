"""The columnar form a decoded MetricBatch takes on its way to aggregation.

Samples stay in flat numpy arrays so that validation and aggregation work on whole
batches; a series is named once per message, not once per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAUGE, COUNTER, OBSERVATION = 0, 1, 2
KIND_NAMES = ("GAUGE", "COUNTER", "OBSERVATION")


@dataclass(slots=True)
class SampleBatch:
    """Samples of one message: per-series metadata plus per-sample columns.

    `series_ids[i]` is the canonical id of series i: its sorted label set written as
    `name{k="v",...}` (Prometheus text form), which is also the key of its aggregates.
    `labels[i]` maps every label but `__name__` (service included) for series i.
    `series_index[j]` says which series sample j belongs to.
    """

    source: str
    series_ids: list[str]
    names: list[str]
    services: list[str]
    labels: list[dict[str, str]]
    kinds: np.ndarray  # int8 per series
    series_index: np.ndarray  # int32 per sample
    ts_ms: np.ndarray  # int64 per sample
    values: np.ndarray  # float64 per sample

    @property
    def sample_count(self) -> int:
        return int(self.values.shape[0])
