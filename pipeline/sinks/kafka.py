"""Outbound Kafka records, buffered and made durable together before input is acked."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.selfmetrics import PRODUCED


class Outbox:
    """Collects encoded records for outbound topics; `flush` sends them and waits until the
    broker has them all, so a checkpoint after it never outruns its outputs.

    Stages share one outbox: flushes run one at a time, so a flush that finds the records
    it added already taken by another stage's flush still returns only once they landed."""

    def __init__(self, app: Any, topics: dict[str, Any]) -> None:
        self._app = app
        self._topics = topics
        self._pending: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self._flushing = asyncio.Lock()

    def add(self, short: str, key: bytes | None, value: bytes | None,
            partition: int | None = None) -> None:
        """Queue a record; `partition` overrides the key's partition (e.g. a broadcast)."""
        self._pending.append((short, key, value, partition))

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        async with self._flushing:
            pending, self._pending = self._pending, []
            for short, key, value, partition in pending:
                await self._topics[short].send(key=key, value=value, partition=partition)
                PRODUCED.labels(short).inc()
            if pending:
                await self._app.producer.flush()
