"""Run real `vigil worker` processes against the test servers, and wait on conditions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka import INPUT_TOPICS, INTERNAL_TOPICS, SINGLE_PARTITION, client_config
from pipeline.settings import Settings

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.25) -> T:
    """Poll until `check` returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} "
                                 f"(last: {last!r})")
        time.sleep(every_s)
        last = check()
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(
        VIGIL_KAFKA_BOOTSTRAP=settings.kafka_bootstrap or "",
        VIGIL_DATABASE_URL=settings.database_dsn() or "",
        VIGIL_TOPIC_PREFIX=settings.topic_prefix,
        VIGIL_PARTITIONS=str(settings.partitions),
        VIGIL_HOME=str(settings.home),
        PYTHONUNBUFFERED="1",
        # A stalled worker starts afresh well within the tests' waits (warned at 30 s).
        VIGIL_STALL_EXIT_S="45",
        **extra,
    )
    if settings.config_dir is not None:
        env["VIGIL_CONFIG_DIR"] = str(settings.config_dir)
    return env


class Worker:
    """One `vigil worker` process with its own web port and log file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker",
                 **extra_env: str) -> None:
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.env = worker_env(settings, VIGIL_WEB_PORT=str(self.port), **extra_env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 90.0) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # lives as long as the process
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--loglevel", "info"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, ready_timeout_s, f"worker ready (log {self.log_path})")
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError:
            return 0, b""

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}; "
                                 f"log {self.log_path}:\n{self.log_tail()}")
        status, body = self.get("/health/ready")
        return status == 200 and json.loads(body).get("ready") is True

    def idle(self) -> bool:
        """No stage has input to read, output to write or records held for ordering."""
        return self.metrics().get("vigil_worker_idle") == 1.0

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by full name with labels, e.g. 'vigil_x_total{a="b"}'."""
        _, body = self.get("/metrics")
        found: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    def rss_kib(self) -> int:
        """Resident memory of the worker: the supervisor and the pipeline it runs (Linux)."""
        assert self.process is not None
        total, pids = 0, [self.process.pid]
        while pids:
            pid = pids.pop()
            proc = Path(f"/proc/{pid}")
            total += next(int(line.split()[1])
                          for line in (proc / "status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
            pids += [int(c) for task in (proc / "task").iterdir()
                     for c in (task / "children").read_text().split()]
        return total

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stalls(self) -> int:
        """How often the supervisor started the pipeline again after a stall."""
        return self.log_text().count("the worker stalled and exited")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_errors(self, lines: int = 80) -> str:
        """From the first error or warning on: what went wrong first, with its traceback."""
        found = self.log_text().splitlines()
        first = next((i for i, line in enumerate(found)
                      if "[ERROR]" in line or "[WARNING]" in line or "Traceback" in line),
                     len(found))
        return "\n".join(found[first:first + lines])

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        exited = self.process.poll() if self.process is not None else None
        state = "" if kind is None or exited is not None else "\n".join(
            f"{name} {value:g}" for name, value in self.metrics().items()
            if name.startswith(("vigil_consumer_lag", "vigil_worker_idle", "vigil_consumed_"
                                "messages", "vigil_incident_feed_held")))
        self.stop()
        if kind is not None:  # CI keeps only the output: show what the worker said
            status = "running" if exited is None else f"had exited with {exited}"
            print(f"--- worker {status}; its state ---\n{state}\n"
                  f"--- first errors in {self.log_path} ---\n"
                  f"{self.log_errors()}\n--- last lines ---\n{self.log_tail(60)}")


class Lagging(list[str]):
    """What keeps a worker from being done: falsy, and named when a wait times out."""

    def __bool__(self) -> bool:
        return False


class Settling:
    """Whether a worker is done: its group has committed every topic it reads up to the
    end, twice in a row with nothing new in between (downstream stages produce more as
    upstream ones commit, and commits trail acks by up to a second), and it is idle."""

    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.worker = worker
        self.partitions = [TopicPartition(settings.topic(short), p)
                           for short in (*INPUT_TOPICS, *INTERNAL_TOPICS)
                           for p in range(1 if short in SINGLE_PARTITION
                                          else settings.partitions)]
        self.group = Consumer({**client_config(settings),
                               "group.id": f"{settings.topic_prefix}worker"})
        self.last: list[int] | None = None

    def __call__(self) -> bool | Lagging:
        ends = [self.group.get_watermark_offsets(tp, timeout=10)[1] for tp in self.partitions]
        committed = self.group.committed(self.partitions, timeout=10)
        behind = Lagging(f"{c.topic}[{c.partition}] committed {c.offset} of {end}"
                         for end, c in zip(ends, committed, strict=True)
                         if end != 0 and c.offset < end)
        moved, self.last = ends != self.last, ends if not len(behind) else None
        if len(behind):
            return behind
        if moved:
            return Lagging(["new input since the last look"])
        return self.worker.idle() or Lagging(["the worker is not idle"])

    def wait(self, timeout_s: float = 180) -> None:
        try:
            wait_for(self, timeout_s, "the worker to commit every topic to its end",
                     every_s=1.0)
        finally:
            self.group.close()
