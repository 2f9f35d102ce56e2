"""Sequence numbers on internal records: a restored producer's replay is applied once."""

from __future__ import annotations

import pytest

from pipeline.envelope import SEQUENCE_HEADER, first_time, header, sequence_header, sequence_of


@pytest.mark.parametrize("as_mapping", [False, True])
def test_a_sequence_header_reads_back_from_either_form_faust_gives(as_mapping: bool) -> None:
    pairs = [("other", b"x"), *sequence_header("detect/3", 17)]
    headers = dict(pairs) if as_mapping else pairs
    assert sequence_of(headers) == ("detect/3", 17)
    assert header(headers, "other") == b"x"


@pytest.mark.parametrize("headers", [None, [], [("other", b"x")], {SEQUENCE_HEADER: None}])
def test_records_without_a_number_have_no_sequence(headers: object) -> None:
    assert sequence_of(headers) is None


@pytest.mark.parametrize("value", [b"17", b"detect/3/", b"detect/3/x", b"/5"])
def test_a_malformed_number_is_an_error_not_a_silent_pass(value: bytes) -> None:
    with pytest.raises(ValueError, match=SEQUENCE_HEADER):
        sequence_of([(SEQUENCE_HEADER, value)])


def test_a_replay_is_taken_once_per_origin() -> None:
    taken: dict[str, int] = {}
    # detect/0 sends 1..3, is restored from a snapshot after 1 and replays 2..3, then 4;
    # slo/0 interleaves its own numbers.
    arrivals = [("detect/0", 1), ("detect/0", 2), ("slo/0", 1), ("detect/0", 3),
                ("detect/0", 2), ("slo/0", 1), ("detect/0", 3), ("detect/0", 4), ("slo/0", 2)]
    applied = [a for a in arrivals if first_time(taken, *a)]
    assert applied == [("detect/0", 1), ("detect/0", 2), ("slo/0", 1), ("detect/0", 3),
                       ("detect/0", 4), ("slo/0", 2)]
    assert taken == {"detect/0": 4, "slo/0": 2}
