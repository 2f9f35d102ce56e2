"""Prometheus-style series selectors: `name{label="v",code!~"5.."}`.

SLOs and rules pick the series they read with the selector syntax their authors already
know from PromQL, with PromQL's semantics: regexes are fully anchored and `.` matches a
newline, and a label a series lacks compares as the empty string, so `code!~"5.."` also
selects series without a `code` label.

>>> sel = parse_selector('http_requests_total{code!~"5..",method="GET"}')
>>> sel.matches("http_requests_total", {"code": "200", "method": "GET"})
True
>>> sel.matches("http_requests_total", {"code": "503", "method": "GET"})
False
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]
NAME_LABEL = "__name__"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPERATOR = re.compile(r"=~|!~|!=|=")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "`": "`"}


class SelectorError(ValueError):
    """A selector that does not parse; `column` is 1-based within the selector text."""

    def __init__(self, column: int, message: str) -> None:
        super().__init__(f"invalid selector at column {column}: {message}")
        self.column = column


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Compiled once here (raises re.error if invalid) so matching stays cheap.
        regex = re.compile(self.value, re.DOTALL) if self.op in ("=~", "!~") else None
        object.__setattr__(self, "_regex", regex)

    def matches(self, value: str) -> bool:
        if self._regex is not None:
            return (self._regex.fullmatch(value) is not None) == (self.op == "=~")
        return (value == self.value) == (self.op == "=")

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{escaped}"'


@dataclass(frozen=True, slots=True)
class Selector:
    """A metric name (or None for any) and matchers that must all hold."""

    name: str | None
    matchers: tuple[Matcher, ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.name is not None and name != self.name:
            return False
        for m in self.matchers:
            value = name if m.label == NAME_LABEL else labels.get(m.label, "")
            if not m.matches(value):
                return False
        return True

    def and_equal(self, label: str, value: str) -> Selector:
        """This selector narrowed by `label="value"` (e.g. the service an SLO implies)."""
        return Selector(self.name, (*self.matchers, Matcher(label, "=", value)))

    def labels_matched(self) -> frozenset[str]:
        return frozenset(m.label for m in self.matchers)

    def __str__(self) -> str:
        inner = ",".join(str(m) for m in self.matchers)
        if self.name is None:
            return "{" + inner + "}"
        return self.name + ("{" + inner + "}" if inner else "")


@lru_cache(maxsize=4096)
def parse_selector(text: str) -> Selector:
    """Parse one vector selector; cached, so equal selectors share compiled regexes."""
    return _Parser(text).selector()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> SelectorError:
        return SelectorError((self.pos if pos is None else pos) + 1, message)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def token(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def selector(self) -> Selector:
        self.skip_space()
        name = self.token(_METRIC_NAME)
        self.skip_space()
        matchers: list[Matcher] = []
        if self.peek() == "{":
            self.pos += 1
            matchers = self.matcher_list()
        elif name is None:
            raise self.fail("expected a metric name or '{'" if self.peek() else "empty selector")
        self.skip_space()
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.peek()!r} after the selector")
        return self.finish(name, matchers)

    def matcher_list(self) -> list[Matcher]:
        matchers: list[Matcher] = []
        while True:
            self.skip_space()
            if self.peek() == "}":
                self.pos += 1
                return matchers
            matchers.append(self.matcher())
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                got = repr(self.peek()) if self.peek() else "end of text"
                raise self.fail(f"expected ',' or '}}', got {got}")

    def matcher(self) -> Matcher:
        label = self.token(_LABEL_NAME)
        if label is None:
            got = repr(self.peek()) if self.peek() else "end of text"
            raise self.fail(f"expected a label name, got {got}")
        self.skip_space()
        op = self.token(_OPERATOR)
        if op is None:
            raise self.fail(f"expected '=', '!=', '=~' or '!~' after label {label!r}")
        self.skip_space()
        value_at = self.pos
        value = self.string()
        try:
            return Matcher(label, op, value)  # type: ignore[arg-type]
        except re.error as exc:
            raise self.fail(f"bad regex for {label!r}: {exc.msg}", value_at) from None

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted label value")
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\" and quote != "`":
                esc = self.peek()
                if esc not in _ESCAPES:
                    raise self.fail(f"unknown escape '\\{esc}'", self.pos - 1)
                out.append(_ESCAPES[esc])
                self.pos += 1
            else:
                out.append(ch)
        raise self.fail("unterminated label value", start)

    def finish(self, name: str | None, matchers: list[Matcher]) -> Selector:
        # Like Prometheus: a name given both ways is ambiguous, and a selector must not be
        # able to match every series (at least one name or non-empty-matching matcher).
        named = [m for m in matchers if m.label == NAME_LABEL and m.op == "="]
        if name is not None and any(m.label == NAME_LABEL for m in matchers):
            raise self.fail(f"metric name {name!r} is also given as {NAME_LABEL}", 0)
        if name is None and named:
            name = named[0].value
            matchers = [m for m in matchers if m is not named[0]]
        if name is None and all(m.matches("") for m in matchers):
            raise self.fail("selector must name a metric or have a matcher that rejects ''", 0)
        return Selector(name, tuple(matchers))
