"""Outbound Kafka records, buffered and made durable together before input is acked."""

from __future__ import annotations

from typing import Any

from pipeline.selfmetrics import PRODUCED


class Outbox:
    """Collects encoded records for outbound topics; `flush` sends them and waits until the
    broker has them all, so a checkpoint after it never outruns its outputs."""

    def __init__(self, app: Any, topics: dict[str, Any]) -> None:
        self._app = app
        self._topics = topics
        self._pending: list[tuple[str, bytes | None, bytes | None]] = []

    def add(self, short: str, key: bytes | None, value: bytes | None) -> None:
        self._pending.append((short, key, value))

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        for short, key, value in pending:
            await self._topics[short].send(key=key, value=value)
            PRODUCED.labels(short).inc()
        if pending:
            await self._app.producer.flush()
