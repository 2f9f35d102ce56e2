"""Vigil's own Prometheus metrics, in one registry served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CONSUMED_MESSAGES = Counter("vigil_consumed_messages", "Messages consumed", ["topic"],
                            registry=REGISTRY)
CONSUMED_SAMPLES = Counter("vigil_consumed_samples", "Metric samples decoded",
                           registry=REGISTRY)
CHECKPOINTED_MESSAGES = Counter(
    "vigil_checkpointed_messages", "Input messages whose results are durable (acknowledged)",
    ["stage"], registry=REGISTRY)
AGGREGATED_SAMPLES = Counter("vigil_aggregated_samples", "Samples added to windows",
                             registry=REGISTRY)
DEAD_LETTERS = Counter("vigil_dead_letters", "Records sent to the dead-letter topic",
                       ["topic", "reason"], registry=REGISTRY)
DEAD_LETTERED_SAMPLES = Counter("vigil_dead_lettered_samples", "Samples dead-lettered",
                                ["reason"], registry=REGISTRY)
REPARTITIONED = Counter("vigil_repartitioned_messages",
                        "Keyless or mis-keyed messages re-produced keyed by service",
                        registry=REGISTRY)
PRODUCED = Counter("vigil_produced_messages", "Messages produced", ["topic"], registry=REGISTRY)
WINDOWS_CLOSED = Counter("vigil_windows_closed", "Window aggregates emitted", ["width_s"],
                         registry=REGISTRY)
LATE_SAMPLES = Counter("vigil_late_samples", "Samples later than the window grace",
                       registry=REGISTRY)
PROCESSING_SECONDS = Histogram(
    "vigil_processing_seconds", "Time to process one input message", ["topic"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
    registry=REGISTRY)
WINDOW_CLOSE_DELAY = Histogram(
    "vigil_window_close_delay_seconds",
    "Wall time from a window becoming closable to its aggregates being durable",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY)
DB_WRITE_SECONDS = Histogram(
    "vigil_db_write_seconds", "Batched database write latency", ["table"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0), registry=REGISTRY)
DB_WRITE_FAILURES = Counter("vigil_db_write_failures", "Database writes that failed and were "
                            "retried", ["table"], registry=REGISTRY)
CONSUMER_LAG = Gauge("vigil_consumer_lag", "Messages behind the end of the partition",
                     ["topic", "partition"], registry=REGISTRY)
OPEN_INCIDENTS = Gauge("vigil_open_incidents", "Incidents not yet resolved", registry=REGISTRY)
HELD_FEED_RECORDS = Gauge("vigil_incident_feed_held",
                          "Alert updates held until every alert partition has passed them",
                          registry=REGISTRY)
WORKER_IDLE = Gauge("vigil_worker_idle",
                    "1 when no stage has input to read, output to write or records held",
                    registry=REGISTRY)
ACTIVE_SERIES = Gauge("vigil_active_series", "Series with open window state",
                      registry=REGISTRY)
