"""The checkpoint mechanism's handling of a record a stage fails on: dead-lettered with the
error, offset advanced, output waiting — the partition goes on instead of stalling."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from agents.checkpoint import CheckpointedStage
from pipeline.codec import decode
from pipeline.settings import Settings


class Stand:
    """The few parts of the app, outbox and database the stage touches before a flush."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def Table(self, *args: Any, **kwargs: Any) -> dict[bytes, bytes]:
        return {}

    def add(self, short: str, key: bytes | None, value: bytes, **kwargs: Any) -> None:
        self.sent.append((short, key, value))


class Fragile(CheckpointedStage[list[bytes]]):
    name = "fragile"
    min_checkpoint_interval_s = 3600.0  # no checkpoint here: the test looks before one

    def new_state(self, partition: int) -> list[bytes]:
        return []

    def restore(self, blob: bytes) -> list[bytes]:
        return []

    def snapshot(self, state: list[bytes]) -> bytes:
        return b""

    async def process(self, partition: int, state: list[bytes], event: Any) -> bool:
        if event.value == b"boom":
            raise ZeroDivisionError("a bug this input meets")
        state.append(event.value)
        return False


def event(offset: int, value: bytes) -> Any:
    message = SimpleNamespace(topic="t.metrics", partition=1, offset=offset, key=b"api",
                              timestamp=1_767_225_600.0)
    return SimpleNamespace(message=message, value=value)


def test_a_record_the_stage_fails_on_is_dead_lettered_and_the_partition_goes_on() -> None:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings(), outbox=stand, database=stand)
    stage = Fragile(vigil)  # type: ignore[arg-type]

    async def feed() -> None:
        for offset, value in enumerate([b"a", b"boom", b"b"]):
            await stage.on_event(event(offset, value))

    asyncio.run(feed())
    part = stage.partitions[1]
    assert part.state == [b"a", b"b"]
    assert part.offsets == {"t.metrics": 2} and len(part.pending) == 3
    assert part.output_waiting  # the dead letter goes out with the next checkpoint
    assert len(stage.dead_letters) == 1
    ((short, key, value),) = stand.sent
    letter = decode("DeadLetter", value)
    assert (short, key) == ("dlq", b"t.metrics")
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("t.metrics", 1, 1)
    assert letter["payload"] == b"boom" and letter["reason"] == "processing_failed"
    assert letter["detail"] == "fragile: ZeroDivisionError: a bug this input meets"
