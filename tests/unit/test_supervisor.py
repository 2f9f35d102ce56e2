"""`vigil worker` starts the pipeline again after a stall, and only then; signals reach it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.supervisor import STALLED_EXIT_CODE, supervise

CHILD = f"""
import pathlib, signal, sys, time
log = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (log.write_text(log.read_text() + " term"), sys.exit(0)))
starts = len(log.read_text().split()) if log.exists() else 0
log.write_text(log.read_text() + " start" if log.exists() else "start")
if sys.argv[2] == "stall-once":
    sys.exit({STALLED_EXIT_CODE} if starts == 0 else 3)
while True:
    time.sleep(0.05)
"""


def child(log: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", CHILD, str(log), mode]


def test_a_stalled_worker_is_started_again_and_another_exit_code_is_passed_on(
        tmp_path: Path) -> None:
    log = tmp_path / "starts"
    assert supervise(child(log, "stall-once")) == 3
    assert log.read_text().split() == ["start", "start"]


def test_a_signal_to_the_supervisor_reaches_the_worker(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys; from pipeline.supervisor import supervise; "
                               f"sys.exit(supervise({child(log, 'run')!r}))"])
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text() == "start", "the worker started"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 0
    assert log.read_text().split() == ["start", "term"]
