"""Start, find and stop a detached server process whose pid lives in a file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class LaunchError(RuntimeError):
    """A server could not be started or stopped; the message says where its log is."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


def read_pid(pid_file: Path) -> int | None:
    """The pid in the file if that process still runs, else None (and the stale file goes)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def spawn(argv: Sequence[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start a process in its own session so it outlives the CLI that started it."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, log_file: Path,
               alive: Callable[[], bool] | None = None) -> None:
    """Poll `check` until it holds; fail early, with the log's tail, if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise LaunchError(f"{what} exited during start-up; last log lines:\n{tail(log_file)}")
        time.sleep(0.2)
    raise LaunchError(f"{what} did not become ready in {timeout_s:.0f}s; log: {log_file}\n"
                      f"{tail(log_file)}")


def terminate(pid: int, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Ask for a clean shutdown with `sig`; SIGKILL only if it hangs."""
    for signum, wait_s in ((sig, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)
    raise LaunchError(f"process {pid} did not stop")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
