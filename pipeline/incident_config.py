"""Incident handling as config-as-code: `incidents.yaml` (correlation window, escalation
timeouts, default tier) and `runbooks.yaml` (alertname → remediation action)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from pipeline.configfile import ConfigError, load_documents
from pipeline.incidents import IncidentConfig, Runbook
from pipeline.rules import DurationMs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IncidentsFile(_Strict):
    """`incidents.yaml`: durations are Prometheus durations (`90s`, `5m`, `1h`)."""

    correlation_window: DurationMs = 300_000
    escalation: dict[Literal["L1", "L2", "L3"], DurationMs] | None = None
    default_tier: Literal["CRITICAL", "BUSINESS", "SUPPORT", "BATCH"] = "BUSINESS"


class RunbookSpec(_Strict):
    action: str = Field(min_length=1)
    parameters: dict[str, str] = Field(default_factory=dict)


class RunbooksFile(RootModel[dict[str, RunbookSpec]]):
    """`runbooks.yaml`: alertname → {action, parameters}."""


def load_incident_config(config_dir: Path | None) -> IncidentConfig:
    """Read incidents.yaml and runbooks.yaml (both optional); ConfigError names file:line."""
    config = IncidentConfig()
    if config_dir is None:
        return config
    settings = IncidentsFile()
    path = config_dir / "incidents.yaml"
    if path.is_file():
        for document, location in load_documents(path, IncidentsFile, root=config_dir):
            if any(ms <= 0 for ms in (document.escalation or {}).values()):
                raise ConfigError([location.problem(("escalation",), "timeouts must be positive")])
            settings = document
    runbooks: dict[str, Runbook] = {}
    path = config_dir / "runbooks.yaml"
    if path.is_file():
        for loaded, _ in load_documents(path, RunbooksFile, root=config_dir):
            runbooks.update({name: Runbook(spec.action, dict(spec.parameters))
                             for name, spec in loaded.root.items()})
    escalation = dict(config.escalation_timeouts_ms) if settings.escalation is None else {
        str(level): ms for level, ms in settings.escalation.items()}
    return IncidentConfig(settings.correlation_window, escalation, runbooks,
                          settings.default_tier)
