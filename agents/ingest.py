"""Dead letters for every input agent: to vigil.dlq, to the dead_letters table, counted."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.codec import encode
from pipeline.ingest import Origin, refused, storable
from pipeline.producer import producer_config
from pipeline.selfmetrics import DEAD_LETTERS
from pipeline.settings import Settings
from pipeline.sinks.kafka import Outbox
from pipeline.sinks.timescale import DEAD_LETTERS as DEAD_LETTERS_TABLE
from pipeline.sinks.timescale import Database

MAX_DLQ_PAYLOAD = producer_config({})["message.max.bytes"] - 64 * 1024
"""Input may be as large as the broker allows; its dead letter, with the envelope around it,
must still fit what our producer sends, so a payload beyond this is cut (the detail says so)."""


def check(settings: Settings, record_type: str, record: Mapping[str, Any]
          ) -> tuple[str, str] | None:
    """`pipeline.ingest.refused` with this worker's bounds; the wall clock sets "future"."""
    latest_ms = int((time.time() + settings.max_future_s) * 1000)
    return refused(record_type, record, settings.max_label_bytes, latest_ms)


def origin_of(event: Any, partitions: int) -> Origin:
    message = event.message
    return Origin(topic=message.topic, partition=message.partition, offset=message.offset,
                  key=message.key, ts_ms=int(message.timestamp * 1000), partitions=partitions)


class DeadLetterBox:
    """Buffers dead letters until the owning stage's next checkpoint writes them."""

    def __init__(self, outbox: Outbox, database: Database) -> None:
        self._outbox = outbox
        self._database = database
        self._rows: list[dict[str, Any]] = []

    def add(self, letters: Iterable[dict[str, Any]]) -> None:
        for letter in letters:
            if len(letter["payload"]) > MAX_DLQ_PAYLOAD:
                size = len(letter["payload"])
                letter = {**letter, "payload": letter["payload"][:MAX_DLQ_PAYLOAD],
                          "detail": storable(f"payload cut to {MAX_DLQ_PAYLOAD} of {size} "
                                             f"bytes; {letter['detail']}")}
            self._outbox.add("dlq", letter["topic"].encode(), encode("DeadLetter", letter))
            self._rows.append({**letter,
                               "ts": datetime.fromtimestamp(letter["ts_ms"] / 1000, UTC)})
            DEAD_LETTERS.labels(letter["topic"], letter["reason"]).inc()

    def __len__(self) -> int:
        return len(self._rows)

    async def write(self) -> None:
        rows, self._rows = self._rows, []
        await self._database.upsert(DEAD_LETTERS_TABLE, rows)
