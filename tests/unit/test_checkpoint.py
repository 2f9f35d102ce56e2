"""The checkpoint mechanism's handling of input it cannot take as it comes: a record a stage
fails on is dead-lettered and the partition goes on; records a stage never received (a hole
before a record, or nothing after its last one) are read again, in order, before what
follows them."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from agents import checkpoint
from agents.checkpoint import (
    AHEAD_OF_WRITE_MESSAGES,
    CHECKPOINT_EVERY_S,
    OUTPUT_DELAY_S,
    REREAD_RETRY_S,
    TAIL_REREAD_S,
    CheckpointedStage,
    Partition,
    StateFormatError,
)
from pipeline.codec import decode
from pipeline.settings import Settings


class Stand:
    """The few parts of the app, consumer, outbox and database the stage touches before a
    flush."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.seeks: list[tuple[str, int, int]] = []
        self.ends: dict[tuple[str, int], int] = {}  # partitions assigned, with their ends
        self.consumer = self
        self.flow_control = SimpleNamespace(is_active=lambda: True)
        self._committed_offset: dict[Any, int] = {}  # Faust's record of committed offsets
        self.starts: dict[tuple[str, int], int] = {}  # first offsets the broker still has
        self.crashed: list[BaseException] = []

    async def crash(self, reason: BaseException) -> None:
        self.crashed.append(reason)

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.starts.get((tp.topic, tp.partition), 0) for tp in tps}

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp.topic, tp.partition, offset))

    def highwater(self, tp: Any) -> int | None:
        return self.ends.get((tp.topic, tp.partition))

    def assignment(self) -> set[Any]:
        return {TP(topic, partition) for topic, partition in self.ends}

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


def fragile() -> tuple[Fragile, Stand]:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings(), outbox=stand, database=stand,
                            recovering=lambda: False, stages={}, busy=lambda: False)
    return Fragile(vigil), stand  # type: ignore[arg-type]


def timer_at(stage: Fragile, monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """The stage's timer, run at a given monotonic time (the clock starts at 100 s)."""
    stage.input_topics = {"t.metrics"}
    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])

    def look(at: float) -> None:
        clock[0] = at
        asyncio.run(stage.on_timer())
    return look


def feed(stage: Fragile, *offsets: int) -> None:
    async def run() -> None:
        for offset in offsets:
            await stage.on_event(event(offset, b"%d" % offset))
    asyncio.run(run())


def test_a_record_the_stage_fails_on_is_dead_lettered_and_the_partition_goes_on() -> None:
    stage, stand = fragile()

    async def run() -> None:
        for offset, value in enumerate([b"a", b"boom", b"b"]):
            await stage.on_event(event(offset, value))

    asyncio.run(run())
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


def test_records_the_stage_never_received_are_read_again_before_what_follows() -> None:
    stage, stand = fragile()
    # 3 and 4 were dropped from the stream's queue; 5..6 were already on their way.
    feed(stage, 0, 1, 2, 5, 6)
    assert stand.seeks == [("t.metrics", 1, 3)]
    part = stage.partitions[1]
    assert part.state == [b"0", b"1", b"2"] and part.offsets == {"t.metrics": 2}
    assert len(part.pending) == 3  # the early ones are not acknowledged: they come again
    # Records already on their way made Faust discard the seek: it is sent again, once a
    # retry interval has passed, until the missed records come.
    asyncio.run(stage.on_timer())
    assert stand.seeks == [("t.metrics", 1, 3)]
    for reread in stage._rereading.values():
        reread.sought -= REREAD_RETRY_S
    asyncio.run(stage.on_timer())
    assert stand.seeks == [("t.metrics", 1, 3)] * 2
    feed(stage, 3, 4, 5, 6, 7)
    assert part.state == [b"%d" % i for i in range(8)] and part.offsets == {"t.metrics": 7}
    assert stage._rereading == {}


def test_a_stage_without_a_checkpoint_starts_where_its_partition_starts() -> None:
    stage, stand = fragile()
    feed(stage, 2, 3)  # 0 and 1 were dropped around a rebalance before the stage saw them
    assert stand.seeks == [("t.metrics", 1, 0)] and stage.partitions[1].state == []
    feed(stage, 0, 1, 2, 3)
    assert stage.partitions[1].state == [b"0", b"1", b"2", b"3"]
    # Where retention removed the oldest records, the partition starts after them.
    stage, stand = fragile()
    stand.starts[("t.metrics", 1)] = 5
    feed(stage, 5, 6)
    assert stand.seeks == [] and stage.partitions[1].state == [b"5", b"6"]
    # An offset the group committed does not count without a checkpoint that holds the
    # records before it.
    stage, stand = fragile()
    stand._committed_offset[TP("t.metrics", 1)] = 7
    feed(stage, 7)
    assert stand.seeks == [("t.metrics", 1, 0)]


def test_stages_that_share_a_topic_seek_back_as_far_as_either_needs() -> None:
    windows, stand = fragile()
    slos = Fragile(windows.vigil)
    windows.vigil.stages.update(windows=windows, slos=slos)
    feed(windows, 0, 1, 2)
    feed(slos, 5)  # a state that holds nothing starts at the partition's start: from 0
    assert stand.seeks == [("t.metrics", 1, 0)]
    feed(windows, 5)  # ... which the other stage also sees first: its hole is 3..4
    assert stand.seeks == [("t.metrics", 1, 0)] * 2  # not 3: the first stage needs 0..2
    for stage in (windows, slos):
        feed(stage, 0, 1, 2, 3, 4, 5, 6)
    assert windows.partitions[1].state == slos.partitions[1].state == [
        b"%d" % i for i in range(7)]


def test_offsets_that_hold_no_record_are_passed_after_one_look() -> None:
    stage, stand = fragile()
    # 3 holds no record (a transaction marker, or deleted by retention): after the seek the
    # partition continues at 4, no later than the record that showed the hole.
    feed(stage, 0, 1, 2, 4, 5, 4, 5, 6)
    assert stand.seeks == [("t.metrics", 1, 3)]
    assert stage.partitions[1].state == [b"0", b"1", b"2", b"4", b"5", b"6"]


def test_records_that_never_come_are_read_again_after_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stage, stand = fragile()
    look = timer_at(stage, monkeypatch)
    feed(stage, 0, 1)
    stand.ends[("t.metrics", 1)] = 4  # 2 and 3 were fetched, then dropped before the stage
    queued: asyncio.Queue[Any] = asyncio.Queue()
    stage.stream = SimpleNamespace(channel=SimpleNamespace(queue=queued))
    look(101.0)
    look(101.0 + TAIL_REREAD_S - REREAD_RETRY_S)
    assert stand.seeks == []  # not quiet for long enough yet
    queued.put_nowait(object())  # something is still on its way to the stage
    look(101.0 + TAIL_REREAD_S)
    assert stand.seeks == []
    queued.get_nowait()
    look(101.0 + TAIL_REREAD_S + REREAD_RETRY_S)
    assert stand.seeks == [("t.metrics", 1, 2)]
    feed(stage, 4, 2, 3)  # 4 was on its way before the seek: it comes again in order
    feed(stage, 4)
    assert stage.partitions[1].state == [b"0", b"1", b"2", b"3", b"4"]
    look(200.0)
    assert stand.seeks == [("t.metrics", 1, 2)] and stage._rereading == {}


def test_records_held_but_never_acknowledged_are_read_again_once_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stage, stand = fragile()
    look = timer_at(stage, monkeypatch)
    feed(stage, 0, 1, 2, 3)  # as if restored: the state holds 0..3, nothing acknowledged
    stand.ends[("t.metrics", 1)] = 4
    stand._committed_offset[TP("t.metrics", 1)] = 1
    look(101.0)
    look(101.0 + TAIL_REREAD_S + REREAD_RETRY_S)
    assert stand.seeks == [("t.metrics", 1, 1)]  # from the committed offset, to be acked
    feed(stage, 1, 2, 3)
    assert stage._rereading == {} and len(stage.partitions[1].pending) == 7
    stand._committed_offset[TP("t.metrics", 1)] = 4  # acknowledged at the next checkpoint
    look(200.0)
    look(200.0 + TAIL_REREAD_S + REREAD_RETRY_S)
    assert stand.seeks == [("t.metrics", 1, 1)]


def test_a_restored_stage_skips_what_its_snapshot_holds() -> None:
    stage, stand = fragile()
    feed(stage, 0, 1, 2)
    feed(stage, 0, 1, 2, 3)  # replayed from the committed offset, as after a restart
    assert stand.seeks == [] and stage.partitions[1].state == [b"0", b"1", b"2", b"3"]


def test_output_waits_for_the_regular_checkpoint_while_the_partition_catches_up() -> None:
    part = Partition(state=None, offsets={}, pending=[object()], output_waiting=True,
                     last_checkpoint=0.0)
    assert part.due(OUTPUT_DELAY_S)
    part.catching_up = True
    assert not part.due(OUTPUT_DELAY_S)
    assert part.due(CHECKPOINT_EVERY_S)


def test_input_runs_ahead_of_a_write_in_flight_up_to_a_bound() -> None:
    stage, _ = fragile()
    part = Partition(state=None, offsets={})
    assert stage._may_cut(part)  # nothing written yet

    async def run() -> list[bool]:
        stage._last_write = asyncio.get_running_loop().create_future()
        seen = [stage._may_cut(part)]
        part.pending = [object()] * AHEAD_OF_WRITE_MESSAGES
        seen.append(stage._may_cut(part))
        stage._last_write.set_result(None)
        part.pending = []
        seen.append(stage._may_cut(part))
        return seen

    assert asyncio.run(run()) == [False, True, True]


class Recording(Fragile):
    """Records which partitions each write carries; a write ends when the test says."""

    min_checkpoint_interval_s = 0.0

    def __init__(self, vigil: Any) -> None:
        super().__init__(vigil)
        self.writes: list[list[int]] = []
        self.release = asyncio.Event()

    async def flush_all(self, cut: list[tuple[int, list[bytes]]]) -> None:
        self.writes.append([number for number, _ in cut])
        await self.release.wait()


def recording() -> Recording:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings(), outbox=stand, database=stand,
                            recovering=lambda: False, stages={}, busy=lambda: False)
    return Recording(vigil)  # type: ignore[arg-type]


def waiting(last_checkpoint: float, catching_up: bool = False) -> Partition[list[bytes]]:
    return Partition(state=[], offsets={}, pending=[object()], output_waiting=True,
                     catching_up=catching_up, last_checkpoint=last_checkpoint)


def test_live_output_of_other_partitions_joins_a_checkpoint_in_one_write() -> None:
    stage = recording()
    now = 100.0
    stage.partitions = {1: waiting(now - OUTPUT_DELAY_S),  # due
                        2: waiting(now - OUTPUT_DELAY_S / 2),  # not yet due: joins
                        3: waiting(now - OUTPUT_DELAY_S, catching_up=True),  # late anyway
                        4: Partition(state=[], offsets={}, last_checkpoint=0.0)}  # nothing

    async def run() -> list[int]:
        stage._committer = asyncio.get_running_loop().create_future()  # jobs stay queued
        await stage._checkpoint(now)
        writing, snapshots = stage._jobs.get_nowait()
        return [number for number, _, _ in snapshots]

    assert asyncio.run(run()) == [1, 2]
    assert stage.writes == [[1, 2]]
    assert not stage.partitions[2].output_waiting and stage.partitions[3].output_waiting


def test_a_partition_that_fell_due_during_a_write_is_cut_when_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stage = recording()
    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    stage.partitions = {1: waiting(clock[0] - OUTPUT_DELAY_S)}

    async def run() -> None:
        stage._committer = asyncio.get_running_loop().create_future()  # jobs stay queued
        await stage._checkpoint(clock[0])
        stage._jobs.get_nowait()
        clock[0] += OUTPUT_DELAY_S
        stage.partitions[2] = waiting(0.0, catching_up=True)  # due, but a write runs
        await stage.on_timer()
        assert stage.writes == [[1]]
        stage.release.set()
        for _ in range(5):  # the write ends; the cut it triggers runs
            await asyncio.sleep(0)

    asyncio.run(run())
    assert stage.writes == [[1], [2]]


def test_a_stage_whose_output_leaves_at_the_cut_cuts_while_a_write_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stage = recording()
    stage.output_at_cut = True
    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: clock[0])
    stage.partitions = {1: waiting(clock[0] - OUTPUT_DELAY_S)}

    async def run() -> list[list[int]]:
        stage._committer = asyncio.get_running_loop().create_future()  # jobs stay queued
        await stage._checkpoint(clock[0])
        clock[0] += OUTPUT_DELAY_S
        stage.partitions[2] = waiting(0.0)
        await stage.on_timer()  # the first write has not ended
        return [[n for n, _, _ in stage._jobs.get_nowait()[1]] for _ in range(2)]

    assert asyncio.run(run()) == [[1], [2]]  # queued for the committer in cut order
    assert stage.writes == [[1], [2]]


class Threaded(Recording):
    """Works and snapshots in a thread of its own; the snapshot waits for `go`."""

    own_thread = True

    def __init__(self, vigil: Any) -> None:
        super().__init__(vigil)
        self.threads: set[str] = set()
        self.go = threading.Event()
        self.go.set()

    def snapshot(self, state: list[bytes]) -> bytes:
        self.threads.add(threading.current_thread().name)
        assert self.go.wait(10)
        return b"".join(state)

    async def process(self, partition: int, state: list[bytes], event: Any) -> bool:
        return await self.off_loop(self._take, state, event.value)

    def _take(self, state: list[bytes], value: bytes) -> bool:
        self.threads.add(threading.current_thread().name)
        state.append(value)
        return False


def threaded() -> Threaded:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings(), outbox=stand, database=stand,
                            recovering=lambda: False, stages={}, busy=lambda: False)
    return Threaded(vigil)  # type: ignore[arg-type]


def test_a_stage_with_a_thread_of_its_own_works_and_snapshots_there_in_order() -> None:
    stage = threaded()
    stage.release.set()

    async def run() -> list[tuple[int, bytes, list[Any]]]:
        for offset in range(3):
            await stage.on_event(event(offset, b"%d" % offset))
        stage._committer = asyncio.get_running_loop().create_future()  # jobs stay queued
        await stage._checkpoint(time.monotonic() + CHECKPOINT_EVERY_S)
        return stage._jobs.get_nowait()[1]

    [(number, blob, acked)] = asyncio.run(run())
    assert number == 1 and blob.endswith(b"012") and len(acked) == 3
    assert stage.threads == {"fragile_0"}  # never the event loop's thread


def test_a_partition_revoked_while_its_snapshot_is_taken_is_not_published() -> None:
    stage = threaded()
    stage.release.set()
    stage.partitions = {1: waiting(0.0), 2: waiting(0.0)}
    stage.go.clear()

    async def run() -> list[int]:
        stage._committer = asyncio.get_running_loop().create_future()  # jobs stay queued
        cutting = asyncio.ensure_future(stage._checkpoint(CHECKPOINT_EVERY_S))
        while not stage.threads:  # the first snapshot is being taken
            await asyncio.sleep(0.001)
        stage.forget({1})  # a rebalance hands partition 1 over meanwhile
        stage.go.set()
        await cutting
        return [number for number, _, _ in stage._jobs.get_nowait()[1]]

    assert asyncio.run(run()) == [2]


class Versioned(Recording):
    """State in format 2 is its records joined by commas; format 1 joined them by
    semicolons."""

    state_format = 2
    upgrades = {1: lambda blob: blob.replace(b";", b",")}

    def restore(self, blob: bytes) -> list[bytes]:
        return blob.split(b",") if blob else []

    def snapshot(self, state: list[bytes]) -> bytes:
        return b",".join(state)


def versioned() -> tuple[Versioned, Stand]:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings(), outbox=stand, database=stand,
                            recovering=lambda: False, stages={}, busy=lambda: False)
    return Versioned(vigil), stand  # type: ignore[arg-type]


def saved(state_format: int | None, snapshot: bytes, offsets: bytes = b'{"t.metrics": 1}'
          ) -> bytes:
    """A checkpoint as the changelog holds it; None: as written before formats were
    numbered."""
    if state_format is None:
        return struct.pack("<I", len(offsets)) + offsets + snapshot
    return b"VGCK" + struct.pack("<HI", state_format, len(offsets)) + offsets + snapshot


def test_a_checkpoint_says_the_format_of_its_state() -> None:
    stage, _ = versioned()
    stage.release.set()

    async def run() -> bytes:
        for offset in range(2):
            await stage.on_event(event(offset, b"%d" % offset))
        stage._committer = asyncio.get_running_loop().create_future()  # jobs stay queued
        await stage._checkpoint(time.monotonic() + CHECKPOINT_EVERY_S)
        return stage._jobs.get_nowait()[1][0][1]

    assert asyncio.run(run()) == saved(2, b"0,1")
    restored, _ = versioned()
    restored.table[b"p1"] = saved(2, b"0,1")
    assert restored.partition(1).state == [b"0", b"1"]


@pytest.mark.parametrize("state_format", [None, 1])
def test_a_checkpoint_of_an_earlier_format_is_upgraded_as_it_is_restored(
        state_format: int | None) -> None:
    stage, _ = versioned()
    stage.table[b"p1"] = saved(state_format, b"0;1")
    feed(stage, 0, 1, 2)  # 0 and 1 are in the checkpoint
    assert stage.partitions[1].state == [b"0", b"1", b"2"]


@pytest.mark.parametrize("state_format", [3, 0])
def test_a_checkpoint_in_a_format_this_build_cannot_read_stops_the_worker(
        state_format: int) -> None:
    stage, stand = versioned()
    stage.table[b"p1"] = saved(state_format, b"0,1")
    with pytest.raises(StateFormatError) as refused:
        feed(stage, 2)
    assert stand.crashed == [refused.value] and 1 not in stage.partitions
    assert (f"the fragile stage's checkpoint of partition 1 holds state in format "
            f"{state_format}; this build reads format(s) 1, 2.") in str(refused.value)
