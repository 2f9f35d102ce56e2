"""Settings from the environment (VIGIL_*), validated once at start."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vigil"


class Settings(BaseSettings):
    """Every command reads these; unset servers mean "use the embedded ones under home"."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    kafka_bootstrap: str | None = None
    database_url: SecretStr | None = None
    topic_prefix: str = "vigil."
    config_dir: Path | None = None
    web_port: int = 6066
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    kafka_port: int = 39092
    kafka_controller_port: int = 39093
    pg_port: int = 35432
    kafka_version: str = "4.1.1"

    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    # How long the group waits for a silent worker (kill -9, lost host) before handing its
    # partitions to the others: failover takes about this long. Heartbeats go every 3 s from
    # the event loop, so a loop must never stall this long (processing one message takes ms).
    kafka_session_timeout_s: float = Field(default=15.0, ge=6, le=300)

    # A stage with input waiting that makes no progress this long (database up, no table
    # recovery running) exits the worker so that its supervisor starts it afresh: see
    # agents/watchdog.py. 0 never exits.
    stall_exit_s: float = Field(default=90.0, ge=0)

    stages: list[str] | None = None  # a subset of pipeline.app.STAGES, e.g. for benchmarks
    window_widths_s: list[int] = Field(default_factory=lambda: [10, 60])
    grace_s: float = Field(default=5.0, ge=0)
    max_future_s: float = Field(default=300.0, gt=0)
    series_idle_s: float = Field(default=900.0, gt=0)

    # Label bounds at the door (pipeline/metricbatch.py): a series over any of them is
    # dead-lettered (too_many_labels, label_too_long, series_too_long). A series is a key
    # of metric_aggregates' btree (at most ~2.7 kB per entry) and of every cache, so an
    # unbounded label set would break the sink and memory, not just look odd.
    max_labels: int = Field(default=32, ge=2)
    max_label_bytes: int = Field(default=1024, ge=16)
    max_series_bytes: int = Field(default=2048, ge=64, le=2400)

    # Detection (agents/detect.py): the window width scored by the detectors (default the
    # smallest), the season of their seasonal features (0 turns them off), the one
    # sensitivity knob, how long an anomaly's alert stays firing without a new anomaly,
    # and how long a silent series keeps its detector.
    detect_width_s: int | None = Field(default=None, gt=0)
    detect_season_s: float = Field(default=86400.0, ge=0)
    detect_sensitivity: float = Field(default=0.5, gt=0, le=1)
    detect_keep_firing_s: float = Field(default=300.0, ge=0)
    detect_forget_s: float = Field(default=172800.0, gt=0)

    # SLOs (agents/slo.py): the window width they count (must divide 60 s) and how often
    # their state (~100 KB per SLO) is snapshotted.
    slo_width_s: int = Field(default=60, gt=0)
    slo_checkpoint_s: float = Field(default=10.0, ge=0)

    # Alerts (agents/alerts.py): a health check not reported for this long no longer counts
    # its instance, and how far a partition's event time moves before it is forwarded to
    # the incident stage (whose escalation timers run on it). Incident correlation,
    # escalation and runbooks are config-as-code: VIGIL_CONFIG_DIR/incidents.yaml, runbooks.yaml.
    health_stale_s: float = Field(default=300.0, gt=0)
    stream_time_step_s: float = Field(default=10.0, gt=0)
    # Incidents (agents/incidents.py): alert partitions are merged in event-time order;
    # a partition whose event time lags the fastest by more than this stops holding the
    # others back (a partition whose services all went quiet).
    incident_max_skew_s: float = Field(default=1800.0, gt=0)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError(f"topic prefix {value!r} may only use letters, digits, '.', '_', '-'")
        return value

    @field_validator("window_widths_s")
    @classmethod
    def _widths_positive(cls, value: list[int]) -> list[int]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("window widths must be positive seconds")
        return sorted(set(value))

    def topic(self, name: str) -> str:
        """Full topic name for a short name such as 'metrics'."""
        return f"{self.topic_prefix}{name}"

    def database_dsn(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None


def load_settings() -> Settings:
    return Settings()
