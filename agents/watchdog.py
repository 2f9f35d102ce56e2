"""A worker that has input and does not move says so, with what it is waiting on, and
after `stall_exit_s` exits so that its supervisor (pipeline/supervisor.py) starts it afresh.

A stall (a rebalance that never ends, a consumer that delivers nothing, a write that never
returns) is otherwise silent: readiness stays green while lag grows. Starting afresh is
safe at any point — results are checkpointed exactly as after a kill -9 — and the warning
says what was stuck (read positions against the partitions' ends, Faust's flow state, where
each task waits) so that the cause can be found. Outages of the database or the broker and
table recovery are waits with their own signals (readiness, logs), not stalls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from typing import Any

from pipeline.app import Vigil
from pipeline.supervisor import STALLED_EXIT_CODE

log = logging.getLogger(__name__)

STALL_AFTER_S = 30.0
LOOK_EVERY_S = 5.0


def register(vigil: Vigil) -> None:
    marks: dict[str, Any] = {}
    since: dict[str, float] = {}  # when each stage last moved or had nothing to do
    warned: dict[str, float] = {}
    exit_after = vigil.settings.stall_exit_s

    @vigil.app.timer(LOOK_EVERY_S)
    async def watch() -> None:
        now = time.monotonic()
        excused = not vigil.database.healthy or vigil.recovering()
        for name, stage in vigil.stages.items():
            mark = stage.progress()
            if excused or marks.get(name) != mark or not stage.behind():
                marks[name], since[name] = mark, now
                continue
            stuck = now - since[name]
            if stuck >= STALL_AFTER_S and now - warned.get(name, -STALL_AFTER_S) >= STALL_AFTER_S:
                warned[name] = now
                log.warning("%s stage has input and has not moved for %.0f s: %s; %s; "
                            "tasks waiting:\n%s", name, stuck, stage.describe(), flow(vigil),
                            waiting())
            if exit_after and stuck >= exit_after:
                if not await vigil.outbox.reachable():
                    since[name] = now  # a broker outage is a wait too, not a stall
                    continue
                log.error("%s stage stuck for %.0f s; exiting so that the worker starts "
                          "afresh", name, stuck)
                logging.shutdown()
                os._exit(STALLED_EXIT_CODE)


def flow(vigil: Vigil) -> str:
    """Faust's side: recovery, flow control, paused partitions."""
    app, consumer = vigil.app, vigil.app.consumer
    paused = sorted(f"{tp.topic}[{tp.partition}]"
                    for tp in getattr(consumer, "_paused_partitions", ()))
    return (f"in recovery {vigil.recovering()}; "
            f"flow active {app.flow_control.is_active()}; "
            f"consumer flow {getattr(consumer, 'flow_active', None)}; paused {paused}; "
            f"fetcher {fetcher_state(consumer)}")


def fetcher_state(consumer: Any) -> str:
    """aiokafka's side, read from the consumer's thread without locking (a diagnosis, so
    best effort): nodes with a request in flight, partitions with records not yet taken,
    partitions that cannot be fetched (no position, awaiting an offset reset, paused), and
    where the others are read from."""
    try:
        client = consumer._thread._ensure_consumer()
        fetcher, assignment = client._fetcher, client._subscription.subscription.assignment
        unfetchable = {f"{tp.topic}[{tp.partition}]": str(state._status.name)
                       + (" paused" if state.paused else "")
                       for tp in assignment.tps
                       if not (state := assignment.state_value(tp)).has_valid_position
                       or state.paused}
        read_offsets = getattr(consumer, "_read_offset", {})
        positions = {f"{tp.topic}[{tp.partition}]": (state.position, state.highwater,
                                                      read_offsets.get(tp))
                     for tp in assignment.tps
                     if (state := assignment.state_value(tp)).has_valid_position
                     and not state.paused}
        return (f"in flight to nodes {sorted(fetcher._in_flight)}, "
                f"{len(fetcher._pending_tasks)} tasks, records waiting for "
                f"{sorted(f'{tp.topic}[{tp.partition}]' for tp in fetcher._records)}, "
                f"not fetchable {unfetchable}, position/highwater/Faust's read offset "
                f"{positions}")
    except Exception as exc:  # internals of another library: never let them stop the watch
        return f"unknown ({type(exc).__name__}: {exc})"


def waiting() -> str:
    """Where each task of the worker waits: its chain of awaits, innermost last."""
    chains: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        links: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                links.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        chains[" > ".join(links)] += 1
    return "\n".join(f"  {count} × {chain}" for chain, count in sorted(chains.items()))
