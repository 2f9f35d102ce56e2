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

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
