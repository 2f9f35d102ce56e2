"""The config directory as a whole: every file loaded and validated at start, so that a
mistake anywhere is reported at once, with file and line, before the worker runs.

Layout of VIGIL_CONFIG_DIR (every part optional):
  rules/*.yaml      threshold, dynamic-threshold and deadman rules (pipeline/rules.py)
  slos/*.yaml       OpenSLO-shaped SLOs (pipeline/slo.py)
  incidents.yaml    correlation window, escalation timeouts, default tier
  runbooks.yaml     alertname → remediation action (pipeline/incident_config.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.configfile import ConfigError, ConfigProblem
from pipeline.incident_config import load_incident_config
from pipeline.incidents import IncidentConfig
from pipeline.rules import RuleSet, load_rules
from pipeline.settings import Settings
from pipeline.slo import load_slos


@dataclass(frozen=True)
class Config:
    rules: RuleSet
    slos: list[Any]
    incidents: IncidentConfig

    def summary(self) -> str:
        return (f"{len(self.rules)} rule(s), {len(self.slos)} SLO(s), "
                f"{len(self.incidents.runbooks)} runbook(s)")


def load_config(config_dir: Path, settings: Settings | None = None) -> Config:
    """Load every kind of config file; one ConfigError lists the problems of all of them."""
    settings = settings or Settings()
    problems: list[ConfigProblem] = []

    def attempt(load: Callable[[], Any], empty: Any) -> Any:
        try:
            return load()
        except ConfigError as exc:
            problems.extend(exc.problems)
            return empty

    rules = attempt(lambda: load_rules(config_dir, widths_s=settings.window_widths_s,
                                       grace_ms=int(settings.grace_s * 1000)), None)
    slos = attempt(lambda: load_slos(config_dir), [])
    incidents = attempt(lambda: load_incident_config(config_dir), None)
    if problems:
        raise ConfigError(problems)
    return Config(rules, slos, incidents)
