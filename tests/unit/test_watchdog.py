"""The watchdog warns about a stage that has input and does not move, then exits the worker
for its supervisor to start again; outages and stages that move or are done are left be."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from agents import watchdog
from pipeline.supervisor import STALLED_EXIT_CODE


class Stage:
    def __init__(self) -> None:
        self.mark = 0
        self.waiting = True

    def progress(self) -> int:
        return self.mark

    def behind(self) -> bool:
        return self.waiting

    def describe(self) -> str:
        return "read/highwater {'t.metrics[0]': (4, 9)}"


class Exited(Exception):
    pass


class Stand:
    """A stage, the watchdog's timer body, a settable clock and the servers' health."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        timers: list[Any] = []

        def timer(every_s: float) -> Any:
            def decorate(fn: Any) -> Any:
                timers.append(fn)
                return fn
            return decorate

        async def reachable() -> bool:
            return self.broker_up

        app = SimpleNamespace(
            timer=timer,
            consumer=SimpleNamespace(_paused_partitions=set(), flow_active=True),
            flow_control=SimpleNamespace(is_active=lambda: True))
        self.stage = Stage()
        self.database = SimpleNamespace(healthy=True)
        self.broker_up = True
        watchdog.register(SimpleNamespace(  # type: ignore[arg-type]
            app=app, stages={"detect": self.stage}, database=self.database,
            recovering=lambda: False,
            outbox=SimpleNamespace(reachable=reachable),
            settings=SimpleNamespace(stall_exit_s=90.0)))
        self.timer = timers[0]
        self.clock = 0.0
        monkeypatch.setattr(watchdog.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(watchdog.logging, "shutdown", lambda: None)

        def exit_(code: int) -> None:
            raise Exited(code)
        monkeypatch.setattr(watchdog.os, "_exit", exit_)

    def look(self, at: float) -> None:
        self.clock = at
        asyncio.run(self.timer())


def test_a_stage_stuck_with_input_is_reported_then_the_worker_exits_for_a_restart(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stand = Stand(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=watchdog.__name__):
        stand.look(0.0)
        stand.look(watchdog.STALL_AFTER_S - 1)
        assert not caplog.records
        stand.look(watchdog.STALL_AFTER_S)
        [warning] = caplog.records
        assert "detect stage has input and has not moved for 30 s" in warning.getMessage()
        assert "(4, 9)" in warning.getMessage() and "in recovery False" in warning.getMessage()
        assert "tasks waiting" in warning.getMessage()
        stand.look(89.0)
        with pytest.raises(Exited) as exited:
            stand.look(90.0)
    assert exited.value.args == (STALLED_EXIT_CODE,)
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "ERROR"]
    assert "exiting so that the worker starts afresh" in caplog.records[-1].getMessage()


def test_a_stage_that_moves_or_has_nothing_to_read_is_left_be(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stand = Stand(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=watchdog.__name__):
        for step in range(1, 10):
            stand.stage.mark += 1  # reads something every 20 s
            stand.look(step * 20.0)
        stand.stage.waiting = False  # then caught up, for a long time
        for step in range(10, 30):
            stand.look(step * 20.0)
    assert not caplog.records


def test_outages_are_waits_not_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    stand = Stand(monkeypatch)
    stand.database.healthy = False
    for step in range(0, 40):
        stand.look(step * 5.0)  # 200 s of database outage: readiness says it
    stand.database.healthy = True
    stand.broker_up = False
    for step in range(40, 80):
        stand.look(step * 5.0)  # a broker outage: checked before exiting, and waited for
    stand.broker_up = True
    with pytest.raises(Exited):
        for step in range(80, 120):
            stand.look(step * 5.0)
