"""One line of one instance (LogLine), and lines read together (LineRun): the records
the log buffers, the spool and the Agent API share.

A NamedTuple, not a frozen dataclass: every line of output makes one, and this is
the cheapest immutable record Python has (a frozen dataclass costs 4x as much).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from itertools import count, groupby, repeat
from operator import itemgetter
from typing import NamedTuple


class LogLine(NamedTuple):
    """One line of one instance, as the Agent API's LogLine carries it."""

    timestamp: float  # unix seconds
    app: str
    instance: str  # "web.3"
    stream: str  # "stdout", "stderr" or "paas"
    node: str
    seq: int  # per instance, increasing from 1; 0 for notices about loss
    text: str
    run: int = 0  # which run (process start) of the instance wrote it, from 1
    continued: bool = False  # a piece of an over-long line; the next piece follows
    # The app's id (Assignment.app_id): a re-created app of the same name has another.
    # "" when the scheduler gave none, and in notices made for a reader.
    app_id: str = ""


# Fields by position, for steps over many lines made in C (map, groupby, filter).
SEQ = itemgetter(5)
TEXT = itemgetter(6)
RUN = itemgetter(7)


_new_line = partial(tuple.__new__, LogLine)


class LineRun(NamedTuple):
    """Lines of one instance read together, as the agent keeps and sends them: every
    field shared but seq (first_seq, first_seq + 1, ... along `texts`), text and
    continued (`continued`: the indexes of pieces of an over-long line). A notice
    (first_seq 0) is a run of one. A line a LogLine costs more than all the rest of
    the way from the pipe to the wire: the live path never makes one.
    """

    timestamp: float
    app: str
    instance: str
    stream: str
    node: str
    first_seq: int
    texts: list[str]
    run: int = 0
    continued: tuple[int, ...] = ()
    app_id: str = ""
    chars: int = -1  # the characters of all its texts, if its maker counted them

    def text_size(self) -> int:
        """The characters of all its texts."""
        return self.chars if self.chars >= 0 else sum(map(len, self.texts))

    @property
    def last_seq(self) -> int:
        """The seq of its last line (0 for a notice)."""
        return self.first_seq + len(self.texts) - 1 if self.first_seq else 0

    def lines(self) -> list[LogLine]:
        """Its lines, as LogLines (made in C)."""
        texts = self.texts
        seqs = count(self.first_seq) if self.first_seq else repeat(0)
        continued = self.continued
        flags = map(set(continued).__contains__, range(len(texts))) if continued else repeat(False)
        fields = zip(
            repeat(self.timestamp),
            repeat(self.app),
            repeat(self.instance),
            repeat(self.stream),
            repeat(self.node),
            seqs,
            texts,
            repeat(self.run),
            flags,
            repeat(self.app_id),
        )
        return list(map(_new_line, fields))

    def part(self, start: int, stop: int | None = None) -> LineRun:
        """Its lines from `start` up to `stop` (as a slice), as a run."""
        texts = self.texts[start:stop]
        end = start + len(texts)
        return self._replace(
            first_seq=self.first_seq + start if self.first_seq else 0,
            texts=texts,
            continued=tuple(i - start for i in self.continued if start <= i < end),
            chars=-1,
        )

    @classmethod
    def of(cls, line: LogLine) -> LineRun:
        """A run of `line` alone."""
        return cls(
            line.timestamp,
            line.app,
            line.instance,
            line.stream,
            line.node,
            line.seq,
            [line.text],
            line.run,
            (0,) if line.continued else (),
            line.app_id,
            len(line.text),
        )


# A LogLine's fields a LineRun has once (timestamp, app, instance, stream, node, run, app id).
_SHARED = itemgetter(0, 1, 2, 3, 4, 7, 9)
_CONTINUED = itemgetter(8)


def line_runs(lines: Sequence[LogLine]) -> list[LineRun]:
    """`lines` as runs: each stretch that shares every field but seq, text and continued,
    with seqs one after another (a notice alone). Grouped in C (groupby); a step a
    stretch, not a line, where its seqs follow each other."""
    runs: list[LineRun] = []
    for shared, group in groupby(lines, key=_SHARED):
        stretch = list(group)
        seqs = list(map(SEQ, stretch))
        first = seqs[0]
        whole = first and seqs[-1] - first == len(seqs) - 1 and 0 not in seqs
        stamp, app, instance, stream, node, run, app_id = shared
        for part in [stretch] if whole else _consecutive(stretch):
            continued = (
                tuple(i for i, line in enumerate(part) if line.continued)
                if any(map(_CONTINUED, part))
                else ()
            )
            runs.append(
                LineRun(
                    stamp,
                    app,
                    instance,
                    stream,
                    node,
                    part[0].seq,
                    list(map(TEXT, part)),
                    run,
                    continued,
                    app_id,
                )
            )
    return runs


def _consecutive(lines: list[LogLine]) -> list[list[LogLine]]:
    """`lines` cut where a seq does not follow the one before; a notice (seq 0) alone."""
    parts: list[list[LogLine]] = []
    before = 0
    for line in lines:
        if before and line.seq == before + 1:
            parts[-1].append(line)
        else:
            parts.append([line])
        before = line.seq
    return parts


_TEXTS = itemgetter(6)


def size(runs: Iterable[LineRun]) -> int:
    """How many lines `runs` hold."""
    return sum(map(len, map(_TEXTS, runs)))
