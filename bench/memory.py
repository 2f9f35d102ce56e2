"""Resource bounds of one real `vigil worker` (PRODUCT.md §8: memory bounded by active
series, flat over time), and how fast it catches up on a backlog. Prints figures, asserts
nothing. Run against running servers (`vigil up`, or VIGIL_KAFKA_BOOTSTRAP and
VIGIL_DATABASE_URL):

    PYTHONPATH=. .venv/bin/python bench/memory.py [--only steady,per-series,churn,catch-up]

- steady: RSS after 10 and after 60 minutes of event time of one steady series set, and
  their ratio (flat means ≈ 1).
- per-series: RSS of an idle worker against the same worker holding 10,000 active series.
- churn: cohorts of new series replace the old every few minutes; with `series_idle_s` and
  `detect_forget_s` short, RSS and `vigil_active_series` must stay bounded.
- catch-up: ten minutes of event time produced while no worker runs, then the time from
  the worker being ready to its consumer group having no lag.

Event time runs as fast as the worker consumes (the workload starts in 2023, so nothing is
"in the future"). Each phase uses its own topics and a scratch database, dropped at the end.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from pipeline.bench import scratch_database
from pipeline.kafka import INPUT_TOPICS, INTERNAL_TOPICS, client_config, create_topics
from pipeline.local import servers
from pipeline.producer import MetricsProducer
from pipeline.settings import Settings
from pipeline.workload import Chunk, Message, Workload
from tests.integration.harness import Worker, wait_for

SCRAPE_MS = 10_000  # every series reports every 10 s, as a Prometheus scrape would
MINUTE_S = 60.0
CONSUMED_TOPICS = tuple(t for t in (*INPUT_TOPICS, *INTERNAL_TOPICS)
                        if t not in ("logs", "spans"))  # no stage reads those yet


def group_lag(settings: Settings) -> int:
    """Messages the workers' consumer group has not committed, over every partition of every
    topic a stage reads (a partition it never committed counts from its start)."""
    consumer = Consumer({**client_config(settings), "group.id": f"{settings.topic_prefix}worker",
                         "enable.auto.commit": False})
    try:
        topics = consumer.list_topics(timeout=10).topics
        wanted = [TopicPartition(name, p) for name in map(settings.topic, CONSUMED_TOPICS)
                  if name in topics for p in topics[name].partitions]
        committed = consumer.committed(wanted, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in wanted]
    finally:
        consumer.close()
    return sum(end - max(tp.offset, 0) for tp, end in zip(committed, ends, strict=True))


def rss_mb(worker: Worker) -> float:
    return worker.rss_kib() / 1024


def active_series(worker: Worker) -> int:
    return int(worker.metrics().get("vigil_active_series", 0.0))


def messages(workload: Workload, cohort: int | None = None) -> Iterator[Message]:
    """One message per service per slice; with `cohort`, every series carries a `pod`
    label of that cohort, so each cohort is a new set of series."""
    chunks = workload.chunks()
    while True:
        by_service: dict[str, list[Chunk]] = defaultdict(list)
        for chunk in (next(chunks, None) for _ in range(workload.series_count)):
            if chunk is None:
                return
            if cohort is not None:
                chunk = chunk._replace(labels={**chunk.labels, "pod": f"pod-{cohort}"})
            by_service[chunk.labels["service"]].append(chunk)
        for service, series in sorted(by_service.items()):
            yield Message(service.encode(), tuple(series))


def steady(series: int, minutes: float, start_ms: int, seed: int = 0) -> Workload:
    """`series` series over 20 services, one sample each per scrape, for `minutes`."""
    services = 20
    return Workload(seed=seed, services=services, series_per_service=series // services,
                    samples_per_s=series * 1000 / SCRAPE_MS, duration_s=minutes * MINUTE_S,
                    start_ms=start_ms, slice_s=SCRAPE_MS / 1000)


class Run:
    """One phase: its own topic prefix, a worker, and a producer."""

    def __init__(self, base: Settings, log_dir: Path, name: str, **env: str) -> None:
        self.settings = base.model_copy(update={
            "topic_prefix": f"bench{uuid.uuid4().hex[:8]}-{name}.",
            "home": log_dir / name})
        create_topics(self.settings)
        self.log_dir, self.name, self.env = log_dir, name, env
        self.producer = MetricsProducer(client_config(self.settings),
                                        self.settings.topic("metrics"))
        self.worker: Worker | None = None

    def start(self) -> Worker:
        self.worker = Worker(self.settings, self.log_dir, name=self.name, **self.env)
        return self.worker.start(ready_timeout_s=180)

    def produce(self, batch: Iterator[Message]) -> int:
        samples = 0
        for message in batch:
            self.producer.send_raw(message.payload(), message.key)
            samples += sum(c.ts_ms.size for c in message.series)
        self.producer.flush(120)
        return samples

    def drain(self, timeout_s: float = 3600) -> float:
        """Wait until the group has no lag; returns the seconds it took."""
        started = time.monotonic()
        wait_for(lambda: group_lag(self.settings) == 0, timeout_s,
                 f"{self.name}: no lag (log {self.log_dir})", every_s=0.5)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def bench_steady(base: Settings, logs: Path, series: int) -> None:
    run = Run(base, logs, "steady")
    try:
        worker = run.start()
        first = steady(series, 10, Workload().start_ms)
        run.produce(messages(first))
        run.drain()
        at_10 = rss_mb(worker)
        rest = steady(series, 50, first.start_ms + int(first.duration_s * 1000), seed=1)
        run.produce(messages(rest))
        run.drain()
        at_60 = rss_mb(worker)
        print(f"steady    {series:,} series: RSS {at_10:,.0f} MB after 10 min of event time, "
              f"{at_60:,.0f} MB after 60 min; ratio {at_60 / at_10:.3f}; "
              f"{active_series(worker):,} active series")
    finally:
        run.stop()


def bench_per_series(base: Settings, logs: Path, series: int) -> None:
    run = Run(base, logs, "per-series")
    try:
        worker = run.start()
        idle = rss_mb(worker)
        run.produce(messages(steady(series, 5, Workload().start_ms)))
        run.drain()
        held, active = rss_mb(worker), active_series(worker)
        per = (held - idle) / active * 10_000
        print(f"per-series idle worker {idle:,.0f} MB; with {active:,} active series "
              f"{held:,.0f} MB: {per:,.0f} MB per 10,000 series "
              f"({(held - idle) * 1024 / active:.1f} KB a series)")
    finally:
        run.stop()


def bench_churn(base: Settings, logs: Path, series: int, cohorts: int,
                cohort_minutes: float) -> None:
    idle_s = 120
    run = Run(base, logs, "churn", VIGIL_SERIES_IDLE_S=str(idle_s),
              VIGIL_DETECT_FORGET_S=str(idle_s))
    try:
        worker = run.start()
        start = Workload().start_ms
        print(f"churn     {cohorts} cohorts of {series:,} series, a new one every "
              f"{cohort_minutes:g} min of event time; series_idle_s = detect_forget_s = "
              f"{idle_s}")
        for cohort in range(cohorts):
            workload = steady(series, cohort_minutes,
                              start + int(cohort * cohort_minutes * MINUTE_S * 1000), cohort)
            run.produce(messages(workload, cohort))
            run.drain()
            print(f"          after cohort {cohort + 1:>2} "
                  f"({(cohort + 1) * series:>7,} series seen): RSS {rss_mb(worker):>6,.0f} MB, "
                  f"{active_series(worker):>6,} active series")
    finally:
        run.stop()


def bench_catch_up(base: Settings, logs: Path, series: int) -> None:
    run = Run(base, logs, "catch-up")
    try:
        workload = steady(series, 10, Workload().start_ms)
        samples = run.produce(messages(workload))
        started = time.monotonic()
        run.start()
        ready = time.monotonic() - started
        took = run.drain()
        print(f"catch-up  {samples:,} samples ({series:,} series × 10 min of event time) "
              f"behind: worker ready in {ready:.1f} s, then no lag after {took:.1f} s: "
              f"{workload.duration_s / took:,.0f}× real time, {samples / took:,.0f} samples/s")
    finally:
        run.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="steady,per-series,churn,catch-up",
                        help="comma-separated phases")
    parser.add_argument("--series", type=int, default=1_000, help="steady and churn series")
    parser.add_argument("--per-series", type=int, default=10_000)
    parser.add_argument("--catch-up-series", type=int, default=2_000)
    parser.add_argument("--cohorts", type=int, default=12)
    parser.add_argument("--cohort-minutes", type=float, default=5.0)
    args = parser.parse_args()
    phases = set(args.only.split(","))
    settings = servers.with_endpoints(Settings())
    with scratch_database(settings) as base, tempfile.TemporaryDirectory(
            prefix="vigil-bench-memory-") as tmp:
        logs = Path(tmp)
        if "steady" in phases:
            bench_steady(base, logs, args.series)
        if "per-series" in phases:
            bench_per_series(base, logs, args.per_series)
        if "churn" in phases:
            bench_churn(base, logs, args.series, args.cohorts, args.cohort_minutes)
        if "catch-up" in phases:
            bench_catch_up(base, logs, args.catch_up_series)


if __name__ == "__main__":
    main()
