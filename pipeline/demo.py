"""`vigil demo`: real servers, a real worker, and the `demo` scenario played at an event-time
speed-up, with its alerts and incidents shown as they happen.

The story (pipeline/scenarios.py `demo`): ten services of config/demo/catalog.yaml send
normal traffic; then db degrades and orders and checkout, which depend on it, follow. Half
an hour of history goes first, as fast as the worker takes it, so the detectors have learned
normal (they need 120 windows); the live part then plays in about 90 s. The scenario is
shifted in time so it ends about when the demo does: event time never runs ahead of the
wall clock (the door rejects the future), and the rows land in today's partitions, where
analysts' `now() - interval` queries find them.

Each run gets its own topic prefix (`demo<UTC timestamp>.`) and recreates the database
`<database>_demo` (`vigil_demo` on the embedded server), so a rerun tells the same story
from scratch and the tables of the last run stay for querying. The exit code says whether
the injected root cause was found: 0 when an incident names it, else 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from pipeline import ROOT
from pipeline.codec import CodecError, decode, encode
from pipeline.db import connect, ensure_partitions, migrate
from pipeline.kafka import client_config, create_topics, topic_specs
from pipeline.local import servers
from pipeline.local.kafka import EmbeddedKafka
from pipeline.local.postgres import EmbeddedPostgres
from pipeline.local.process import LaunchError
from pipeline.producer import MetricsProducer, producer_config
from pipeline.scenarios import SCENARIOS, Scenario
from pipeline.settings import Settings

CONFIG_DIR = ROOT / "config" / "demo"
LIVE_WALL_S = 90.0  # wall seconds of the live part at the default speed
SLICE_S = 10  # samples go out a window at a time: services sharing a partition stay in grace
DEMO_PREFIX = re.compile(r"^demo(\d{14})\.")
STALE_RUN_S = 3600  # topics of earlier runs older than this are deleted at start
WORKER_READY_S = 120.0
SETTLE_S = 3.0  # the pipeline counts as done when caught up and quiet this long
DRAIN_TIMEOUT_S = 180.0
# Topics the worker consumes that the demo writes to, upstream first: a stage checkpoints
# its outputs before it commits, so checking in this order sees every hop's output.
CONSUMED = ("catalog", "events", "metrics", "internal.windows", "internal.conditions",
            "internal.incident-feed")
WORKER_SETTINGS = ("partitions", "replication_factor", "window_widths_s", "grace_s",
                   "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                   "kafka_sasl_password", "kafka_ssl_cafile")
# Demo worker settings: no daily season (so detectors are ready after minutes of history)
# and alerts that resolve two minutes after their last anomaly, within the recovery part.
WORKER_ENV = {"VIGIL_DETECT_SEASON_S": "0", "VIGIL_DETECT_KEEP_FIRING_S": "120"}

QUERIES = {
    "p99 latency per minute of the cascade's services, from just before it": """\
SELECT time_bucket('1 minute', bucket) AS minute, service, round(max(p99)::numeric, 3) AS p99_s
FROM metric_aggregates
WHERE name = 'http_request_duration_seconds' AND width_s = 60
  AND service IN ('db', 'orders', 'checkout')
  AND bucket >= (SELECT min(opened_at) FROM incidents) - interval '5 minutes'
GROUP BY minute, service ORDER BY minute, service;""",
    "incidents with time to detect and to resolve": """\
SELECT service, incidents, unresolved, round(mttd_s) AS mttd_s, round(mttr_s) AS mttr_s
FROM incident_metrics ORDER BY incidents DESC, service;""",
    "noisiest alerts": """\
SELECT alertname, service, firing_transitions, first_fired, last_fired
FROM noisiest_alerts LIMIT 10;""",
}
"""What an analyst could ask next; printed at the end (and run by the integration test)."""


# -- time ------------------------------------------------------------------------------------

def shift_ms(scenario: Scenario, now_ms: int, speed: float) -> int:
    """Offset that moves the scenario to end as late as it can without any sample of the
    live part being due before the wall clock reaches it, on a whole minute.

    At `speed` ≥ 1 event time gains on the wall clock, so the last sample is the one to
    keep in the past; slower than real time, the first one is.

    >>> from pipeline.scenarios import latency_spike
    >>> s = latency_spike(warmup_s=600, incident_s=60)
    >>> offset = shift_ms(s, now_ms=1_800_000_030_000, speed=10.0)
    >>> offset % 60_000, s.end_ms + offset <= 1_800_000_030_000 + (s.end_ms - s.live_from_ms) / 10
    (0, True)
    """
    live_wall_ms = (scenario.end_ms - scenario.live_from_ms) / speed
    end_ms = now_ms + live_wall_ms * min(1.0, speed)
    return int(end_ms - scenario.end_ms) // 60_000 * 60_000


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone().strftime("%H:%M:%S")


def _duration(ms: float) -> str:
    s = round(ms / 1000)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -- the terminal ----------------------------------------------------------------------------

STATUS_STYLE = {"firing": "bold red", "resolved": "green", "CREATED": "bold magenta",
                "UPDATED": "magenta", "ESCALATED": "bold yellow", "RESOLVED": "green",
                "ACKNOWLEDGED": "cyan"}


class View:
    """Progress and a log of what the pipeline says: a live bar on a terminal, plain lines
    (progress every tenth) anywhere else; rich drops the colours where they do not belong."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.live = self.console.is_terminal
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._tenth = -1
        self._started = time.monotonic()

    def say(self, text: str, style: str = "") -> None:
        self.console.print(f"[{style}]{text}[/]" if style else text)

    def heading(self, text: str) -> None:
        self.console.print()
        elapsed = _duration(1000 * (time.monotonic() - self._started))
        self.say(f"── {text} ── [dim]{elapsed}[/]", "bold")

    @contextmanager
    def progress(self, label: str, total: float) -> Iterator[None]:
        """A bar up to `total`; `advance_to` moves it and says where it is."""
        self._tenth = -1
        if not self.live:
            yield
            return
        self._progress = Progress(TextColumn("{task.description:<8}"), BarColumn(),
                                  TextColumn("{task.percentage:>3.0f}%  {task.fields[detail]}"),
                                  TimeElapsedColumn(), console=self.console)
        self._task = self._progress.add_task(label, total=total, detail="")
        with self._progress:
            yield
        self._progress = self._task = None

    def advance_to(self, done: float, total: float, detail: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, detail=detail)
            return
        tenth = min(10, int(10 * done / total)) if total else 10
        if tenth != self._tenth:
            self._tenth = tenth
            self.say(f"   {10 * tenth:3d}%  {detail}")

    def alert(self, record: Mapping[str, Any]) -> None:
        status = record["status"]
        if status == "pending":
            return
        summary = record["annotations"].get("summary", "")
        tag = " (suppressed)" if record.get("suppressed") else ""
        self.say(f"{_clock(record['updated_at_ms'])}  alert     "
                 f"[{STATUS_STYLE.get(status, '')}]{status:<9}[/] "
                 f"{escape(record['alertname'])} on [bold]{escape(record['service'])}[/] "
                 f"({escape(record['severity'])}){tag}  {escape(summary)}")

    def incident(self, record: Mapping[str, Any]) -> None:
        event = record["event"]
        root = record["root_cause_service"] or "?"
        self.say(f"{_clock(record['updated_at_ms'])}  incident  "
                 f"[{STATUS_STYLE.get(event, '')}]{event:<9}[/] {record['incident_id']} "
                 f"{record['priority']} {record['status']} {record['escalation_level']}  "
                 f"\"{escape(record['title'])}\"  root cause [bold]{escape(root)}[/]  "
                 f"services {', '.join(record['services'])}")


# -- Kafka -----------------------------------------------------------------------------------

class Watcher:
    """Reads vigil.alerts and vigil.incidents from the start and shows each record once;
    an incident UPDATED that changes nothing shown (another alert of a service already in
    it) is left to the alert line above it."""

    TOPICS = {"alerts": "AlertEvent", "incidents": "IncidentEvent"}
    SHOWN = ("title", "priority", "status", "escalation_level", "services",
             "root_cause_service")

    def __init__(self, settings: Settings, view: View) -> None:
        self.view = view
        self.types = {settings.topic(short): t for short, t in self.TOPICS.items()}
        self.consumer = Consumer({**client_config(settings),
                                  "group.id": f"{settings.topic_prefix}demo-view",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.subscribe(list(self.types))
        self.seen: set[str] = set()
        self.shown: dict[str, tuple[Any, ...]] = {}  # incident id → what was last shown

    def pump(self, seconds: float = 0.0) -> None:
        """Show what arrives within `seconds` (at least what is already there), each batch
        in event-time order."""
        deadline = time.monotonic() + seconds
        while True:
            wait = max(0.0, min(0.2, deadline - time.monotonic()))
            messages = [m for m in self.consumer.consume(500, wait) if m.error() is None]
            records = [r for m in messages if (r := self._decode(m.topic() or "",
                                                                  m.value() or b""))]
            for record_type, record in sorted(records, key=lambda r: r[1]["updated_at_ms"]):
                self._show(record_type, record)
            if not messages and time.monotonic() >= deadline:
                return

    def _decode(self, topic: str, value: bytes) -> tuple[str, dict[str, Any]] | None:
        record_type = self.types[topic]
        try:
            record = decode(record_type, value)
        except CodecError as exc:
            self.view.say(f"undecodable {record_type} on {topic}: {escape(str(exc))}", "red")
            return None
        if record["event_id"] in self.seen:  # repeats after a worker restart
            return None
        self.seen.add(record["event_id"])
        return record_type, record

    def _show(self, record_type: str, record: dict[str, Any]) -> None:
        if record_type == "AlertEvent":
            self.view.alert(record)
            return
        shown = tuple(str(record[k]) for k in self.SHOWN)
        if record["event"] != "UPDATED" or self.shown.get(record["incident_id"]) != shown:
            self.shown[record["incident_id"]] = shown
            self.view.incident(record)

    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True)
class Backlog:
    """How far the worker's committed offsets are from the ends of what it reads."""

    behind: int
    ends: tuple[int, ...]
    metrics_done: int
    metrics_total: int


def _backlog(settings: Settings, probe: Consumer) -> Backlog:
    partitions = {spec.name: spec.partitions for spec in topic_specs(settings)}
    tps = [TopicPartition(settings.topic(short), p) for short in CONSUMED
           for p in range(partitions[settings.topic(short)])]
    metrics = settings.topic("metrics")
    behind = done = total = 0
    ends = []
    for tp in probe.committed(tps, timeout=10):
        _, high = probe.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                              timeout=10)
        taken = max(tp.offset, 0)
        ends.append(high)
        behind += max(0, high - taken)
        if tp.topic == metrics:
            done, total = done + taken, total + high
    return Backlog(behind, tuple(ends), done, total)


def _delete_topics(settings: Settings, stale_after_s: float | None) -> None:
    """Delete the demo runs' topics (all of a run: inputs, outputs, Faust's own): with
    `stale_after_s`, those of runs that began at least that long ago; else this run's."""
    admin = AdminClient(client_config(settings))
    now = datetime.now(UTC)
    doomed = []
    for name in admin.list_topics(timeout=30).topics:
        found = DEMO_PREFIX.match(name)
        if found is None:
            continue
        if stale_after_s is None:
            if found.group(0) == settings.topic_prefix:
                doomed.append(name)
            continue
        began = datetime.strptime(found.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        if (now - began).total_seconds() >= stale_after_s:
            doomed.append(name)
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            with suppress(Exception):  # gone already, or being deleted by another run
                future.result()


# -- the worker ------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setting_env(settings: Settings) -> dict[str, str]:
    """Settings the worker must share with the demo, as VIGIL_* variables."""
    env = {}
    for name in WORKER_SETTINGS:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"VIGIL_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


@dataclass
class Worker:
    """A `vigil worker` subprocess with its own web port; its log goes to `log_path`."""

    settings: Settings
    log_path: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        """Start the process; `wait_ready` waits for it (input can be sent meanwhile)."""
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        env.update(_setting_env(s))
        env.update(WORKER_ENV)
        env.update(VIGIL_KAFKA_BOOTSTRAP=s.kafka_bootstrap or "",
                   VIGIL_DATABASE_URL=s.database_dsn() or "", VIGIL_TOPIC_PREFIX=s.topic_prefix,
                   VIGIL_HOME=str(s.home), VIGIL_CONFIG_DIR=str(s.config_dir or CONFIG_DIR),
                   VIGIL_WEB_PORT=str(self.port), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", "--loglevel", "info"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=ROOT)

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + WORKER_READY_S
        while not self.ready():
            if self.process.poll() is not None:
                raise LaunchError(f"the worker exited with {self.process.returncode}; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise LaunchError(f"the worker was not ready after {WORKER_READY_S:.0f}s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.5)

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200 and json.loads(response.read()).get("ready") is True
        except (OSError, ValueError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# -- the database ----------------------------------------------------------------------------

def _demo_dsn(dsn: str) -> tuple[str, str]:
    """The DSN of the demo's database next to the one configured, and its name."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    name = f"{parts.get('dbname') or 'vigil'}_demo"
    return psycopg.conninfo.make_conninfo("", **{**parts, "dbname": name}), name


def _recreate_database(server_dsn: str, name: str) -> None:
    try:
        with connect(server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise LaunchError(f"cannot recreate the demo database {name} on "
                          f"{_where(server_dsn)}: {exc}") from exc


def _where(dsn: str) -> str:
    """host:port/database, never the password."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname')}"


@dataclass
class Findings:
    windows: int
    anomalies: int
    alerts: int
    firing: int
    incidents: list[dict[str, Any]]
    first_anomaly: dict[tuple[str, str], int]  # (service, type) → first detected_at_ms
    slos: list[tuple[str, str, float, float | None, float | None]]  # latest status of each


def _findings(dsn: str, from_ms: int) -> Findings:
    since = datetime.fromtimestamp(from_ms / 1000, UTC)
    with connect(dsn) as conn:
        def one(query: str) -> int:
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0

        cursor = conn.execute(
            "SELECT incident_id, title, priority, status, root_cause_service, services, "
            "(extract(epoch FROM opened_at) * 1000)::bigint AS opened_ms, "
            "(extract(epoch FROM resolved_at) * 1000)::bigint AS resolved_ms, resolution "
            "FROM incidents ORDER BY opened_at, incident_id")
        names = [c.name for c in cursor.description or ()]
        incidents = [dict(zip(names, row, strict=True)) for row in cursor]
        first = {(service, kind): int(ms) for service, kind, ms in conn.execute(
            "SELECT service, type, (extract(epoch FROM min(detected_at)) * 1000)::bigint "
            "FROM anomalies WHERE window_start >= %s GROUP BY service, type", (since,))}
        slos = conn.execute(
            "SELECT DISTINCT ON (slo) slo, service, objective, sli, error_budget_remaining "
            "FROM slo_status ORDER BY slo, ts DESC").fetchall()
        return Findings(one("SELECT count(*) FROM metric_aggregates"),
                        one("SELECT count(*) FROM anomalies"), one("SELECT count(*) FROM alerts"),
                        one("SELECT count(*) FROM alert_events WHERE status = 'firing'"),
                        incidents, first, slos)


# -- the story -------------------------------------------------------------------------------

@dataclass
class Truth:
    """What was injected, shifted to the demo's time: services in order of degradation."""

    root: str
    starts: dict[str, int]  # service → start of its degradation
    kinds: dict[str, list[str]]
    ends_ms: int

    @classmethod
    def of(cls, scenario: Scenario, offset_ms: int) -> Truth:
        starts: dict[str, int] = {}
        kinds: dict[str, list[str]] = {}
        for i in sorted(scenario.incidents, key=lambda i: (i.start_ms, i.service)):
            starts.setdefault(i.service, i.start_ms + offset_ms)
            kinds.setdefault(i.service, []).append(i.kind)
        ends = max(i.end_ms for i in scenario.incidents) + offset_ms
        return cls(next(iter(starts)), starts, kinds, ends)

    def found_in(self, incidents: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The first incident, open during the injection, that names the root cause."""
        t0 = self.starts[self.root]
        for incident in incidents:
            during = incident["opened_ms"] <= self.ends_ms and (
                incident["resolved_ms"] is None or incident["resolved_ms"] >= t0)
            if during and incident["root_cause_service"] == self.root \
                    and self.root in incident["services"]:
                return incident
        return None


class Player:
    """Sends the scenario shifted by `offset_ms`, a window at a time: each slice is flushed
    before the next, so no sample arrives after its window has closed."""

    def __init__(self, scenario: Scenario, offset_ms: int, settings: Settings) -> None:
        self.scenario = scenario
        self.offset_ms = offset_ms
        self.settings = settings
        # Errors only: a broker that has just started answers "coordinator load in
        # progress" for a while, and the producers retry by themselves.
        config = {**client_config(settings), "log_level": 3}
        self.metrics = MetricsProducer(config, settings.topic("metrics"), source="vigil-demo")
        self.others = Producer(producer_config(config))
        self.changes = sorted(scenario.change_events, key=lambda e: e["ts_ms"])

    def catalog(self) -> None:
        for entry in self.scenario.catalog:
            self.others.produce(self.settings.topic("catalog"), key=entry["service"].encode(),
                                value=encode("ServiceInfo", entry))
        if self.others.flush(30):
            raise LaunchError(f"the catalog could not be sent to {self.settings.kafka_bootstrap}")

    def send(self, lo: int, hi: int, view: View) -> None:
        """Samples and change events in [lo, hi) of scenario time."""
        while self.changes and self.changes[0]["ts_ms"] < hi:
            event = {**self.changes.pop(0)}
            event["ts_ms"] += self.offset_ms
            self.others.produce(self.settings.topic("events"), key=event["service"].encode(),
                                value=encode("ChangeEvent", event))
            view.say(f"{_clock(event['ts_ms'])}  change    {event['kind']} on "
                     f"{event['service']}: {escape(event['description'])}", "cyan")
        for chunk in self.scenario.chunks(SLICE_S, lo, hi):
            self.metrics.add_many(chunk.name, chunk.labels, chunk.kind,
                                  chunk.ts_ms + self.offset_ms, chunk.values)
        self.metrics.flush()
        self.others.flush(30)

    def slices(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        step = SLICE_S * 1000
        for start in range(lo, hi, step):
            yield start, min(start + step, hi)


def _history(player: Player, view: View) -> None:
    s = player.scenario
    for lo, hi in player.slices(s.start_ms, s.live_from_ms):
        player.send(lo, hi, view)


def _live(player: Player, speed: float, truth: Truth, watcher: Watcher, view: View) -> None:
    """The live part at `speed`, announcing each injected degradation as it starts."""
    s, offset = player.scenario, player.offset_ms
    live_s = (s.end_ms - s.live_from_ms) / 1000
    announced: set[str] = set()
    started = time.monotonic()
    with view.progress("live", live_s):
        for lo, hi in player.slices(s.live_from_ms, s.end_ms):
            for service, start in truth.starts.items():
                if service not in announced and start - offset < hi:
                    announced.add(service)
                    what = ", ".join(k.lower().replace("_", " ") for k in truth.kinds[service])
                    view.say(f"{_clock(start)}  INJECTED  {service} starts degrading: {what}",
                             "bold yellow")
            due = started + (hi - s.live_from_ms) / 1000 / speed
            watcher.pump(max(0.0, due - time.monotonic()))
            player.send(lo, hi, view)
            view.advance_to((hi - s.live_from_ms) / 1000, live_s,
                            f"event time {_clock(hi + offset)}")


def _drain(settings: Settings, worker: Worker, watcher: Watcher, view: View,
           label: str) -> bool:
    """Wait until the worker has taken everything and stays quiet (a stage may still act on
    a quiet partition), with a bar of the metrics it took; False at the timeout."""
    probe = Consumer({**client_config(settings), "group.id": f"{settings.topic_prefix}worker",
                      "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        quiet_since: float | None = None
        last: tuple[int, ...] = ()
        with view.progress(label, 1.0):
            while time.monotonic() < deadline and worker.alive():
                backlog = _backlog(settings, probe)
                view.advance_to(backlog.metrics_done / max(backlog.metrics_total, 1), 1.0,
                                f"{backlog.metrics_done:,}/{backlog.metrics_total:,} messages")
                now = time.monotonic()
                if backlog.behind:
                    quiet_since = None
                elif backlog.ends != last or quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= SETTLE_S:
                    return True
                last = backlog.ends
                watcher.pump(0.5)
        return False
    finally:
        probe.close()


def _summary(view: View, truth: Truth, findings: Findings,
             samples: int, messages: int, db_name: str) -> dict[str, Any] | None:
    view.heading("summary")
    view.say(f"samples produced     {samples:,} in {messages:,} messages")
    view.say(f"windows aggregated   {findings.windows:,} rows in metric_aggregates")
    view.say(f"anomalies            {findings.anomalies:,}")
    view.say(f"alerts               {findings.alerts:,} ({findings.firing:,} firing transitions)")
    for slo, service, objective, sli, budget in findings.slos:
        view.say(f"SLO                  {slo} ({service}, objective {objective:.2%}): "
                 f"SLI {1.0 if sli is None else sli:.2%}, "
                 f"{1.0 if budget is None else budget:.0%} of the error budget left")
    view.say(f"incidents            {len(findings.incidents)}")
    for i in findings.incidents:
        ended = (f"resolved {_clock(i['resolved_ms'])} ({i['resolution']})"
                 if i["resolved_ms"] is not None else "still open")
        view.say(f"  {i['incident_id']} {i['priority']} {i['status']:<13} "
                 f"\"{escape(i['title'])}\"  root cause [bold]{i['root_cause_service'] or '?'}[/]"
                 f"  services {', '.join(i['services'])}  opened {_clock(i['opened_ms'])}, {ended}")

    view.heading("injected vs found")
    t0 = truth.starts[truth.root]
    for service, start in truth.starts.items():
        for kind in truth.kinds[service]:
            seen = findings.first_anomaly.get((service, kind))
            found = (f"first {kind} anomaly {_clock(seen)} (+{(seen - start) / 1000:.0f}s)"
                     if seen is not None and seen >= start else f"no {kind} anomaly")
            lag = f"+{(start - t0) / 1000:.0f}s" if start > t0 else "    "
            view.say(f"  {service:<9} degraded {_clock(start)} {lag:>5}  {found}")
    match = truth.found_in(findings.incidents)
    injected = (f"injected: {truth.root} degradation at {_clock(t0)}, then "
                f"{', '.join(s for s in truth.starts if s != truth.root)}")
    view.say(f"  {injected}")
    if match is not None:
        view.say(f"  detected: {match['incident_id']} root cause {match['root_cause_service']}, "
                 f"opened {(match['opened_ms'] - t0) / 1000:+.0f}s after the injection, "
                 f"services {', '.join(match['services'])}  ✓", "bold green")
    else:
        named = sorted({str(i["root_cause_service"]) for i in findings.incidents})
        view.say(f"  NOT FOUND: no incident names {truth.root} as its root cause (incidents "
                 f"name: {', '.join(named) or 'none'})  ✗", "bold red")

    view.heading("next: query it")
    view.say(f"  eval \"$(./vigil status --env)\"\n  psql \"${{VIGIL_DATABASE_URL%/*}}/{db_name}\"")
    for title, query in QUERIES.items():
        view.console.print()
        view.say(f"  -- {title}", "dim")
        view.console.print(escape(query), markup=True)
    return match


# -- the command -----------------------------------------------------------------------------

def run_demo(settings: Settings, speed: float | None = None, keep_servers: bool = False,
             *, seed: int = 0, warmup_s: float = 1800.0) -> int:
    """Run the whole demo; 0 when the injected root cause was found, 1 when not."""
    view = View()
    if speed is not None and speed <= 0:
        view.say(f"error: --speed must be positive (got {speed})", "red")
        return 2
    kafka, postgres = servers.embedded_kafka(settings), servers.embedded_postgres(settings)
    ours: list[EmbeddedKafka | EmbeddedPostgres] = [
        server for server, named in ((kafka, settings.kafka_bootstrap),
                                     (postgres, settings.database_url))
        if named is None and not server.running()]
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    view.heading("servers")
    if ours:
        jars = " (a first start fetches Kafka's jars with mvn)" if kafka in ours else ""
        view.say(f"starting the embedded servers under {settings.home}{jars}")
    try:
        found = servers.up(settings)
    except LaunchError:
        for server in ours:  # the one that did start
            server.stop()
        raise
    dsn, db_name = _demo_dsn(found.database_url)
    run = settings.model_copy(update={
        "kafka_bootstrap": found.kafka_bootstrap, "database_url": SecretStr(dsn),
        "topic_prefix": f"demo{stamp}.", "config_dir": settings.config_dir or CONFIG_DIR})
    view.say(f"kafka     {found.kafka_bootstrap}  topics {run.topic_prefix}*")
    view.say(f"postgres  {_where(dsn)}")
    worker = Worker(run, settings.home / "demo" / f"worker-{stamp}.log")
    try:
        _delete_topics(run, stale_after_s=STALE_RUN_S)
        _recreate_database(found.database_url, db_name)
        migrate(dsn)
        with connect(dsn) as conn:
            ensure_partitions(conn)
        create_topics(run)
        found_it = _story(run, worker, view, speed, seed, warmup_s, db_name)
    finally:
        worker.stop()
        _wind_down(view, run, ours, keep_servers)
    return 0 if found_it else 1


def _story(run: Settings, worker: Worker, view: View, speed: float | None, seed: int,
           warmup_s: float, db_name: str) -> bool:
    """Play the scenario through the worker and tell what it found; True when an incident
    names the injected root cause. Its Kafka clients end with it, before servers stop."""
    scenario = SCENARIOS["demo"](seed=seed, warmup_s=warmup_s)
    speed = speed or scenario.speedup(LIVE_WALL_S)
    offset = shift_ms(scenario, int(time.time() * 1000), speed)
    truth = Truth.of(scenario, offset)
    player = Player(scenario, offset, run)
    player.catalog()
    services = ", ".join(e["service"] for e in scenario.catalog)
    view.say(f"catalog   {len(scenario.catalog)} services: {services}")

    view.heading("worker")
    worker.launch()
    _history(player, view)  # while the worker starts
    worker.wait_ready()
    view.say(f"ready on :{worker.port}, config {run.config_dir}, log {worker.log_path}")
    watcher = Watcher(run, view)
    try:
        history_ms = scenario.live_from_ms - scenario.start_ms
        view.heading(f"history: {_duration(history_ms)} of normal traffic, so the detectors "
                     "learn what normal looks like")
        if not _drain(run, worker, watcher, view, "learning"):
            view.say(f"the worker did not take in the history in time; log {worker.log_path}",
                     "yellow")

        live_ms = scenario.end_ms - scenario.live_from_ms
        view.heading(f"live: {_duration(live_ms)} of event time at {speed:.1f}x (about "
                     f"{live_ms / 1000 / speed:.0f}s); {truth.root} degrades "
                     f"{_duration(truth.starts[truth.root] - offset - scenario.live_from_ms)} in")
        _live(player, speed, truth, watcher, view)
        view.heading("the pipeline catches up")
        if not _drain(run, worker, watcher, view, "catching up"):
            view.say("the worker did not catch up in time (or stopped); summarising what it "
                     f"has so far; log {worker.log_path}", "yellow")
        watcher.pump()
    finally:
        watcher.close()
    findings = _findings(run.database_dsn() or "", scenario.start_ms + offset)
    return _summary(view, truth, findings, player.metrics.samples_sent,
                    player.metrics.messages_sent, db_name) is not None


def _wind_down(view: View, run: Settings, ours: list[EmbeddedKafka | EmbeddedPostgres],
               keep_servers: bool) -> None:
    view.console.print()
    if keep_servers:
        view.say(f"servers left running; the run's topics: VIGIL_TOPIC_PREFIX={run.topic_prefix}"
                 " ./vigil tail incidents --from-beginning")
        return
    with suppress(Exception):  # the broker may be unreachable; a later run cleans up
        _delete_topics(run, stale_after_s=None)
    for server in ours:
        server.stop()
    if ours:
        view.say("stopped the servers the demo started; `./vigil up` brings them back with "
                 "the demo's tables")
