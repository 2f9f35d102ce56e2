"""Types of the compiled MetricBatch byte walk (`_metricbatch.pyx`)."""

from collections.abc import Callable
from typing import Any

import numpy as np

class Malformed(Exception): ...

def header(data: bytes) -> tuple[str, int, int]: ...
def strings(raw: bytes) -> list[str]: ...
def series(
    data: bytes, pos: int, table: Any, resolve: Callable[[Any, bytes, list[int], int], Any]
) -> tuple[
    tuple[
        list[str],
        list[str],
        list[str],
        list[dict[str, str]],
        np.ndarray,
        np.ndarray,
        np.ndarray,
        np.ndarray,
    ],
    list[tuple[int, Any, int, int, int, int]],
]: ...
