"""How log lines are grouped into LogBatch messages on the agent's and the scheduler's streams.

One gRPC message per line caps a Python stream at about 20 000 lines a second;
a batch carries as many lines as are ready, up to a count and a size, so that
no message comes near gRPC's size limit (a line is at most 10 KiB).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

# The most lines, and about the most bytes of text, in one batch.
BATCH_LINES = 1024
BATCH_BYTES = 1 << 20


class _HasText(Protocol):
    @property
    def text(self) -> str: ...


LineT = TypeVar("LineT", bound=_HasText)


def batches(
    lines: Sequence[LineT], max_lines: int = BATCH_LINES, max_bytes: int = BATCH_BYTES
) -> Iterator[Sequence[LineT]]:
    """`lines` in order, cut into runs of at most `max_lines` lines and about
    `max_bytes` of text (a run has at least one line, however long)."""
    start = 0
    while start < len(lines):
        end = min(len(lines), start + max_lines)
        size = 0
        for i in range(start, end):
            size += len(lines[i].text)
            if size > max_bytes and i > start:
                end = i
                break
        yield lines[start:end]
        start = end
