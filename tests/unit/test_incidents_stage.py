"""The incident stage's release of held feed records: an alert partition that has not
spoken holds the others back until the consumer group has committed everything upstream of
it and the feed has been read that far; everything is released only once nothing upstream
is left, on any partition."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from agents.checkpoint import Partition
from agents.incidents import IncidentsStage, IncidentsState, Upstream
from pipeline.envelope import wrap
from pipeline.settings import Settings

T0 = 1_790_812_800_000


class Stand:
    """The parts of the app and consumer the stage touches outside a flush."""

    consumer: Any = None

    def __init__(self) -> None:
        self.consumer = self
        self.assigned: set[Any] = set()

    def Table(self, *args: Any, **kwargs: Any) -> dict[bytes, bytes]:
        return {}

    def assignment(self) -> set[Any]:
        return self.assigned


def stage(busy: list[bool]) -> tuple[IncidentsStage, IncidentsState]:
    stand = Stand()
    vigil = SimpleNamespace(app=stand, settings=Settings.model_construct(partitions=2),
                            outbox=stand, database=stand, busy=lambda besides=None: busy[0],
                            stages={})
    incidents = IncidentsStage(vigil)  # type: ignore[arg-type]
    incidents._look_upstream = lambda now, urgent: None  # type: ignore[method-assign]  # set here
    state = incidents.new_state(0)
    incidents.partitions[0] = Partition(state, {})
    return incidents, state


def announce(incidents: IncidentsStage, state: IncidentsState, number: int, ts_ms: int) -> None:
    """alerts/0 says where its event time is; the stage has read the feed this far."""
    incidents._apply(state, f"alerts/0/{number}".encode(),
                     wrap("StreamTime", {"source": "alerts/0", "ts_ms": ts_ms}))
    incidents.partitions[0].offsets[incidents.feed_topic] = number - 1


def look(behind: set[int], feed_end: int = 2, fresh: bool = True) -> Upstream:
    """A look upstream: the group has committed all of vigil.metrics but on `behind`; a
    fresh look began after the worker became idle."""
    progress = {("vigil.metrics", p): (5 if p in behind else 9, 9) for p in range(2)}
    return Upstream(progress, feed_end, time.monotonic() + 60 if fresh else 0.0)


def tick(incidents: IncidentsStage, state: IncidentsState, upstream: Upstream | None) -> int:
    incidents.upstream = upstream
    asyncio.run(incidents.tick(0, state))
    return state.stream_ms


def test_a_partition_that_has_not_spoken_holds_the_others_while_input_is_upstream() -> None:
    busy = [True]
    incidents, state = stage(busy)
    announce(incidents, state, 1, T0)
    announce(incidents, state, 2, T0 + 10_000)
    assert state.stream_ms == 0 and len(state.merge) == 2  # alerts/1 may speak from T0 on
    assert tick(incidents, state, None) == 0  # no look yet, or the broker is away
    assert tick(incidents, state, look({1})) == 0
    assert tick(incidents, state, look(set(), feed_end=3)) == 0  # the feed not read so far
    assert tick(incidents, state, look(set())) == T0  # alerts/1 can send nothing now
    assert tick(incidents, state, look({0})) == T0
    busy[0] = False  # this worker idle:
    assert tick(incidents, state, look({0})) == T0  # another worker has input left
    assert tick(incidents, state, look(set(), fresh=False)) == T0  # a look from before
    assert tick(incidents, state, look(set())) == T0 + 10_000  # nothing more can come
    assert len(state.merge) == 0


def test_a_single_worker_idle_with_a_fresh_look_releases_before_its_commits_land() -> None:
    incidents, state = stage([False])
    announce(incidents, state, 1, T0)
    announce(incidents, state, 2, T0 + 10_000)
    assert tick(incidents, state, look({0, 1})) == 0  # commits trail: 0 and 1 look behind
    metrics = SimpleNamespace(input_topics={"vigil.metrics"}, busy=lambda: False,
                              _offsets=lambda p: {"vigil.metrics": 8})  # done, as far as 9
    incidents.vigil.stages = {"metrics": metrics}
    incidents.vigil.app.assigned = {TP("vigil.metrics", 0)}
    assert tick(incidents, state, look({0, 1})) == 0  # partition 1: another worker's
    incidents.vigil.app.assigned.add(TP("vigil.metrics", 1))
    assert tick(incidents, state, look({0, 1})) == T0 + 10_000  # all processed here
