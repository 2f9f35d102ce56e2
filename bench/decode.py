"""Decode throughput of MetricBatch: fastavro's generic reader against Vigil's decoder.

Run: `python bench/decode.py` (after `pip install -e .`, which compiles the decoder). Prints
samples/s for the two workload shapes of PRODUCT.md §8 (20 series x 50 samples, and 1,000
series x 1 sample per message). "repeated" is the steady state: producers repeat their
symbol table and series, so series come from the decoder's caches by their raw bytes.
"churned" gives every message its own symbol table (one extra symbol shifts every ref), so
every series is resolved again from its label strings: the decoder's slow path.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable

import fastavro

from pipeline.codec import codec
from pipeline.metricbatch import MetricBatchDecoder, decode_metric_batch

SHAPES = {"standard (20 series x 50)": (20, 50), "scrape (1000 series x 1)": (1000, 1)}


def make_batch(n_series: int, per_series: int, seed: int = 0, churn: bool = False) -> dict:
    """A MetricBatch record shaped like real traffic: few names, many label values."""
    rng = random.Random(seed)
    symbols: list[str] = [f"message-{seed}"] if churn else []
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
        samples = n_series * per_series
        payloads, churned = (
            [codec("MetricBatch").encode(make_batch(n_series, per_series, s, c)) for s in range(50)]
            for c in (False, True)
        )
        baseline = rate(fastavro_decode, payloads, samples)
        repeated = rate(decode_metric_batch, payloads, samples)
        slow = rate(MetricBatchDecoder(max_tables=1).decode, churned, samples)
        print(
            f"{shape:26s} fastavro {baseline / 1e6:5.2f}M samples/s   "
            f"vigil repeated {repeated / 1e6:6.2f}M ({repeated / baseline:4.1f}x)   "
            f"churned {slow / 1e6:5.2f}M ({slow / baseline:4.1f}x)"
        )


if __name__ == "__main__":
    main()
