"""The config directory is validated as a whole, with every problem named by file:line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import ROOT
from pipeline.config import load_config
from pipeline.configfile import ConfigError


@pytest.mark.parametrize("name", ["demo", "examples"])
def test_shipped_config_directories_load(name: str) -> None:
    config = load_config(ROOT / "config" / name)
    assert len(config.rules) > 0


def test_problems_in_several_files_are_reported_together(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "config" / "demo", tmp_path / "c")
    (tmp_path / "c" / "rules" / "bad.yaml").write_text(
        'kind: ThresholdRule\nname: X\nselector: "a"\nfield: nope\nop: ">"\nvalue: 1\n')
    (tmp_path / "c" / "incidents.yaml").write_text("correlation_window: soon\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "c")
    text = str(caught.value)
    assert "rules/bad.yaml:4: field:" in text
    assert "incidents.yaml:1: correlation_window" in text
