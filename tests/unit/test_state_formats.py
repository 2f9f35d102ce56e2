"""Every stage's snapshot layout, held to its format number.

`states/<stage>.<format>.bin` is a snapshot of a representative state (`stage_states`) in
each format the stage has had. A layout change under the same number fails here, because a
changelog written by the previous build would then be misread after a deploy: bump the
stage's `state_format`, add the step from the previous format to its `upgrades`, and write
the new format's snapshot with `VIGIL_WRITE_STATES=1 pytest tests/unit/test_state_formats.py`
(earlier formats' files stay: they prove the upgrades). When the recorded file still reads
back as written and only the state the story leaves differs (a stage that behaves
differently, in the same layout), delete and write the current format's file again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from agents.checkpoint import CheckpointedStage
from tests.unit.stage_states import representative_states

STATES = Path(__file__).parent / "states"
NAMES = ("metrics", "detect", "slo", "alerts", "incidents")


@pytest.fixture(scope="module")
def stages() -> dict[str, tuple[CheckpointedStage[Any], Any]]:
    return representative_states()


def saved(name: str) -> dict[int, bytes]:
    """The recorded snapshots of a stage, by format."""
    found = {}
    for path in STATES.glob(f"{name}.*.bin"):
        match = re.fullmatch(rf"{name}\.(\d+)\.bin", path.name)
        assert match, f"{path.name}: expected <stage>.<format>.bin"
        found[int(match[1])] = path.read_bytes()
    return found


@pytest.mark.parametrize("name", NAMES)
def test_a_stage_writes_the_layout_its_format_number_stands_for(
        name: str, stages: dict[str, tuple[CheckpointedStage[Any], Any]]) -> None:
    stage, state = stages[name]
    written = stage.snapshot(state)
    path = STATES / f"{name}.{stage.state_format}.bin"
    if os.environ.get("VIGIL_WRITE_STATES") == "1" and not path.exists():
        path.write_bytes(written)
    assert path.exists(), (f"no recorded snapshot of the {name} stage's format "
                           f"{stage.state_format}; see this module's docstring")
    recorded = path.read_bytes()
    assert stage.snapshot(stage.restore(recorded)) == recorded, (
        f"the {name} stage no longer reads format {stage.state_format} as it was written: "
        "bump its state_format and add the upgrade (this module's docstring)")
    assert written == recorded, (
        f"the {name} stage writes another layout under format {stage.state_format}, or the "
        "story leaves another state: see this module's docstring")


@pytest.mark.parametrize("name", NAMES)
def test_every_format_a_stage_has_had_is_restored(
        name: str, stages: dict[str, tuple[CheckpointedStage[Any], Any]]) -> None:
    stage, _ = stages[name]
    formats = saved(name)
    assert set(formats) == set(range(1, stage.state_format + 1))
    for state_format, blob in formats.items():
        restored = stage.restore(stage._upgrade(0, state_format, blob))
        assert stage.snapshot(restored)  # and it snapshots again in the current format
