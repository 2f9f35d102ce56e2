"""The config loader: safe YAML, pydantic validation, every problem as file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from pipeline.configfile import ConfigError, ConfigProblem, format_path, load_dir, load_documents


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(_Strict):
    name: str
    weight: float = Field(gt=0, lt=1)


class Email(_Strict):
    type: Literal["email"]
    to: str


class Hook(_Strict):
    type: Literal["webhook"]
    url: str


class Spec(_Strict):
    owner: str
    steps: list[Step]
    receiver: Annotated[Email | Hook, Field(discriminator="type")] | None = None


class Doc(_Strict):
    kind: str
    spec: Spec


GOOD = """\
kind: Plan
spec:
  owner: ops
  steps:
    - {name: a, weight: 0.5}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _problems(path: Path, root: Path | None = None, kind: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_documents(path, Doc, root=root, kind=kind)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def test_good_document_loads_with_location(tmp_path: Path) -> None:
    path = _write(tmp_path, "plans/a.yaml", "# leading comment\n" + GOOD)
    [(doc, location)] = load_documents(path, Doc, root=tmp_path)
    assert doc.spec.steps[0].weight == 0.5
    assert (location.file, location.line, location.document) == ("plans/a.yaml", 2, 0)
    assert str(location) == "plans/a.yaml:2"
    assert location.line_of("spec", "steps", 0, "weight") == 6
    assert location.line_of("spec", "steps", 3, "weight") == 5  # falls back to the list


def test_field_error_names_line_and_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "plans/a.yaml", GOOD + "    - name: b\n      weight: 1.5\n")
    assert _problems(path, root=tmp_path) == [
        "plans/a.yaml:7: spec.steps[1].weight: Input should be less than 1 (got 1.5)"
    ]


def test_unknown_field_suggests_the_intended_one(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", GOOD.replace("owner: ops", "ownr: ops"))
    assert _problems(path) == [
        "a.yaml:2: spec.owner: required field missing",
        "a.yaml:3: spec.ownr: unknown field; did you mean 'owner'?",
    ]


def test_missing_field_points_at_the_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", GOOD.replace("{name: a, weight: 0.5}", "{weight: 0.5}"))
    assert _problems(path) == ["a.yaml:5: spec.steps[0].name: required field missing"]


def test_bad_union_tag_points_at_the_tag(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", GOOD + "  receiver:\n    type: pager\n    to: x\n")
    assert _problems(path) == [
        "a.yaml:7: spec.receiver.type: must be one of 'email', 'webhook' (got 'pager')"
    ]


def test_field_error_inside_union_member(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", GOOD + "  receiver:\n    type: email\n    to: [x]\n")
    assert _problems(path) == ["a.yaml:8: spec.receiver.to: Input should be a valid string"]


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", "kind: Plan\nspec:\n  owner: [ops\n  steps: []\n")
    [problem] = _problems(path)
    assert problem.startswith("a.yaml:4: invalid YAML: ")
    assert "flow sequence at line 3" in problem


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", "kind: Plan\nspec:\n\towner: ops\n")
    [problem] = _problems(path)
    assert problem.startswith("a.yaml:3: invalid YAML")


def test_python_tags_are_rejected_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _write(
        tmp_path,
        "a.yaml",
        f"kind: Plan\nspec: !!python/object/apply:os.system ['touch {marker}']\n",
    )
    [problem] = _problems(path)
    assert problem == (
        "a.yaml:2: tag '!!python/object/apply:os.system' not allowed "
        "(config is plain YAML, no object tags)"
    )
    assert not marker.exists()


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", GOOD + "  owner: dev\n")
    assert _problems(path) == ["a.yaml:6: duplicate key spec.owner"]


def test_several_documents_and_empty_ones(tmp_path: Path) -> None:
    text = "---\n" + GOOD + "---\n# nothing here\n---\n" + GOOD.replace("0.5", "2")
    path = _write(tmp_path, "a.yaml", text)
    assert _problems(path) == [
        "a.yaml:14: spec.steps[0].weight: Input should be less than 1 (got 2)"
    ]
    path.write_text(text.replace("weight: 2", "weight: 0.25"))
    loaded = load_documents(path, Doc)
    assert [(loc.line, loc.document) for _, loc in loaded] == [(2, 0), (10, 2)]


def test_kind_is_checked_before_the_model(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", GOOD + "---\n" + GOOD.replace("Plan", "Plna"))
    assert _problems(path, kind="Plan") == ["a.yaml:7: kind: expected 'Plan', got 'Plna'"]
    path.write_text("spec: {}\n")
    assert _problems(path, kind="Plan") == ["a.yaml:1: kind: expected 'Plan'"]


def test_non_mapping_document(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yaml", "- 1\n- 2\n")
    [problem] = _problems(path)
    assert problem.startswith("a.yaml:1: Input should be a valid dictionary")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes(b"kind: \xff\n")
    [problem] = _problems(path)
    assert problem.startswith("a.yaml: cannot read:")


def test_anchors_and_recursive_aliases(tmp_path: Path) -> None:
    text = GOOD + "  receiver: &r {type: webhook, url: &u 'http://x'}\n"
    [(doc, _)] = load_documents(_write(tmp_path, "a.yaml", text), Doc)
    assert doc.spec.receiver == Hook(type="webhook", url="http://x")
    path = _write(tmp_path, "b.yaml", "kind: Plan\nspec: &s {owner: x, steps: [*s]}\n")
    assert _problems(path)  # a cycle is a validation problem, not a hang or a crash


def test_load_dir_sorts_and_collects_every_problem(tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    _write(folder, "b.yml", GOOD)
    _write(folder, "a.yaml", GOOD)
    _write(folder, "c.yaml", GOOD.replace("0.5", "7"))
    _write(folder, "d.yaml", "kind: [\n")
    _write(folder, "notes.txt", "not yaml: [")
    with pytest.raises(ConfigError) as info:
        load_dir(folder, Doc)
    assert [(p.file, p.line) for p in info.value.problems] == [
        ("plans/c.yaml", 5),
        ("plans/d.yaml", 2),
    ]
    (folder / "c.yaml").unlink()
    (folder / "d.yaml").unlink()
    assert [loc.file for _, loc in load_dir(folder, Doc)] == ["plans/a.yaml", "plans/b.yml"]
    assert load_dir(tmp_path / "absent", Doc) == []


def test_format_path_and_problem_text() -> None:
    assert format_path(("spec", "objectives", 0, "target")) == "spec.objectives[0].target"
    assert format_path((0, "a")) == "[0].a"
    assert str(ConfigProblem("a.yaml", 3, "", "bad")) == "a.yaml:3: bad"
