"""Worker HTTP: liveness, readiness (Kafka, database, partitions) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.app import Vigil
from pipeline.selfmetrics import CONSUMER_LAG, REGISTRY, WORKER_IDLE


def register(vigil: Vigil) -> None:
    app = vigil.app

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    @app.page("/health/ready")
    async def ready(web: Any, request: Any) -> Any:
        checks = readiness(vigil)
        status = 200 if all(checks.values()) else 503
        return web.json({"ready": all(checks.values()), "checks": checks}, status=status)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        _update_lag(vigil)
        WORKER_IDLE.set(0.0 if vigil.busy() else 1.0)
        return web.bytes(generate_latest(REGISTRY),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.timer(5.0)
    async def ping_database() -> None:
        await vigil.database.ping()


def readiness(vigil: Vigil) -> dict[str, bool]:
    consumer = vigil.app.consumer
    assignment = consumer.assignment() if consumer is not None else set()
    return {
        "kafka": bool(vigil.app.producer is not None and vigil.app.producer.started),
        "database": vigil.database.healthy,
        "partitions_assigned": bool(assignment),
    }


def _update_lag(vigil: Vigil) -> None:
    consumer = vigil.app.consumer
    if consumer is None:
        return
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        committed: Any = getattr(consumer, "_committed_offset", {})
        position = committed.get(tp)  # last committed offset: the figure a restart resumes at
        if highwater is not None and position is not None:
            CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))
