"""The unit of commit for every stateful stage.

Each stage keeps state per input partition. Every so often — and at once when it has
output that someone is waiting for — a stage *checkpoints* a partition: it makes that
partition's pending outputs durable (database rows, then outbound records flushed to the
broker), then writes a snapshot of the state, tagged with the last input offset of each
topic it includes, to a changelog-backed Faust table, and only then acknowledges the input.
After a crash or a rebalance the new owner restores the snapshot and skips input it
already holds; everything after it is replayed, deterministically, into idempotent sinks.
At-least-once delivery plus this order gives exactly-once results.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from faust.types import TP

from agents.ingest import DeadLetterBox, origin_of
from pipeline.app import Vigil
from pipeline.ingest import dead_letter
from pipeline.selfmetrics import CHECKPOINTED_MESSAGES

S = TypeVar("S")
T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_CHECKPOINTS_IN_FLIGHT = 4
CHECKPOINT_EVERY_S = 1.0
CHECKPOINT_EVERY_MESSAGES = 5000
AHEAD_OF_WRITE_MESSAGES = 500
OUTPUT_DELAY_S = 0.05
"""Output someone waits for (closed windows, alerts) is checkpointed this soon: often
enough for the latency targets, rarely enough that one database round trip and one
broker flush carry many messages' worth of results."""
SNAPSHOT_SHARE = 0.1
MAX_OUTPUT_DELAY_S = 0.15
"""A large state costs milliseconds to snapshot: output then waits longer, so that
snapshots take at most SNAPSHOT_SHARE of the time, but never longer than this."""
BACKLOG_RECORDS = 100
"""A partition at least this many records behind its end is catching up: its output is
late by the backlog anyway, so it is checkpointed every CHECKPOINT_EVERY_S (or _MESSAGES)
and one database write and one snapshot carry a second's results, not 50 ms's."""
_MAGIC = b"VGCK"
_HEADER = struct.Struct("<4sHI")  # _MAGIC, the state's format, the offsets' JSON length
_UNNUMBERED = struct.Struct("<I")
"""Checkpoints written before formats were numbered: the offsets' JSON length, then a
snapshot in format 1."""
TAIL_REREAD_S = 10.0
"""How long a stage waits for records its partition holds before reading them again: Faust
also drops records it has fetched when flow stops or the generation changes mid-batch, and
when nothing follows them no hole ever shows (the partition stalled until a restart).
Records merely queued behind others come well within it; reading those twice would only
cost time, since a stage skips what it holds."""
SHARE_LOOP_AFTER_S = 0.005
"""A stage working through a backlog lets the others run at least this often."""
REREAD_RETRY_S = 1.0
"""How often a stage re-reading missed records sends the consumer back to them until they
arrive: Faust discards fetched records below the offset it last delivered, so a seek that
records already on their way overtake is lost."""


@dataclass
class Reread:
    """Records a stage missed on one input partition, being read again."""

    first: int  # the first missing offset, where the consumer is sent
    seen_at: int  # the record that showed the hole; later ones were on their way already
    sought: float  # when the consumer was last sent back


@dataclass
class Partition(Generic[S]):
    state: S
    offsets: dict[str, int]  # per input topic: last offset the state includes
    pending: list[Any] = field(default_factory=list)  # events to ack at the next checkpoint
    output_waiting: bool = False
    catching_up: bool = False
    last_checkpoint: float = field(default_factory=time.monotonic)
    output_delay: float = OUTPUT_DELAY_S
    min_interval: float = 0.0  # the stage's floor between checkpoints (large snapshots)

    def due(self, now: float) -> bool:
        since = now - self.last_checkpoint
        if since < self.min_interval:
            return False
        delay = CHECKPOINT_EVERY_S if self.catching_up else self.output_delay
        return ((self.output_waiting and since >= delay)
                or len(self.pending) >= CHECKPOINT_EVERY_MESSAGES
                or (bool(self.pending) and since >= CHECKPOINT_EVERY_S))

    def joins(self, now: float) -> bool:
        """Whether to be cut with a checkpoint another partition is due for: live output
        someone waits for goes out now, in the same write, instead of in a write of its own
        behind it (windows of every partition close within milliseconds of each other)."""
        return (self.output_waiting and not self.catching_up
                and now - self.last_checkpoint >= self.min_interval)


class StateFormatError(Exception):
    """A changelog holds a snapshot this build cannot read. Misread, it would corrupt
    results, and left behind, the state it holds would be lost: the worker stops instead."""


class CheckpointedStage(ABC, Generic[S]):
    """Subclasses say how to make, restore, snapshot and feed their state."""

    name: str  # table name and metrics label
    state_format: int = 1
    """The layout `snapshot` writes, saved with every checkpoint. Change the layout, and
    this goes up by one with a step from the previous format in `upgrades`: a changelog
    written by the previous build is then upgraded as it is restored, instead of misread
    (tests/unit/test_state_formats.py holds a snapshot of every format and fails until the
    new one is there)."""
    upgrades: ClassVar[Mapping[int, Callable[[bytes], bytes]]] = {}
    """Format n → a snapshot in format n + 1, for each earlier format this build restores."""
    min_checkpoint_interval_s: float = 0.0
    """Stages whose snapshots are large raise this so they are written less often."""
    output_at_cut: bool = False
    """True for a stage whose `flush_all` produces its records before its first `await`:
    its output then leaves in checkpoint order as it is cut, and a checkpoint need not wait
    for the previous one's database write (the database takes writes in turn, and the
    committer makes checkpoints durable in order)."""
    own_thread: bool = False
    """Stages whose work comes in pieces of tens of milliseconds or more (detection judges
    hundreds of series at once and snapshots megabytes of models) do it in a thread of
    their own (`off_loop`): on the event loop it would hold up every other stage's output
    that long (window close → record on vigil.aggregates has a latency target)."""

    def __init__(self, vigil: Vigil) -> None:
        self.vigil = vigil
        self.settings = vigil.settings
        self.table = vigil.app.Table(f"{self.name}-state", default=None,
                                     partitions=vigil.settings.partitions,
                                     key_type=bytes, value_type=bytes)
        self.partitions: dict[int, Partition[S]] = {}
        self.lock = asyncio.Lock()
        self.stream: Any = None
        # Checkpoints whose writes are in flight, oldest first: the write, and per partition
        # cut the state's snapshot and the events it acks. Bounded: when the database or the
        # broker is slow or away, input stops here instead of piling up in memory.
        self._jobs: asyncio.Queue[tuple[asyncio.Future[None], list[tuple[int, bytes, list[Any]]]]] \
            = asyncio.Queue(maxsize=MAX_CHECKPOINTS_IN_FLIGHT)
        self._committer: asyncio.Future[None] | None = None
        self._last_write: asyncio.Future[None] | None = None
        self._cutting: asyncio.Future[None] | None = None  # see `_written`
        self._ran_since = 0.0  # see `_share_loop`
        self._in_flight = 0  # checkpoints cut and not yet committed
        self.input_topics: set[str] = set()
        self._rereading: dict[TP, Reread] = {}  # input partitions with records missed
        self._waiting_since: dict[TP, float] = {}  # behind, since the last record came
        self._tails_checked = 0.0
        self.dead_letters = DeadLetterBox(vigil.outbox, vigil.database)  # written by `flush`
        self._thread = (ThreadPoolExecutor(1, thread_name_prefix=self.name)
                        if self.own_thread else None)

    # -- what a stage defines ------------------------------------------------------------

    @abstractmethod
    def new_state(self, partition: int) -> S: ...

    @abstractmethod
    def restore(self, blob: bytes) -> S: ...

    @abstractmethod
    def snapshot(self, state: S) -> bytes: ...

    @abstractmethod
    async def process(self, partition: int, state: S, event: Any) -> bool:
        """Apply one input event; return True when output is waiting to be checkpointed."""

    async def flush(self, partition: int, state: S) -> None:
        """Make the partition's pending output durable. Take the output from `state`
        before the first `await` (the snapshot is taken right after that point, and later
        input may add new output meanwhile). Records added to `vigil.outbox` are flushed
        by the caller right after."""

    async def flush_all(self, cut: list[tuple[int, S]]) -> None:
        """Make the output of the partitions cut together durable: `flush` after `flush`.
        A stage that can write them as one (one transaction, one COPY) overrides this and
        takes every partition's output before its first `await`. Output a later `flush`
        takes after more input is written before that input is acknowledged, which is safe:
        a replay writes the same rows and records again."""
        for number, state in cut:
            await self.flush(number, state)

    async def tick(self, partition: int, state: S) -> bool:
        """Timer hook for time-driven work (e.g. alert expiry); True if output is waiting."""
        return False

    async def off_loop(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)`, in the stage's own thread if it has one: the loop then runs at
        every GIL switch meanwhile. Call it with the stage's lock held (`process`, `tick`),
        so that nothing on the loop touches the state at the same time and the work stays
        in input order."""
        if self._thread is None:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, *args)

    # -- the mechanism -----------------------------------------------------------------

    def partition(self, number: int) -> Partition[S]:
        """In memory, else restored from the changelog table, else new."""
        found = self.partitions.get(number)
        if found is None:
            saved = self.table.get(_key(number))
            if saved is None:
                found = Partition(self.new_state(number), {},
                                  min_interval=self.min_checkpoint_interval_s)
            else:
                offsets, state_format, start = _unpack(saved)
                found = Partition(self.restore(self._upgrade(number, state_format,
                                                             saved[start:])),
                                  offsets, min_interval=self.min_checkpoint_interval_s)
            self.partitions[number] = found
        return found

    def _upgrade(self, number: int, state_format: int, blob: bytes) -> bytes:
        """A saved snapshot in this build's format."""
        while state_format < self.state_format and state_format in self.upgrades:
            blob = self.upgrades[state_format](blob)
            state_format += 1
        if state_format != self.state_format:
            readable = [*sorted(self.upgrades), self.state_format]
            raise StateFormatError(
                f"the {self.name} stage's checkpoint of partition {number} holds state in "
                f"format {state_format}; this build reads format(s) "
                f"{', '.join(map(str, readable))}. Its changelog was written by another "
                f"build: run one that reads format {state_format} (the build that wrote it, "
                f"or a later one that upgrades it)")
        return blob

    def _offsets(self, number: int) -> dict[str, int]:
        """The offsets a partition's state includes, without restoring it."""
        found = self.partitions.get(number)
        if found is not None:
            return found.offsets
        saved = self.table.get(_key(number))
        return {} if saved is None else _unpack(saved)[0]

    async def on_event(self, event: Any) -> None:
        async with self.lock:
            message = event.message
            now = time.monotonic()
            tp = TP(message.topic, message.partition)
            self._waiting_since.pop(tp, None)
            try:
                part = self.partition(message.partition)
            except StateFormatError as exc:
                log.critical("%s", exc)
                await self.vigil.app.crash(exc)
                raise
            if not await self._in_sequence(message, part.offsets.get(message.topic)):
                return  # not acknowledged: it comes again after the records before it
            part.pending.append(event)
            if message.offset <= part.offsets.get(message.topic, -1):
                return  # already inside the restored snapshot
            if await self._process(message.partition, part.state, event):
                part.output_waiting = True
            part.offsets[message.topic] = message.offset
            high = self.vigil.app.consumer.highwater(tp)
            part.catching_up = high is not None and high - message.offset > BACKLOG_RECORDS
            if part.due(now) and self._may_cut(part):
                await self._checkpoint(now)

    async def _share_loop(self) -> None:
        """Faust hands a stage its queued events without suspending, so a stage with a
        backlog (detection, as windows close) would hold the event loop until it is
        through, and the other stages' writes would wait with their latency: after
        SHARE_LOOP_AFTER_S of work, let them run."""
        if time.perf_counter() - self._ran_since >= SHARE_LOOP_AFTER_S:
            await asyncio.sleep(0)
            self._ran_since = time.perf_counter()

    async def _in_sequence(self, message: Any, last: int | None) -> bool:
        """Whether to take this record now. Faust drops the events still queued for a
        stream when it resumes flow after a rebalance; when the consumer's position is past
        them they do not come again, the stage would go on without them and the partition's
        commits stop there (seen after restarts). A stage that sees a record beyond the next
        one it expects sends the consumer back to the missing ones (again every
        REREAD_RETRY_S until they come); replayed records it holds are skipped as after any
        restart."""
        tp = TP(message.topic, message.partition)
        if self._rereading:
            reread = self._rereading.get(tp)
            if reread is not None:
                if message.offset > reread.seen_at:
                    return False  # read before the seek; it comes again in order
                del self._rereading[tp]  # the seek took effect: what is absent does not exist
                return True
        first = last + 1 if last is not None else await self._start_of(tp)
        if first is None or message.offset <= first:
            return True
        log.warning("%s stage missed %s[%d] offsets %d..%d; reading them again", self.name,
                    message.topic, message.partition, first, message.offset - 1)
        await self._reread(tp, first, message.offset)
        return False

    async def _start_of(self, tp: TP) -> int | None:
        """Where the input of a state that holds none of it starts: the first record the
        broker has, whatever the group committed. Faust drops records around a rebalance,
        and they can be a partition's very first ones, where no hole would show; and a
        committed offset without the checkpoint that acknowledged it (a changelog that lost
        it) would skip input silently. Reading all there is costs time only: sinks are
        idempotent and downstream stages drop repeats."""
        try:
            found = await self.vigil.app.consumer.earliest_offsets(tp)
        except Exception as exc:  # the broker is away: take the input as it comes
            log.warning("%s stage could not look up where %s[%d] starts (%s); taking it "
                        "from the first record received", self.name, tp.topic, tp.partition,
                        exc)
            return None
        return int(found.get(tp, 0))

    async def _reread(self, tp: TP, first: int, seen_at: int) -> None:
        self._rereading[tp] = Reread(first, seen_at, time.monotonic())
        await self.vigil.app.consumer.seek(tp, self._seek_target(tp))

    def _seek_target(self, tp: TP) -> int:
        """Stages that read one topic (detection and SLOs read `internal.windows`) share
        the consumer's position: a seek goes back as far as any of them needs, so that no
        stage's seek carries the position past records another is reading again (which it
        would then take as absent)."""
        return min(reread.first for stage in (self, *self.vigil.stages.values())
                   if (reread := getattr(stage, "_rereading", {}).get(tp)) is not None)

    async def _reread_tails(self, now: float) -> None:
        """Send the consumer back to the tail of a partition where records are missing
        (`_tail_start`), when nothing has come for TAIL_REREAD_S and nothing can be on its
        way."""
        consumer = self.vigil.app.consumer
        committed_offsets = getattr(consumer, "_committed_offset", {})  # Faust's own record
        idle = functools.cache(lambda: not self.vigil.busy())
        in_transit = functools.cache(self._in_transit)
        for tp in consumer.assignment():
            if tp.topic not in self.input_topics or tp in self._rereading:
                continue
            high = consumer.highwater(tp)
            start = None if high is None else _tail_start(
                self._offsets(tp.partition).get(tp.topic, -1) + 1, high,
                committed_offsets.get(tp), idle)
            if start is None or high is None:
                self._waiting_since.pop(tp, None)
                continue
            if now - self._waiting_since.setdefault(tp, now) < TAIL_REREAD_S or in_transit():
                continue
            log.warning("%s stage received nothing of %s[%d] for %.0f s although offsets "
                        "%d..%d are there; reading them again", self.name, tp.topic,
                        tp.partition, now - self._waiting_since.pop(tp), start, high - 1)
            await self._reread(tp, start, high - 1)

    def _in_transit(self) -> bool:
        """Whether records may still be on their way to this stage: some are queued for it,
        Faust's flow is stopped (a rebalance), or a stage's queue is full, so that Faust's
        delivery, one loop for every stage, waits with the rest of its batch."""
        queues = [stage.stream.channel.queue for stage in self.vigil.stages.values()
                  if getattr(stage, "stream", None) is not None]
        own = self.stream.channel.queue if self.stream is not None else None
        return ((own is not None and own.qsize() > 0)
                or not self.vigil.app.flow_control.is_active()
                or any(queue.full() for queue in queues))

    async def _seek_again(self, now: float) -> None:
        for tp, reread in self._rereading.items():
            if now - reread.sought >= REREAD_RETRY_S:
                reread.sought = now
                await self.vigil.app.consumer.seek(tp, self._seek_target(tp))

    async def _process(self, partition: int, state: S, event: Any) -> bool:
        """`process`, except that input it fails on (a bug, since bad input is refused with
        a reason) is dead-lettered and skipped: one record must not stop its partition.
        Replays fail the same way, so results stay deterministic."""
        try:
            return await self.process(partition, state, event)
        except Exception as exc:
            message = event.message
            log.exception("%s stage failed on %s[%d]@%d; dead-lettered", self.name,
                          message.topic, message.partition, message.offset)
            self.dead_letters.add([dead_letter(origin_of(event, self.settings.partitions),
                                               event.value or b"", "processing_failed",
                                               f"{self.name}: {type(exc).__name__}: {exc}")])
            return True

    async def on_timer(self) -> None:
        """Run `tick` for every partition and checkpoint those that went quiet."""
        async with self.lock:
            now = time.monotonic()
            await self._seek_again(now)
            if now - self._tails_checked >= REREAD_RETRY_S and not self.vigil.recovering():
                self._tails_checked = now
                await self._reread_tails(now)
            for number, part in list(self.partitions.items()):
                if await self.tick(number, part.state):
                    part.output_waiting = True
            await self._cut_due(now)

    async def _cut_due(self, now: float) -> None:
        if any(p.due(now) and self._may_cut(p) for p in self.partitions.values()):
            await self._checkpoint(now)

    def _written(self, writing: asyncio.Future[None]) -> None:
        """Partitions that fell due while a write ran are cut as it ends, not at the next
        tick: live output would otherwise wait up to a timer interval more."""
        if writing.cancelled() or writing.exception() is not None:
            return  # the committer stops the worker

        async def cut() -> None:
            async with self.lock:
                await self._cut_due(time.monotonic())

        self._cutting = asyncio.ensure_future(cut())

    def _may_cut(self, part: Partition[S]) -> bool:
        """Output leaves in checkpoint order (downstream stages rely on it), so the next
        flush starts when the previous one has written. Input keeps flowing meanwhile, so
        that processing overlaps the database write, until a partition holds
        AHEAD_OF_WRITE_MESSAGES unacknowledged records; then it waits (a database outage
        holds input there). A stage whose output leaves at the cut (`output_at_cut`) cuts
        whenever due; MAX_CHECKPOINTS_IN_FLIGHT then holds its input in an outage."""
        return (self.output_at_cut or self._last_write is None or self._last_write.done()
                or len(part.pending) >= AHEAD_OF_WRITE_MESSAGES)

    async def _checkpoint(self, now: float) -> None:
        """Cut every partition that is due, and those whose live output can join them; the
        writes then run in the background while input keeps flowing.

        `flush_all` starts first and takes the pending output before its first await, so
        the snapshots taken next hold none of it; the committer makes that output durable,
        then publishes the snapshots, then acks — in checkpoint order.
        """
        if (not self.output_at_cut and self._last_write is not None
                and not self._last_write.done()):
            await asyncio.wait([self._last_write])  # see `_may_cut`
        cut = [(number, part) for number, part in self.partitions.items()
               if part.due(now) or part.joins(now)]
        writing = self._last_write = asyncio.ensure_future(
            self.flush_all([(number, part.state) for number, part in cut]))
        writing.add_done_callback(self._written)
        await asyncio.sleep(0)  # let `flush_all` take the output now, before the snapshots
        snapshots = []
        for number, part in cut:
            offsets = json.dumps(part.offsets).encode()
            started = time.monotonic()
            blob = (_HEADER.pack(_MAGIC, self.state_format, len(offsets)) + offsets
                    + await self.off_loop(self.snapshot, part.state))
            if self.partitions.get(number) is not part:
                continue  # revoked meanwhile: its next owner restores the last checkpoint
            snapshots.append((number, blob, part.pending))
            part.pending = []
            part.output_waiting = False
            part.last_checkpoint = done = time.monotonic()
            part.output_delay = min(max(OUTPUT_DELAY_S, (done - started) / SNAPSHOT_SHARE),
                                    MAX_OUTPUT_DELAY_S)
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_in_order())
        self._in_flight += 1
        await self._jobs.put((writing, snapshots))

    async def _commit_in_order(self) -> None:
        while True:
            writing, snapshots = await self._jobs.get()
            try:
                await writing
                await self.vigil.outbox.flush()
                for number, blob, events in snapshots:
                    self.table.data[_key(number)] = blob
                    self.table.send_changelog(number, _key(number), blob)
                    for event in events:
                        await self.stream.ack(event)
                    CHECKPOINTED_MESSAGES.labels(self.name).inc(len(events))
            except Exception as exc:  # results would be lost: stop the worker, loudly
                await self.vigil.app.crash(exc)
                raise
            finally:
                self._in_flight -= 1
                self._jobs.task_done()

    def busy(self) -> bool:
        """Whether this stage may still send something downstream without new input:
        output not yet written, or input it has not read."""
        return (self._in_flight > 0 or any(p.output_waiting for p in self.partitions.values())
                or self.behind())

    def behind(self) -> bool:
        """Whether an assigned input partition has records this stage has not processed
        (or the consumer does not know yet how many it has)."""
        consumer = self.vigil.app.consumer
        for tp in consumer.assignment():
            if tp.topic in self.input_topics:
                done = self._offsets(tp.partition).get(tp.topic, -1) + 1
                high = consumer.highwater(tp)
                if high is None or done < high:
                    return True
        return False

    def progress(self) -> tuple[int, int]:
        """Changes whenever the stage reads a record or finishes a checkpoint."""
        return (sum(sum(p.offsets.values()) for p in self.partitions.values()),
                self._in_flight + self._jobs.qsize())

    def describe(self) -> str:
        """What a stalled stage is waiting on, for the watchdog's warning."""
        consumer = self.vigil.app.consumer
        behind = {f"{tp.topic}[{tp.partition}]": (self._offsets(tp.partition).get(tp.topic),
                                                  consumer.highwater(tp))
                  for tp in consumer.assignment() if tp.topic in self.input_topics}
        return (f"read/highwater {behind}; lock held {self.lock.locked()}; "
                f"checkpoints in flight {self._in_flight}; "
                f"re-reading {sorted(map(str, self._rereading))}")

    def forget(self, revoked: set[int]) -> None:
        """Revoked partitions: their next owner restores them from the changelog."""
        for number in revoked:
            self.partitions.pop(number, None)
        self._rereading = {tp: reread for tp, reread in self._rereading.items()
                           if tp.partition not in revoked}
        self._waiting_since = {tp: since for tp, since in self._waiting_since.items()
                               if tp.partition not in revoked}

    def register(self, channel: Any, topics: set[str], timer_s: float = OUTPUT_DELAY_S) -> None:
        """Wire the stage: an agent with manual acks, a timer, rebalance handling."""
        app = self.vigil.app
        self.input_topics = topics

        async def agent(stream: Any) -> None:
            self.stream = stream.noack()
            async for event in self.stream.events():
                await self.on_event(event)
                await self._share_loop()

        app.agent(channel, name=self.name)(agent)

        async def timer() -> None:
            if self.stream is not None:
                await self.on_timer()

        app.timer(timer_s, name=f"{self.name}-timer")(timer)

        async def on_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
            await self._jobs.join()  # finish what was cut before handing partitions over
            self.forget({tp.partition for tp in revoked if tp.topic in topics})

        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]


def _tail_start(first: int, high: int, committed: int | None,
                idle: Callable[[], bool]) -> int | None:
    """Where to read a partition's tail again from, if records are missing there: those
    beyond the last one received (`first` on), or those the restored state holds but that
    were never acknowledged (their replay was dropped, and the committed offset would stay
    behind until new input came) — looked at only when the worker is idle, since acks trail
    the work, and other stages reading the topic, while it is not."""
    if first < high:
        return first
    if 0 < first and (committed is None or committed < first) and idle():
        return first - 1 if committed is None else committed
    return None


def _key(partition: int) -> bytes:
    return f"p{partition}".encode()


def _unpack(saved: bytes) -> tuple[dict[str, int], int, int]:
    """A saved checkpoint's offsets, the format of its state, and where the state starts."""
    if saved.startswith(_MAGIC):
        _, state_format, size = _HEADER.unpack_from(saved)
        start = _HEADER.size
    else:  # its first four bytes would be a length of over a gigabyte
        (size,) = _UNNUMBERED.unpack_from(saved)
        state_format, start = 1, _UNNUMBERED.size
    end = start + size
    return json.loads(saved[start:end]), state_format, end
