"""How log lines are grouped into LogBatch messages on the agent's and the scheduler's streams.

One gRPC message per line caps a Python stream at about 20 000 lines a second;
a batch carries as many lines as are ready, up to a count and a size, so that
no message comes near gRPC's size limit (a line is at most 10 KiB).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate
from operator import attrgetter
from typing import Protocol, TypeVar

# The most lines, and about the most bytes of text, in one batch.
BATCH_LINES = 1024
BATCH_BYTES = 1 << 20
_TEXT = attrgetter("text")


class _HasText(Protocol):
    @property
    def text(self) -> str: ...


LineT = TypeVar("LineT", bound=_HasText)


def batches(
    lines: Sequence[LineT], max_lines: int = BATCH_LINES, max_bytes: int = BATCH_BYTES
) -> Iterator[Sequence[LineT]]:
    """`lines` in order, cut into runs of at most `max_lines` lines and about
    `max_bytes` of text (a run has at least one line, however long)."""
    if not lines:
        return
    if len(lines) <= max_lines and sum(map(len, map(_TEXT, lines))) <= max_bytes:
        yield lines  # within both bounds, the common case
        return
    # The text's size up to and including each line, summed in C.
    ends = list(accumulate(map(len, map(_TEXT, lines))))
    start, before = 0, 0
    while start < len(lines):
        end = min(len(lines), start + max_lines)
        # The first line that takes the run past max_bytes ends it (not the run's first).
        over = bisect_right(ends, before + max_bytes, start, end)
        if over < end:
            end = max(over, start + 1)
        yield lines[start:end]
        before = ends[end - 1]
        start = end
