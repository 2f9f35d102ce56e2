"""A single-node Apache Kafka broker in KRaft mode, from Maven Central jars and local Java."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.local.process import LaunchError, port_open, read_pid, spawn, terminate, wait_until

POM = Path(__file__).with_name("pom.xml")

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
message.max.bytes=16777216
"""

LOG4J2 = """\
Configuration:
  name: vigil-kafka
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka
        level: WARN
      - name: org.apache.kafka
        level: WARN
"""


@dataclass(frozen=True)
class EmbeddedKafka:
    home: Path
    port: int
    controller_port: int
    version: str

    @property
    def root(self) -> Path:
        return self.home / "kafka"

    @property
    def libs(self) -> Path:
        return self.home / "cache" / f"kafka-{self.version}" / "libs"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def running(self) -> bool:
        return self.pid() is not None

    def ensure_jars(self) -> None:
        """Resolve the broker's jars once per version; Maven's own cache makes repeats cheap."""
        marker = self.libs / ".complete"
        if marker.exists():
            return
        if shutil.which("mvn") is None:
            raise LaunchError("Maven (mvn) is needed to fetch Kafka's jars; install it "
                              "(apt-get install maven) or set VIGIL_KAFKA_BOOTSTRAP")
        self.libs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), f"-Dkafka.version={self.version}",
             "dependency:copy-dependencies", f"-DoutputDirectory={self.libs}",
             "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise LaunchError(f"mvn could not resolve Kafka {self.version}:\n"
                              f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        marker.write_text(self.version)

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").exists():
            return str(Path(java_home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise LaunchError("Java 17+ is needed to run the embedded Kafka broker")
        return java

    def _classpath(self) -> str:
        return f"{self.libs}/*"

    def _write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "server.properties"
        config.write_text(SERVER_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, data_dir=self.data_dir))
        (self.root / "log4j2.yaml").write_text(LOG4J2)
        return config

    def _format_storage(self, config: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id_file = self.root / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(_kafka_uuid())
        result = subprocess.run(
            [self._java(), "-cp", self._classpath(), "kafka.tools.StorageTool", "format",
             f"--cluster-id={cluster_id_file.read_text().strip()}", "-c", str(config),
             "--ignore-formatted"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise LaunchError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout_s: float = 90.0) -> None:
        """Idempotent: a broker that already runs is left alone."""
        if self.running():
            return
        if port_open("127.0.0.1", self.port):
            raise LaunchError(f"port {self.port} is taken by another process; "
                              "set VIGIL_KAFKA_PORT or VIGIL_KAFKA_BOOTSTRAP")
        self.ensure_jars()
        config = self._write_config()
        self._format_storage(config)
        argv = [self._java(), "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={self.root / 'log4j2.yaml'}",
                "-cp", self._classpath(), "kafka.Kafka", str(config)]
        spawn(argv, self.log_file, self.pid_file, cwd=self.root)
        wait_until(self._ready, timeout_s, "Kafka broker", self.log_file, alive=self.running)

    def _ready(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout_s=60.0)
        self.pid_file.unlink(missing_ok=True)


def _kafka_uuid() -> str:
    """Kafka cluster ids are 16 random bytes, base64url without padding, never starting
    with '-' (Kafka's own Uuid.randomUuid rule: the storage tool would read it as a flag)."""
    import base64

    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found
