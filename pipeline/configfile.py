"""Config-as-code loading: YAML documents validated by pydantic, errors as file:line.

Every kind of config file (SLOs, rules, routes, escalation, runbooks, catalog seed) goes
through `load_documents` / `load_dir`, so an operator always gets the same kind of message:

    slos/checkout.yaml:12: spec.objectives[0].target: must be in (0, 1) (got 1.5)

YAML is read with PyYAML's safe loader only (no `!!python/...` tags, no code runs). The
loader composes node trees first and records the line of every key and value, so a
pydantic error location can be turned back into the line an operator has to edit.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
PathKey = tuple[str | int, ...]

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in one config file."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """All problems found while loading config; `str()` lists one per line."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Location:
    """Where a document came from; `line_of` finds a field's line for later checks
    (e.g. a duplicate name across files) that pydantic cannot see."""

    file: str
    line: int
    document: int
    lines: Mapping[PathKey, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, *path: str | int) -> int:
        """Line of `path` inside the document, or of its nearest parent that exists."""
        key: PathKey = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key, self.line)

    def problem(self, path: PathKey, message: str) -> ConfigProblem:
        return ConfigProblem(self.file, self.line_of(*path), format_path(path), message)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def format_path(path: PathKey) -> str:
    """`('spec', 'objectives', 0, 'target')` -> `spec.objectives[0].target`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_documents(
    path: Path, model: type[M], *, root: Path | None = None, kind: str | None = None
) -> list[tuple[M, Location]]:
    """Validate every YAML document in `path` with `model`.

    `root` is the directory file names are shown relative to (default: the file's own
    directory). With `kind`, each document must say `kind: <kind>`, so a file of the wrong
    sort is reported plainly rather than as a heap of unrelated field errors. Empty
    documents are skipped. Raises ConfigError listing every problem in the file.
    """
    shown = _display_name(path, path.parent if root is None else root)
    loaded: list[tuple[M, Location]] = []
    problems: list[ConfigProblem] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(shown, 0, "", f"cannot read: {exc}")]) from None
    for index, data, lines, error in _documents(text):
        if error is not None:
            problems.append(error.with_file(shown))
            break
        location = Location(shown, lines.get((), 1), index, lines)
        got = data.get("kind") if isinstance(data, dict) else None
        if kind is not None and got != kind:
            message = f"expected {kind!r}" + (f", got {got!r}" if got is not None else "")
            problems.append(location.problem(("kind",), message))
            continue
        try:
            loaded.append((model.model_validate(data), location))
        except ValidationError as exc:
            problems.extend(_problems(exc, data, location))
    if problems:
        raise ConfigError(problems)
    return loaded


def load_dir(
    directory: Path, model: type[M], *, root: Path | None = None, kind: str | None = None
) -> list[tuple[M, Location]]:
    """`load_documents` over every *.yaml / *.yml in `directory`, in name order.

    File names are shown relative to `root` (default: the directory's parent, i.e. the
    config dir, so `slos/checkout.yaml`). A missing directory holds no documents. Problems
    from all files are collected into one ConfigError.
    """
    root = directory.parent if root is None else root
    if not directory.is_dir():
        return []
    loaded: list[tuple[M, Location]] = []
    problems: list[ConfigProblem] = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in YAML_SUFFIXES):
        try:
            loaded.extend(load_documents(path, model, root=root, kind=kind))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return loaded


def _display_name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass(frozen=True, slots=True)
class _YamlProblem:
    line: int
    message: str

    def with_file(self, file: str) -> ConfigProblem:
        return ConfigProblem(file, self.line, "", self.message)


def _documents(text: str) -> Iterable[tuple[int, Any, dict[PathKey, int], _YamlProblem | None]]:
    """Yield (index, data, line table, None) per non-empty document, or a final problem."""
    loader = yaml.SafeLoader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            lines: dict[PathKey, int] = {}
            duplicate = _record_lines(node, (), lines, set())
            if duplicate is not None:
                yield index, None, lines, duplicate
                return
            data = loader.construct_document(node)
            if data is not None:
                yield index, data, lines, None
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        yield index, None, {}, _YamlProblem(line, _yaml_message(exc))
    except yaml.YAMLError as exc:
        yield index, None, {}, _YamlProblem(0, f"invalid YAML: {exc}")
    finally:
        loader.dispose()


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "not valid YAML"
    if "could not determine a constructor" in problem:
        tag = problem.rsplit(" ", 1)[-1].replace("tag:yaml.org,2002:", "!!")
        return f"tag {tag} not allowed (config is plain YAML, no object tags)"
    if exc.context and exc.context_mark is not None:
        return f"invalid YAML: {problem} ({exc.context} at line {exc.context_mark.line + 1})"
    return f"invalid YAML: {problem}"


def _record_lines(
    node: yaml.Node, path: PathKey, lines: dict[PathKey, int], seen: set[int]
) -> _YamlProblem | None:
    """Fill `lines` with the 1-based line of every key path; report a duplicate key.

    An aliased node is walked once only: that keeps recursive and exponentially nested
    aliases cheap, and its lines are those of the anchor, which is where to edit it.
    """
    lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in seen:
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            if key in keys:
                where = format_path((*path, key))
                return _YamlProblem(key_node.start_mark.line + 1, f"duplicate key {where}")
            keys.add(key)
            # A value starting on the key's line reports there; a nested block after it
            # reports at the key too, which is the line that names the field.
            lines[(*path, key)] = key_node.start_mark.line + 1
            problem = _record_lines(value_node, (*path, key), lines, seen)
            if problem is not None:
                return problem
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problem = _record_lines(item, (*path, i), lines, seen)
            if problem is not None:
                return problem
    return None


def _problems(exc: ValidationError, data: Any, location: Location) -> list[ConfigProblem]:
    errors = exc.errors(include_url=False)
    paths = [_data_path(e["loc"], data, e["type"] == "missing") for e in errors]
    for i, error in enumerate(errors):
        # A bad union tag is reported on the union; the line to fix is the tag's own.
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            paths[i] = (*paths[i], error["ctx"]["discriminator"].strip("'"))
    # A typo shows up as an unknown key next to a missing one: name the likely intent.
    missing: dict[PathKey, list[str]] = {}
    for error, path in zip(errors, paths, strict=True):
        if error["type"] == "missing" and path and isinstance(path[-1], str):
            missing.setdefault(path[:-1], []).append(path[-1])
    problems: list[ConfigProblem] = []
    for error, path in zip(errors, paths, strict=True):
        message = _message(error)
        if error["type"] == "extra_forbidden" and path and isinstance(path[-1], str):
            close = difflib.get_close_matches(path[-1], missing.get(path[:-1], []), n=1)
            message += f"; did you mean {close[0]!r}?" if close else ""
        problem = location.problem(path, message)
        if problem not in problems:
            problems.append(problem)
    return sorted(problems, key=lambda p: p.line)


def _data_path(loc: tuple[Any, ...], data: Any, missing: bool) -> PathKey:
    """Pydantic's location with union-tag steps (not keys of the data) dropped."""
    path: list[str | int] = []
    node = data
    for i, step in enumerate(loc):
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
        elif not (missing and i == len(loc) - 1):
            continue
        path.append(step)
    return tuple(path)


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field missing"
    if kind == "union_tag_invalid":
        ctx = error["ctx"]
        return f"must be one of {ctx['expected_tags']} (got {ctx['tag']!r})"
    if kind == "union_tag_not_found":
        return "required field missing"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = error.get("input")
    if isinstance(value, (str, int, float, bool)):
        message += f" (got {value!r})"
    return message
