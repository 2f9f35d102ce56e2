"""The config directory as a whole: every file loaded and validated at start, so that a
mistake anywhere is reported at once, with file and line, before the worker runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.configfile import ConfigError, ConfigProblem, Location
from pipeline.slo import Slo, load_slos


@dataclass(frozen=True)
class Config:
    slos: list[tuple[Slo, Location]]

    def summary(self) -> str:
        return f"{len(self.slos)} SLO(s)"


def load_config(config_dir: Path) -> Config:
    """Load every kind of config file; one ConfigError lists the problems of all of them."""
    problems: list[ConfigProblem] = []
    slos: list[tuple[Slo, Location]] = []
    try:
        slos = load_slos(config_dir)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Config(slos)
