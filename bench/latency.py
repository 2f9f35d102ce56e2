"""Window close → its aggregate on `vigil.aggregates` (PRODUCT.md §8: p99 < 250 ms), on
live traffic. Prints figures, asserts nothing. Run against running servers (`vigil up`, or
VIGIL_KAFKA_BOOTSTRAP and VIGIL_DATABASE_URL):

    PYTHONPATH=. .venv/bin/python bench/latency.py [--series 2000] [--minutes 2]

Event time is the wall clock: every series reports once a second and each second's
samples are produced when that second has passed, as live services would. A window can
close when its partition's stream time reaches its end plus the grace, so the instant a
window closes is taken as the moment the first message carrying such a sample was handed
to the broker; its latency runs from there until a consumer of `vigil.aggregates` holds
the window's record. That includes the input's trip through the broker, the worker's
checkpoint (database write, then outbound flush) and the output's trip: what a consumer of
the topic sees. The whole pipeline runs (detection, SLOs, alerts), as in production, unless
`--stages catalog,metrics,web` leaves the ingest path alone.
"""

from __future__ import annotations

import argparse
import bisect
import json
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.memory import Run, messages
from pipeline.bench import scratch_database
from pipeline.codec import decode
from pipeline.ingest import partition_for
from pipeline.kafka import client_config
from pipeline.local import servers
from pipeline.settings import Settings
from pipeline.workload import Workload

INTERVAL_MS = 1000


class Arrivals(threading.Thread):
    """Consumes `vigil.aggregates` from its start and notes the wall time each record was
    first held; records are decoded only afterwards (`seen`), so that decoding them does
    not delay the next ones' arrival."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.held: list[tuple[float, bytes]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        topic = self.settings.topic("aggregates")
        consumer = Consumer({**client_config(self.settings), "group.id": f"latency-{topic}",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                         for p in range(self.settings.partitions)])
        try:
            while not self.stopping.is_set():
                # One at a time: `consume(n, timeout)` waits out its timeout unless n
                # records come, which would add up to that much to what is measured.
                message = consumer.poll(0.05)
                if message is not None and message.error() is None:
                    self.held.append((time.time(), message.value() or b""))
        finally:
            consumer.close()

    def seen(self) -> dict[tuple[str, int, int], list[float]]:
        """When each record was held, by (service, width_s, window_start_ms)."""
        found: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        for now, value in self.held:
            record = decode("WindowAggregate", value)
            found[(record["service"], record["width_s"], record["window_start_ms"])].append(now)
        return found


def produce_live(run: Run, workload: Workload) -> dict[int, tuple[list[int], list[float]]]:
    """Each message once the last of its samples is in the past. Per partition, in produce
    order: the stream time each message brings it to, and when it was handed over (each
    burst is flushed at once, so the producer's linger adds nothing)."""
    partitions = run.settings.partitions
    sent: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for message in messages(workload):
        last_ms = max(int(chunk.ts_ms.max()) for chunk in message.series)
        wait_s = last_ms / 1000 - time.time()
        if wait_s > 0:
            run.producer.flush(10)
            time.sleep(wait_s)
        stream, at = sent[partition_for(message.key or b"", partitions)]
        stream.append(max(last_ms, stream[-1] if stream else last_ms))
        at.append(time.time())
        run.producer.send_raw(message.payload(), message.key)
    run.producer.flush(30)
    return sent


def latencies(sent: dict[int, tuple[list[int], list[float]]],
              seen: dict[tuple[str, int, int], list[float]], grace_ms: int,
              partitions: int) -> np.ndarray:
    """Seconds from each window's closing message to each of its records on the topic."""
    out: list[float] = []
    for (service, width_s, start_ms), arrived in seen.items():
        stream, at = sent[partition_for(service.encode(), partitions)]
        closing = bisect.bisect_left(stream, start_ms + width_s * 1000 + grace_ms)
        if closing < len(stream):  # else closed by the end of the run, not by traffic
            out.extend(t - at[closing] for t in arrived)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2_000, help="each reports every second")
    parser.add_argument("--minutes", type=float, default=2.0, help="of live traffic")
    parser.add_argument("--stages", default="", help="comma-separated (default: every stage)")
    args = parser.parse_args()
    settings = servers.with_endpoints(Settings())
    with scratch_database(settings) as base, tempfile.TemporaryDirectory(
            prefix="vigil-bench-latency-") as tmp:
        stages = {"VIGIL_STAGES": json.dumps(args.stages.split(","))} if args.stages else {}
        run = Run(base, Path(tmp), "latency", **stages)
        try:
            run.start()
            arrivals = Arrivals(run.settings)
            arrivals.start()
            now_ms = int(time.time() * 1000)
            services = 20
            workload = Workload(seed=0, services=services,
                                series_per_service=args.series // services,
                                samples_per_s=args.series * 1000 / INTERVAL_MS,
                                duration_s=args.minutes * 60, start_ms=now_ms - now_ms % 1000,
                                slice_s=INTERVAL_MS / 1000)
            sent = produce_live(run, workload)
            time.sleep(5)  # the last windows closed by traffic reach the topic
            arrivals.stopping.set()
            arrivals.join()
            grace_ms = int(run.settings.grace_s * 1000)
            seconds = latencies(sent, arrivals.seen(), grace_ms, run.settings.partitions)
            assert run.worker is not None
            inside = run.worker.metrics()
        finally:
            run.stop()
    ms = seconds * 1000
    print(f"latency   {args.series:,} series × 1 sample/s, {args.minutes:g} min live, "
          f"stages {args.stages or 'all'}, "
          f"{ms.size:,} records of windows closed by traffic: window close → record on "
          f"vigil.aggregates p50 {np.percentile(ms, 50):.0f} ms, "
          f"p99 {np.percentile(ms, 99):.0f} ms, max {ms.max():.0f} ms")
    for histogram, label, what in (
            ("vigil_window_close_delay_seconds", "", "window closable → durable"),
            ("vigil_db_write_seconds", 'table="metric_aggregates"', "aggregates' COPY")):
        print(f"  in the worker, {what}: p50 ≤ {bucket_bound(inside, histogram, label, 0.5)}, "
              f"p99 ≤ {bucket_bound(inside, histogram, label, 0.99)} (histogram bounds)")


def bucket_bound(metrics: dict[str, float], histogram: str, label: str, q: float) -> str:
    """The upper bound of the bucket of `histogram` holding quantile `q`, over its samples
    carrying `label`."""
    counts: dict[float, float] = defaultdict(float)
    for sample, value in metrics.items():
        if sample.startswith(f"{histogram}_bucket{{") and label in sample:
            bound = sample.split('le="')[1].split('"')[0]
            counts[float(bound)] += value
    total = counts.get(float("inf"), 0.0)
    if not total:
        return "n/a"
    found = next(b for b, c in sorted(counts.items()) if c >= q * total)
    return f"{found * 1000:g} ms" if found != float("inf") else "inf"


if __name__ == "__main__":
    main()
