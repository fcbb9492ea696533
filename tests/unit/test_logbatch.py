from __future__ import annotations

from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from paas.common.logbatch import batches


class Line(NamedTuple):
    text: str


# Lines, max_lines and max_bytes, for the property tests.
_cases = given(
    st.lists(st.text(max_size=50).map(Line), max_size=300),
    st.integers(1, 40),
    st.integers(1, 200),
)


def test_short_lines_are_cut_by_count() -> None:
    lines = [Line("x")] * 2500
    assert [len(b) for b in batches(lines, max_lines=1024)] == [1024, 1024, 452]


def test_long_lines_are_cut_by_size_and_one_huge_line_still_goes_alone() -> None:
    lines = [Line("a" * 600), Line("b" * 600), Line("c" * 5000), Line("d")]
    assert [[x.text[0] for x in b] for b in batches(lines, max_bytes=1000)] == [
        ["a"],
        ["b"],
        ["c"],
        ["d"],
    ]


def test_nothing_in_nothing_out() -> None:
    assert list(batches([])) == []


@_cases
def test_batches_keep_every_line_in_order_within_bounds(
    lines: list[Line], max_lines: int, max_bytes: int
) -> None:
    cut = list(batches(lines, max_lines, max_bytes))
    assert [x for b in cut for x in b] == lines
    for b in cut:
        assert 1 <= len(b) <= max_lines
        assert len(b) == 1 or sum(len(x.text) for x in b) <= max_bytes


def reference(lines: list[Line], max_lines: int, max_bytes: int) -> list[list[Line]]:
    """The plain way: add lines to the run until one takes it past either bound."""
    cut: list[list[Line]] = []
    run: list[Line] = []
    size = 0
    for line in lines:
        if run and (len(run) == max_lines or size + len(line.text) > max_bytes):
            cut.append(run)
            run, size = [], 0
        run.append(line)
        size += len(line.text)
    return [*cut, run] if run else cut


@_cases
def test_each_run_is_as_long_as_the_bounds_allow(
    lines: list[Line], max_lines: int, max_bytes: int
) -> None:
    got = [list(b) for b in batches(lines, max_lines, max_bytes)]
    assert got == reference(lines, max_lines, max_bytes)
