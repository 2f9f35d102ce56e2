"""Selector parsing and matching, with PromQL's anchoring and missing-label semantics."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pipeline.selector
from pipeline.selector import Matcher, Selector, SelectorError, parse_selector


def test_module_examples_run() -> None:
    assert doctest.testmod(pipeline.selector).failed == 0


def test_bare_name() -> None:
    sel = parse_selector("http_requests_total")
    assert sel == Selector("http_requests_total")
    assert sel.matches("http_requests_total", {"code": "200"})
    assert not sel.matches("http_requests", {})


def test_all_operators_and_spacing() -> None:
    sel = parse_selector(' up { a = "1" , b!="2", c=~"x.*" ,d!~`y|z`, } ')
    assert sel.name == "up"
    assert [(m.label, m.op, m.value) for m in sel.matchers] == [
        ("a", "=", "1"),
        ("b", "!=", "2"),
        ("c", "=~", "x.*"),
        ("d", "!~", "y|z"),
    ]
    assert sel.matches("up", {"a": "1", "b": "3", "c": "xx", "d": "w"})
    assert not sel.matches("up", {"a": "1", "b": "2", "c": "xx", "d": "w"})
    assert not sel.matches("up", {"a": "1", "b": "3", "c": "xx", "d": "z"})


def test_name_as_label() -> None:
    assert parse_selector('{__name__="up",job="a"}') == parse_selector('up{job="a"}')
    by_regex = parse_selector('{__name__=~"http_.*"}')
    assert by_regex.name is None
    assert by_regex.matches("http_requests_total", {})
    assert not by_regex.matches("rpc_http_total", {})


def test_regexes_are_fully_anchored() -> None:
    five_xx = parse_selector('r{code=~"5.."}')
    assert five_xx.matches("r", {"code": "503"})
    assert not five_xx.matches("r", {"code": "5030"})
    assert not five_xx.matches("r", {"code": "x503"})
    assert not parse_selector('r{code=~"5|6"}').matches("r", {"code": "56"})
    assert parse_selector('r{msg=~"a.b"}').matches("r", {"msg": "a\nb"})


def test_missing_label_is_the_empty_string() -> None:
    assert parse_selector('r{code!~"5.."}').matches("r", {})
    assert parse_selector('r{code=""}').matches("r", {})
    assert not parse_selector('r{code=""}').matches("r", {"code": "200"})
    assert not parse_selector('r{code="200"}').matches("r", {})
    assert parse_selector('r{code!="200"}').matches("r", {})


def test_escapes_and_quotes() -> None:
    sel = parse_selector(r"""r{a="q\"t\\n\n",b='it\'s',c=`raw\d`}""")
    assert [m.value for m in sel.matchers] == ['q"t\\n\n', "it's", r"raw\d"]


def test_and_equal_narrows() -> None:
    sel = parse_selector("r").and_equal("service", "checkout")
    assert sel.matches("r", {"service": "checkout"})
    assert not sel.matches("r", {"service": "cart"})
    assert str(sel) == 'r{service="checkout"}'


def test_parse_is_cached() -> None:
    assert parse_selector('r{a=~"b+"}') is parse_selector('r{a=~"b+"}')


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ('r{code="5"', 11, "expected ',' or '}'"),
        ('r{code~"5"}', 7, "expected '=', '!=', '=~' or '!~'"),
        ('r{5="x"}', 3, "expected a label name"),
        ("r{code=5}", 8, "quoted label value"),
        ('r{code="5}', 8, "unterminated"),
        ('r{code=~"("}', 9, "bad regex for 'code'"),
        (r'r{code="\q"}', 9, "unknown escape"),
        ("r s", 3, "unexpected 's'"),
        ("{}", 1, "rejects ''"),
        ('{code=~".*"}', 1, "rejects ''"),
        ('r{__name__="s"}', 1, "also given as __name__"),
        ("", 1, "empty selector"),
        ("9r", 1, "expected a metric name"),
    ],
)
def test_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_selector(text)
    assert info.value.column == column
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"invalid selector at column {column}:")


_label = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda s: s != "__name__"
)
_matcher = st.builds(
    Matcher,
    label=_label,
    op=st.sampled_from(["=", "!="]),
    value=st.text(max_size=12),
) | st.builds(
    Matcher,
    label=_label,
    op=st.sampled_from(["=~", "!~"]),
    value=st.sampled_from(["a.*", "5..", "x|y"]),
)


@given(
    name=st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,10}", fullmatch=True),
    matchers=st.lists(_matcher, max_size=4),
)
def test_text_form_round_trips(name: str, matchers: list[Matcher]) -> None:
    sel = Selector(name, tuple(matchers))
    assert parse_selector(str(sel)) == sel


@given(labels=st.dictionaries(st.sampled_from(["a", "b", "code"]), st.text(max_size=4)))
def test_negation_is_complement(labels: dict[str, str]) -> None:
    for op, neg in (("=", "!="), ("=~", "!~")):
        pos = Selector("r", (Matcher("code", op, "5.."),))  # type: ignore[arg-type]
        opp = Selector("r", (Matcher("code", neg, "5.."),))  # type: ignore[arg-type]
        assert pos.matches("r", labels) != opp.matches("r", labels)
