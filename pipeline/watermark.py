"""Merge several ordered streams into one order that does not depend on their arrival.

The incident feed interleaves the alert stage's partitions as they happen to arrive, and
incident decisions depend on order (is the incident still open when its escalation falls
due? is it open when an alert of a linked service fires?). So records are *held*, each
stamped with its origin's clock when it came (the event time the origin last announced),
and released in (stamp, origin, number) order once every origin's clock has passed the
stamp: no origin can send anything that sorts earlier any more. That order is a function
of each origin's own sequence, the same in every run and after every replay.

An origin holds the others back from its first record on (the alert stage's partitions
start together; one that first speaks later is late only until then). An origin that
stops announcing time would hold everything back, so a record is also
released once the fastest origin is `max_skew_ms` past it, and `drain` releases all when
the caller knows nothing is on its way (the whole worker is idle).
"""

from __future__ import annotations

import heapq
from typing import Any

Held = tuple[int, str, int, Any]  # stamp, origin, number, item


class WatermarkMerge:
    """Held records of clocked origins (alert partitions) and unclocked ones (feedback)."""

    def __init__(self, max_skew_ms: int) -> None:
        self.max_skew_ms = max_skew_ms
        self._clocks: dict[str, int] = {}
        self._held: list[Held] = []

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, origin: str, number: int, item: Any) -> None:
        """A record of a clocked origin: after everything stamped before its clock."""
        heapq.heappush(self._held, (self._clocks.setdefault(origin, 0), origin, number, item))

    def clock(self, origin: str, number: int, ts_ms: int, item: Any) -> None:
        """The origin says it is at `ts_ms`; `item` (its tick) is held at that time."""
        now = max(self._clocks.get(origin, 0), ts_ms)
        self._clocks[origin] = now
        heapq.heappush(self._held, (now, origin, number, item))

    def hold_now(self, origin: str, number: int, item: Any) -> None:
        """A record without a clock of its own (human feedback): at the stream's present,
        so it applies after everything any origin has announced so far."""
        heapq.heappush(self._held, (self._present(), origin, number, item))

    def watermark(self) -> int:
        """Every clocked origin has passed this time (0 while none has spoken)."""
        return min(self._clocks.values(), default=0)

    def ready(self) -> list[Any]:
        """Items no later record can precede, in order."""
        limit = max(self.watermark(), self._present() - self.max_skew_ms + 1)
        out = []
        while self._held and self._held[0][0] < limit:
            out.append(heapq.heappop(self._held)[3])
        return out

    def drain(self) -> list[Any]:
        """Everything held, in order: nothing else is on its way."""
        out = [entry[3] for entry in sorted(self._held)]
        self._held.clear()
        return out

    def _present(self) -> int:
        return max(self._clocks.values(), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"clocks": dict(self._clocks), "held": [list(h) for h in sorted(self._held)]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], max_skew_ms: int) -> WatermarkMerge:
        merge = cls(max_skew_ms)
        merge._clocks = {str(o): int(t) for o, t in data["clocks"].items()}
        merge._held = [(int(s), str(o), int(n), item) for s, o, n, item in data["held"]]
        heapq.heapify(merge._held)
        return merge
