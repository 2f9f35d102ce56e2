"""A flood of bad input on every consumed topic, mixed with good traffic, against one real
worker: it never stops, every good sample lands exactly, and every bad record is in
vigil.dlq and dead_letters with the reason the door gives it — nothing more, nothing less.

Topics consumed today: metrics (agents/metrics), health (door: agents/alerts; agents/slo
reads it too), events (door: agents/detect; agents/alerts reads it too), catalog and
feedback. vigil.logs and vigil.spans have no consumer yet, so they are not flooded here.

Bad records are addressed by where they landed (topic, partition, offset), learnt from the
producer's delivery reports, so each one is matched to its own dead letters.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipeline.codec import CodecError, decode, encode
from pipeline.envelope import unwrap
from pipeline.ingest import partition_for
from pipeline.kafka import client_config, create_topics
from pipeline.producer import producer_config
from pipeline.settings import Settings
from pipeline.workload import Chunk, Expectation, expected_results
from pipeline.workload import Message as WorkMessage
from tests.integration.harness import Worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ROUND_MS = 2_000
ROUNDS = 40
CLOSE_AT = T0 + ROUNDS * ROUND_MS + 200_000
PARTITIONS = 2
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
YEAR_MS = 365 * 86_400_000
# Extreme but finite values, aggregated like any other: the largest doubles once (in rounds
# 0 and 1, so no summation order overflows), then subnormals and signed zeros.
EXTREMES = (1.7976931348623157e308, -1.7976931348623157e308, *[5e-324, -5e-324,
            2.2250738585072014e-308, 0.0, -0.0, 1e-300] * ROUNDS)


def services() -> list[str]:
    """Four services spread over both partitions."""
    names = [f"flood-{c}" for c in "abcdefgh"]
    by_partition = defaultdict(list)
    for name in names:
        by_partition[partition_for(name.encode(), PARTITIONS)].append(name)
    return [*by_partition[0][:2], *by_partition[1][:2]]


# -- corpora of bytes that are not valid records ---------------------------------------

def hypothesis_binaries(count: int, seed: int) -> list[bytes]:
    """Byte strings drawn by hypothesis, derandomised: the same corpus on every run."""
    found: list[bytes] = []

    @hsettings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck), deadline=None)
    @given(st.binary(max_size=200), st.just(seed))
    def collect(data: bytes, _seed: int) -> None:
        found.append(data)

    collect()
    return found


def mutants(record_type: str, valid: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Random flips, deletions and insertions of a valid encoding that fastavro refuses."""
    out: list[bytes] = []
    while len(out) < count:
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.5:
                data[at] = rng.randrange(256)
            elif choice < 0.75:
                del data[at]
            else:
                data.insert(at, rng.randrange(256))
        if refused(record_type, bytes(data)):
            out.append(bytes(data))
    return out


def refused(record_type: str, data: bytes) -> bool:
    try:
        decode(record_type, data)
    except CodecError:
        return True
    return False


def enum_out_of_range(record_type: str, record: dict[str, Any], field: str,
                      choices: tuple[Any, Any], count: int) -> bytes:
    """`record` encoded with an enum set to index `count`, one past its last symbol: the
    enum is the one byte in which `record` with `field` set to each of `choices` differs."""
    a = encode(record_type, {**record, field: choices[0]})
    b = encode(record_type, {**record, field: choices[1]})
    (at,) = [i for i in range(len(a)) if a[i] != b[i]]
    return a[:at] + bytes([count * 2]) + a[at + 1:]


# -- producing with addresses -----------------------------------------------------------

class Sender:
    """Produces records and learns where each landed; remembers the dead letters due."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = Producer(producer_config(client_config(settings)))
        self.expected: dict[tuple[str, int, int], Counter[str]] = {}
        self.good: set[tuple[str, int, int]] = set()
        self.errors: list[KafkaError] = []
        self.sent: Counter[str] = Counter()

    def send(self, short: str, key: bytes | None, value: bytes | None,
             reasons: list[str] | None = None, partition: int = -1) -> None:
        """`reasons`: the dead letters this record must cause (None: none, it is good)."""
        def done(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.errors.append(error)
                return
            where = (message.topic() or "", message.partition() or 0, message.offset() or 0)
            if reasons:
                self.expected[where] = Counter(reasons)
            else:
                self.good.add(where)

        self.producer.produce(self.settings.topic(short), value=value, key=key,
                              partition=partition, on_delivery=done)
        self.producer.poll(0)
        self.sent[short] += 1

    def flush(self) -> None:
        assert self.producer.flush(60) == 0
        assert not self.errors, self.errors[:3]


# -- the metrics traffic ---------------------------------------------------------------

class MetricsFlood:
    """Good messages (the expectation's input) and bad ones, in production order."""

    def __init__(self, names: list[str], seed: int) -> None:
        self.names = names
        self.rng = np.random.default_rng(seed)
        self.good: list[WorkMessage] = []  # the good part of every message, in order
        self.counters = {name: 0.0 for name in names}

    def round_chunks(self, r: int, service: str) -> list[Chunk]:
        lo = T0 + r * ROUND_MS
        ts = lo + np.arange(4, dtype=np.int64) * (ROUND_MS // 4)
        steps = self.rng.poisson(10, ts.size).astype(np.float64)
        counter = self.counters[service] + np.cumsum(steps)
        self.counters[service] = float(counter[-1])
        one = np.array([lo], dtype=np.int64)
        chunks = [
            Chunk("http_requests_total", {"service": service, "code": "200"}, "COUNTER",
                  ts, counter),
            Chunk("process_cpu_utilization", {"service": service}, "GAUGE", ts,
                  np.round(self.rng.uniform(0.1, 0.9, ts.size), 3)),
            Chunk("http_request_duration_seconds", {"service": service}, "OBSERVATION", ts,
                  self.rng.lognormal(-3, 0.5, ts.size)),
            Chunk("extreme_gauge", {"service": service}, "GAUGE", one,
                  np.array([EXTREMES[r]])),
            Chunk("overflow_gauge", {"service": service}, "GAUGE", one, np.array([1e308])),
        ]
        return chunks

    def big_batch(self, r: int, service: str) -> WorkMessage:
        """200,000 samples in one message: 20 series of 10,000."""
        lo = T0 + r * ROUND_MS
        ts = lo + (np.arange(10_000, dtype=np.int64) * ROUND_MS) // 10_000
        chunks = []
        for j in range(20):
            kind = ("GAUGE", "COUNTER", "OBSERVATION")[j % 3]
            values = (np.cumsum(self.rng.poisson(3, ts.size)).astype(np.float64)
                      if kind == "COUNTER" else self.rng.lognormal(0, 1, ts.size))
            chunks.append(Chunk(f"big_{kind.lower()}", {"service": service, "j": str(j)},
                                kind, ts, values))
        return WorkMessage(service.encode(), tuple(chunks))


def bad_series(r: int, service: str, now_ms: int) -> list[tuple[Chunk, str]]:
    """Series a good message may carry, each dead-lettered alone, with its reason."""
    lo = T0 + r * ROUND_MS
    one = np.array([lo], dtype=np.int64)

    def gauge(name: str, labels: dict[str, str], ts: Any = one,
              values: Any = None) -> Chunk:
        ts = np.asarray(ts, dtype=np.int64)
        values = np.ones(ts.size) if values is None else np.asarray(values, dtype=np.float64)
        return Chunk(name, labels, "GAUGE", ts, values)

    svc = {"service": service}
    return [
        (gauge("many_labels", {**svc, **{f"l{i}": str(i) for i in range(5_000)}}),
         "too_many_labels"),
        (gauge("long_label", {**svc, "blob": "x" * 10_240}), "label_too_long"),
        (gauge("long_series", {**svc, **{f"k{i}": chr(0x4E00 + i) * 70 for i in range(20)}}),
         "series_too_long"),
        (gauge("nul_label", {**svc, "path": "/a\x00b"}), "invalid_text"),
        (gauge("no_service", {"instance": "i-1"}), "missing_service"),
        (gauge("", svc), "missing_name"),
        (gauge("ts_zero", svc, [0]), "late"),
        (gauge("ts_negative", svc, [-1, -86_400_000]), "invalid_timestamp"),
        (gauge("ts_int64_min", svc, [INT64_MIN]), "invalid_timestamp"),
        (gauge("ts_int64_max", svc, [INT64_MAX]), "future"),
        (gauge("ts_far_future", svc, [now_ms + YEAR_MS]), "future"),
        (gauge("non_finite", svc, [lo, lo, lo], [math.nan, math.inf, -math.inf]), "non_finite"),
        (Chunk("process_cpu_utilization", svc, "COUNTER", one, np.ones(1)), "kind_conflict"),
    ]


def one_gauge(service: str, ts: int) -> WorkMessage:
    return WorkMessage(service.encode(), (Chunk("one_gauge", {"service": service}, "GAUGE",
                                                np.array([ts]), np.ones(1)),))


def produce_metrics(sender: Sender, flood: MetricsFlood, now_ms: int, seed: int) -> None:
    rng = random.Random(seed)
    names = flood.names
    template = one_gauge(names[0], T0)
    junk = hypothesis_binaries(25, seed) + mutants("MetricBatch", template.payload(), rng, 25)
    junk = [j for j in junk if refused("MetricBatch", j)]
    for r in range(ROUNDS):
        for service in names:
            chunks = flood.round_chunks(r, service)
            if r >= 2 and rng.random() < 0.5:  # a good message with bad series inside
                extra = rng.sample(bad_series(r, service, now_ms), 3)
                message = WorkMessage(service.encode(), (*chunks, *(c for c, _ in extra)))
                sender.send("metrics", message.key, message.payload(), [w for _, w in extra])
            else:
                message = WorkMessage(service.encode(), tuple(chunks))
                sender.send("metrics", message.key, message.payload())
            flood.good.append(WorkMessage(service.encode(), tuple(chunks)))
        if r == 5:
            big = flood.big_batch(r, names[0])
            sender.send("metrics", big.key, big.payload())
            flood.good.append(big)
        if r >= 2:  # whole messages that are bad
            victim = rng.choice(names)
            key = victim.encode()
            for _ in range(2):
                if junk:
                    sender.send("metrics", rng.choice([key, None]), junk.pop(),
                                ["undecodable"])
            if r == 3:
                sender.send("metrics", key, b"", ["undecodable"])
                sender.send("metrics", key, rng.randbytes(1024) * 5 * 1024,
                            ["undecodable"])  # 5 MB
                sender.send("metrics", key, rng.randbytes(15_950_000),
                            ["undecodable"])  # as large as a producer sends: the DLQ cuts it
            if r == 4:
                record = decode("MetricBatch", one_gauge(victim, T0 + r * ROUND_MS).payload())
                series = record["series"][0]
                sender.send("metrics", key, enum_out_of_range(
                    "MetricBatch", {**record, "series": [series]}, "series",
                    ([{**series, "kind": "GAUGE"}], [{**series, "kind": "COUNTER"}]), 3),
                    ["undecodable"])
            if r == 6:  # every series bad: every one dead-lettered, nothing aggregated
                every = bad_series(r, victim, now_ms)
                message = WorkMessage(key, tuple(c for c, _ in every))
                sender.send("metrics", key, message.payload(), [w for _, w in every])


# -- the other topics ------------------------------------------------------------------

def health(service: str, ts: int, status: str = "HEALTHY", **extra: Any) -> dict[str, Any]:
    return {"ts_ms": ts, "service": service, "instance": "i-1", "check": "http",
            "status": status, "latency_ms": 3.5, "message": None, **extra}


def change(service: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {"ts_ms": ts, "service": service, "kind": "DEPLOYMENT", "description": "v2",
            "attributes": {"version": "2"}, **extra}


def service_info(service: str, **extra: Any) -> dict[str, Any]:
    return {"service": service, "team": "flood", "tier": "BUSINESS", "environment": "test",
            "runbook_url": None, "depends_on": [], "channels": [], **extra}


def feedback(ts: int, action: str = "ACK", **extra: Any) -> dict[str, Any]:
    return {"ts_ms": ts, "target_id": "INC-2026-000001", "action": action, "actor": "sre",
            "until_ms": None, "matchers": {}, "comment": None, "success": None, **extra}


def produce_others(sender: Sender, names: list[str], now_ms: int, seed: int) -> dict[str, int]:
    """Good and bad health, events, catalog and feedback; returns counts of good effects."""
    rng = random.Random(seed)
    down = "flood-down"
    later = now_ms + YEAR_MS

    def junk(record_type: str, valid: bytes) -> list[bytes]:
        found = hypothesis_binaries(8, seed) + mutants(record_type, valid, rng, 8)
        return [j for j in found if refused(record_type, j)]

    for name in names:
        sender.send("catalog", name.encode(), encode("ServiceInfo", service_info(name)))
    sender.send("catalog", b"flood-gone", None)  # a removal
    a = names[0]
    bad: list[tuple[str, bytes | None, bytes | None, str]] = [
        ("catalog", a.encode(), encode("ServiceInfo", service_info(names[1])), "key_mismatch"),
        ("catalog", a.encode(), encode("ServiceInfo", service_info(a, team="t\x00")),
         "invalid_text"),
        ("catalog", a.encode(), encode("ServiceInfo", service_info(a, depends_on=["d" * 10_240])),
         "label_too_long"),
        ("catalog", a.encode(), enum_out_of_range("ServiceInfo", service_info(a), "tier",
                                                  ("CRITICAL", "BUSINESS"), 4), "undecodable"),
        ("health", a.encode(), enum_out_of_range("HealthCheckResult", health(a, T0), "status",
                                                 ("HEALTHY", "DEGRADED"), 3), "undecodable"),
        ("health", a.encode(), encode("HealthCheckResult", health(a, T0, instance="i\x00")),
         "invalid_text"),
        ("health", a.encode(), encode("HealthCheckResult", health("s" * 10_240, T0)),
         "label_too_long"),
        ("health", a.encode(), encode("HealthCheckResult", health(a, -5)), "invalid_timestamp"),
        ("health", a.encode(), encode("HealthCheckResult", health(a, INT64_MAX)), "future"),
        ("health", a.encode(), encode("HealthCheckResult", health(a, later)), "future"),
        ("events", a.encode(), enum_out_of_range("ChangeEvent", change(a, T0), "kind",
                                                 ("DEPLOYMENT", "SCALING"), 5), "undecodable"),
        ("events", a.encode(), encode("ChangeEvent", change(a, T0, description="x\x00")),
         "invalid_text"),
        ("events", a.encode(), encode("ChangeEvent", change(a, T0, attributes={"k" * 10_240: ""})),
         "label_too_long"),
        ("events", a.encode(), encode("ChangeEvent", change("", T0)), "missing_service"),
        ("events", a.encode(), encode("ChangeEvent", change(a, INT64_MIN)), "invalid_timestamp"),
        ("events", a.encode(), encode("ChangeEvent", change(a, INT64_MAX)), "future"),
        ("feedback", b"INC-2026-000001", enum_out_of_range(
            "Feedback", feedback(T0), "action", ("ACK", "RESOLVE"), 5), "undecodable"),
        ("feedback", b"INC-2026-000001", encode("Feedback", feedback(T0, actor="a\x00")),
         "invalid_text"),
        ("feedback", b"x", encode("Feedback", feedback(T0, "SILENCE", until_ms=T0 - 1)),
         "invalid"),
        ("feedback", b"x", encode("Feedback", feedback(T0, matchers={"m" * 10_240: "x"})),
         "label_too_long"),
        ("feedback", None, encode("Feedback", feedback(later)), "future"),
        ("feedback", None, None, "undecodable"),
    ]
    valid = {"health": encode("HealthCheckResult", health(a, T0)),
             "events": encode("ChangeEvent", change(a, T0)),
             "catalog": encode("ServiceInfo", service_info(a)),
             "feedback": encode("Feedback", feedback(T0))}
    record_types = {"health": "HealthCheckResult", "events": "ChangeEvent",
                    "catalog": "ServiceInfo", "feedback": "Feedback"}
    for short, good in valid.items():  # the catalog is compacted: a key is required
        keys = [a.encode()] if short == "catalog" else [a.encode(), None]
        bad += [(short, rng.choice(keys), j, "undecodable")
                for j in junk(record_types[short], good)]
    rng.shuffle(bad)
    silences = acks = 0
    for r in range(ROUNDS):
        ts = T0 + r * ROUND_MS
        for name in names:
            key = rng.choice([name.encode(), None, names[(names.index(name) + 1) % 4].encode()])
            sender.send("health", key, encode("HealthCheckResult", health(name, ts)))
        sender.send("health", down.encode(),
                    encode("HealthCheckResult", health(down, ts, "UNHEALTHY")))
        if r % 5 == 0:
            sender.send("events", rng.choice([a.encode(), None]), encode("ChangeEvent",
                                                                         change(a, ts)))
            sender.send("feedback", b"INC-2026-000001", encode("Feedback", feedback(ts)))
            sender.send("feedback", b"NoSuchAlert", encode("Feedback", feedback(
                ts, "SILENCE", until_ms=ts + 60_000, matchers={"alertname": "NoSuchAlert"})))
            acks += 1
            silences += 1
        for _ in range(2):
            if bad:
                short, key, value, reason = bad.pop()
                sender.send(short, key, value, [reason])
    for short, key, value, reason in bad:
        sender.send(short, key, value, [reason])
    return {"silences": silences, "acks": acks}


# -- reading results -------------------------------------------------------------------

def dead_letters_in_db(dsn: str) -> dict[tuple[str, int, int], Counter[str]]:
    found: dict[tuple[str, int, int], Counter[str]] = defaultdict(Counter)
    with psycopg.connect(dsn) as conn:
        for topic, partition, offset, reason, detail in conn.execute(
                'SELECT topic, partition, "offset", reason, detail FROM dead_letters'):
            assert detail, (topic, partition, offset, reason)
            found[(topic, partition, offset)][reason] += 1
    return dict(found)


def read_topic(settings: Settings, short: str, until: Callable[[list[Message]], bool],
               what: str) -> list[Message]:
    consumer = Consumer({**client_config(settings), "group.id": f"check-{short}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.message.max.bytes": 16_777_216})
    consumer.subscribe([settings.topic(short)])
    records: list[Message] = []
    try:
        def more() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(message)
            return until(records)
        wait_for(more, 90, what, every_s=0)
    finally:
        consumer.close()
    return records


def windows_in_db(dsn: str, names: list[str]) -> dict[tuple[str, int, int], dict[str, Any]]:
    fields = ("count", "sum", "min", "max", "mean", "last", "increase", "rate",
              "p50", "p90", "p95", "p99")
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(
            "SELECT series_id, width_s, (extract(epoch FROM bucket) * 1000)::bigint, count, "
            "sum, min, max, mean, last, increase, rate, p50, p90, p95, p99 "
            "FROM metric_aggregates WHERE service = ANY(%s) AND name <> 'tick'", (names,))
        return {(row[0], row[1], row[2]): dict(zip(fields, row[3:], strict=True))
                for row in cursor}


def assert_windows(found: dict[Any, dict[str, Any]], expected: Expectation) -> None:
    assert set(found) == set(expected.windows), (
        f"missing {sorted(set(expected.windows) - set(found))[:3]}, "
        f"unexpected {sorted(set(found) - set(expected.windows))[:3]}")
    for key, want in expected.windows.items():
        got = found[key]
        for field, value in got.items():
            target = getattr(want, field)
            if target is None:
                assert value is None, (key, field)
            elif field.startswith("p"):
                assert value == pytest.approx(target, rel=0.01), (key, field)
            else:
                assert value == pytest.approx(target, rel=1e-9, abs=1e-300), (key, field)


class LivenessWatch:
    """Polls /health/live and the process while the flood runs, and once more at the end;
    remembers any failure."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.failures: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2) and self.poll():
            pass

    def poll(self) -> bool:
        """False once the process is gone."""
        process = self.worker.process
        if process is None or process.poll() is not None:
            self.failures.append("worker process exited")
            return False
        status, _ = self.worker.get("/health/live")
        self.polls += 1
        if status != 200:
            self.failures.append(f"/health/live answered {status}")
        return True

    def __enter__(self) -> LivenessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def test_a_flood_of_bad_input_loses_nothing_and_stops_nothing(settings: Settings,
                                                             tmp_path: Path) -> None:
    settings = settings.model_copy(update={"partitions": PARTITIONS})
    create_topics(settings)
    dsn = settings.database_dsn() or ""
    names = services()
    now_ms = int(time.time() * 1000)
    sender = Sender(settings)
    flood = MetricsFlood(names, seed=11)
    with Worker(settings, tmp_path) as worker, LivenessWatch(worker) as watch:
        effects = produce_others(sender, names, now_ms, seed=12)
        produce_metrics(sender, flood, now_ms, seed=13)
        # Good messages on another service's partition, without a key or with that service's
        # key: each is re-produced by the worker to its owner. Sent last, as their copies
        # arrive after everything else.
        for i, service in enumerate(names):
            late_chunks = tuple(flood.round_chunks(ROUNDS, service)[:2])
            other = names[(i + 2) % 4]  # services() puts it on the other partition
            key = None if i % 2 else other.encode()
            sender.send("metrics", key, WorkMessage(key, late_chunks).payload(),
                        partition=partition_for(other.encode(), PARTITIONS))
            flood.good.append(WorkMessage(service.encode(), late_chunks))
        sender.flush()
        total = sum(sum(c.values()) for c in sender.expected.values())
        wait_for(lambda: sum(sum(c.values()) for c in dead_letters_in_db(dsn).values())
                 >= total, 180, f"{total} dead letters")
        wait_for(lambda: worker.metrics().get('vigil_consumed_messages_total{topic="metrics"}', 0)
                 >= sender.sent["metrics"] + len(names), 120,
                 "every metrics message and re-routed copy consumed")
        for service in names:
            tick = WorkMessage(service.encode(), (Chunk("tick", {"service": service}, "GAUGE",
                                                        np.array([CLOSE_AT]), np.ones(1)),))
            sender.send("metrics", tick.key, tick.payload())
        sender.flush()
        with np.errstate(over="ignore", invalid="ignore"):
            expected = expected_results(
                flood.good, partition_of=lambda m: partition_for(m.key or b"", PARTITIONS))
        wait_for(lambda: len(windows_in_db(dsn, names)) >= len(expected.windows), 180,
                 f"{len(expected.windows)} windows")
        letters = dead_letters_in_db(dsn)
        assert worker.get("/health/ready")[0] == 200
    assert watch.polls > 1 and not watch.failures, watch.failures[:3]

    assert_windows(windows_in_db(dsn, names), expected)
    # Every bad record has exactly its dead letters, and no good record has any.
    assert letters == sender.expected
    assert not set(letters) & sender.good
    by_reason: Counter[str] = sum(sender.expected.values(), Counter())
    assert set(by_reason) >= {"undecodable", "too_many_labels", "label_too_long",
                              "series_too_long", "invalid_text", "invalid_timestamp",
                              "future", "late", "non_finite", "kind_conflict",
                              "key_mismatch", "missing_service", "invalid"}
    # The same dead letters on vigil.dlq, keyed by their source topic.
    records = read_topic(settings, "dlq", lambda got: len(got) >= total,
                         f"{total} records on vigil.dlq")
    on_topic: dict[tuple[str, int, int], Counter[str]] = defaultdict(Counter)
    for record in records:
        letter = decode("DeadLetter", record.value() or b"")
        assert record.key() == letter["topic"].encode()
        on_topic[(letter["topic"], letter["partition"], letter["offset"])][letter["reason"]] += 1
    assert dict(on_topic) == sender.expected
    # Good records of the other topics had their effect: the service whose every instance
    # is down fires, every SILENCE reached every alert partition, every ACK the incidents.
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT status FROM alerts WHERE service = 'flood-down' AND "
                            "alertname = 'ServiceDown'").fetchall() == [("firing",)]
    feed = read_topic(settings, "internal.incident-feed",
                      lambda got: sum((m.key() or b"").startswith(b"feedback/") for m in got)
                      >= effects["acks"], "every ACK forwarded")
    assert sum((m.key() or b"").startswith(b"feedback/") for m in feed) == effects["acks"]
    silences = read_topic(settings, "internal.conditions",
                          lambda got: sum(unwrap(m.value() or b"")[0] == "Feedback" for m in got)
                          >= effects["silences"] * PARTITIONS, "every SILENCE broadcast")
    assert sum(unwrap(m.value() or b"")[0] == "Feedback" for m in silences) == \
        effects["silences"] * PARTITIONS
