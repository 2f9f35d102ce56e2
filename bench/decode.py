"""Decode throughput of MetricBatch: fastavro's generic reader against Vigil's decoder.

Run: `PYTHONPATH=. python bench/decode.py`. Prints samples/s for the two workload shapes
of PRODUCT.md §8 (20 series x 50 samples, and 1,000 series x 1 sample per message).
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable

import fastavro

from pipeline.codec import codec
from pipeline.metricbatch import decode_metric_batch

SHAPES = {"standard (20 series x 50)": (20, 50), "scrape (1000 series x 1)": (1000, 1)}


def make_batch(n_series: int, per_series: int, seed: int = 0) -> dict:
    """A MetricBatch record shaped like real traffic: few names, many label values."""
    rng = random.Random(seed)
    symbols: list[str] = []
    index: dict[str, int] = {}

    def ref(s: str) -> int:
        if s not in index:
            index[s] = len(symbols)
            symbols.append(s)
        return index[s]

    start_ms = 1_760_000_000_000
    series = []
    for i in range(n_series):
        labels = {
            "__name__": ("http_request_duration_seconds", "http_requests_total", "cpu_usage")[
                i % 3
            ],
            "service": f"svc-{i % 7}",
            "instance": f"10.0.{i // 250}.{i % 250}:8080",
            "method": ("GET", "POST")[i % 2],
            "route": f"/api/v1/resource/{i % 40}",
            "code": ("200", "404", "500")[i % 3],
        }
        series.append(
            {
                "labels_refs": [ref(s) for kv in labels.items() for s in kv],
                "kind": ("OBSERVATION", "COUNTER", "GAUGE")[i % 3],
                "ts_ms": [start_ms + 10 * j + rng.randrange(10) for j in range(per_series)],
                "values": [rng.lognormvariate(0, 1) for _ in range(per_series)],
            }
        )
    return {"source": "bench", "symbols": symbols, "series": series}


def rate(decode: Callable[[bytes], object], payloads: list[bytes], samples: int) -> float:
    """Best of five passes, in samples per second."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for p in payloads:
            decode(p)
        best = min(best, time.perf_counter() - t0)
    return samples * len(payloads) / best


def main() -> None:
    schema = codec("MetricBatch").schema

    def fastavro_decode(payload: bytes) -> object:
        return fastavro.schemaless_reader(io.BytesIO(payload), schema, None)

    for shape, (n_series, per_series) in SHAPES.items():
        payloads = [
            codec("MetricBatch").encode(make_batch(n_series, per_series, s)) for s in range(50)
        ]
        samples = n_series * per_series
        baseline = rate(fastavro_decode, payloads, samples)
        ours = rate(decode_metric_batch, payloads, samples)
        print(
            f"{shape:28s} fastavro {baseline / 1e6:6.2f}M samples/s   "
            f"vigil {ours / 1e6:6.2f}M samples/s   ({ours / baseline:.1f}x)"
        )


if __name__ == "__main__":
    main()
