"""Merge several ordered streams into one order that does not depend on their arrival.

The incident feed interleaves the alert stage's partitions as they happen to arrive, and
incident decisions depend on order (is the incident still open when its escalation falls
due? is it open when an alert of a linked service fires?). So records are *held*, each
stamped with its own event time, or with its origin's clock (the event time the origin
last announced) where that is later, and released in (stamp, origin, number) order once
every origin's clock has passed the stamp: no origin can send anything that sorts earlier
any more. That order is a function of the records themselves, the same in every run and
after every replay.

The origins that may speak are known up front (`expected`: every alert partition). One
that has not spoken yet holds the others back from the start, until the caller says it is
`quiet`: everything upstream of it has been processed, so whatever it made is already here
(a partition without services never speaks, and must not hold the rest). An origin that
stops announcing time would hold everything back, so a record is also released once the
fastest origin is `max_skew_ms` past it, and `drain` releases all when the caller knows
nothing is on its way (every input upstream processed).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

Held = tuple[int, str, int, Any]  # stamp, origin, number, item


class WatermarkMerge:
    """Held records of clocked origins (alert partitions) and unclocked ones (feedback)."""

    def __init__(self, max_skew_ms: int, expected: Iterable[str] = ()) -> None:
        self.max_skew_ms = max_skew_ms
        self.expected = frozenset(expected)
        self._quiet: frozenset[str] = frozenset()  # not spoken, and nothing on its way
        self._clocks: dict[str, int] = {}
        self._held: list[Held] = []

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, origin: str, number: int, item: Any, at: int = 0) -> None:
        """A record of a clocked origin, of event time `at`: stamped with that time, or
        with its origin's clock if that is later (nothing the origin sends after its clock
        may sort before it). The clock alone would make the order depend on how far the
        origin had announced its time when the record was made, which varies from run to
        run with how its input was batched."""
        stamp = max(self._clocks.setdefault(origin, 0), at)
        heapq.heappush(self._held, (stamp, origin, number, item))

    def clock(self, origin: str, number: int, ts_ms: int, item: Any) -> None:
        """The origin says it is at `ts_ms`; `item` (its tick) is held at that time."""
        now = max(self._clocks.get(origin, 0), ts_ms)
        self._clocks[origin] = now
        heapq.heappush(self._held, (now, origin, number, item))

    def hold_now(self, origin: str, number: int, item: Any) -> None:
        """A record without a clock of its own (human feedback): at the stream's present,
        so it applies after everything any origin has announced so far."""
        heapq.heappush(self._held, (self._present(), origin, number, item))

    def quiet(self, origins: Iterable[str]) -> None:
        """The expected origins that cannot send anything now (everything upstream of them
        is processed, and what they made has been received); until they speak, they stop
        holding the others back. Said afresh each time: an origin left out waits again."""
        self._quiet = frozenset(origins)

    def unheard(self) -> frozenset[str]:
        """Expected origins that have not spoken."""
        return self.expected - self._clocks.keys()

    def waiting(self) -> frozenset[str]:
        """Expected origins that have not spoken and may still."""
        return self.unheard() - self._quiet

    def watermark(self) -> int:
        """Every origin has passed this time (0 while any may still speak from the start)."""
        if self.waiting():
            return 0
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
    def from_dict(cls, data: dict[str, Any], max_skew_ms: int,
                  expected: Iterable[str] = ()) -> WatermarkMerge:
        merge = cls(max_skew_ms, expected)
        merge._clocks = {str(o): int(t) for o, t in data["clocks"].items()}
        merge._held = [(int(s), str(o), int(n), item) for s, o, n, item in data["held"]]
        heapq.heapify(merge._held)
        return merge
