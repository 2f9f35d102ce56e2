"""`vigil worker` runs the pipeline in a child process and starts it again when it stalls.

A worker that stops moving with input waiting (see agents/watchdog.py) exits with
STALLED_EXIT_CODE; starting afresh is safe at any point, because results are checkpointed
exactly as after a kill -9. Any other exit ends the supervisor with the child's code, so a
real failure (bad config, servers gone) is not hidden behind restarts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

STALLED_EXIT_CODE = 75  # EX_TEMPFAIL: try again


def supervise(command: Sequence[str]) -> int:
    """Run `command` until it exits for a reason other than a stall, or is told to stop;
    return its exit status (128 + the signal's number if a signal ended it)."""
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    starts = 0
    while True:
        starts += 1
        child = subprocess.Popen(list(command))
        code = child.wait()
        if code != STALLED_EXIT_CODE or stopping:
            return code if code >= 0 else 128 - code
        print(f"vigil: the worker stalled and exited; starting it again (start {starts + 1})",
              file=sys.stderr, flush=True)
