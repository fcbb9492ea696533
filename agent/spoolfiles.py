"""What the log spool's files hold, and reading them: the spool's format on disk.

A record is one line: its fields tab-separated, the text last (as JSON if it holds
a newline), the whole ending in a newline:

    APP_ID  APP  INSTANCE  TIMESTAMP  STREAM  SEQ  RUN  FLAGS  TEXT

`FORMAT` names this layout (the spool writes it to its FORMAT file and deletes the
files of any other). A SpoolFile is the index of one file: the span of seqs and
runs of each (app id, app, instance) it holds, and its size in complete records.
Exclusion keeps readers of the files and the writer thread rewriting them apart.

It does no I/O of its own but on the file objects it is handed; the Spool
(spool.py) owns the directory, the writer thread and when each piece runs.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, groupby, repeat
from operator import contains, itemgetter
from typing import BinaryIO

from paas.agent.logline import RUN, SEQ, TEXT, LineRun, LogLine

READ_BLOCK = 1 << 20
SUFFIX = ".log"
INDEX_SUFFIX = ".idx"
REWRITE_SUFFIX = ".rewrite"
# Records: app id, app, instance, timestamp, stream, seq, run, flags, text.
FORMAT = "paas log spool 2"
FORMAT_FILE = "FORMAT"
# Record flags: the line is continued; the text is JSON (it held a newline).
CONTINUED = 1
JSON_TEXT = 2

IdKey = tuple[str, str, str]  # (app id, app, instance): what the index keeps


@dataclass(slots=True)
class Span:
    """One instance's lines in one file (or, merged, in the whole spool)."""

    first_seq: int = 0  # 0 until a line with a seq is seen
    last_seq: int = 0
    last_run: int = 0
    lines: int = 0

    def add(self, seq: int, run: int) -> None:
        if seq:
            if not self.first_seq:
                self.first_seq = seq
            self.last_seq = max(self.last_seq, seq)
        self.last_run = max(self.last_run, run)
        self.lines += 1

    def add_all(self, lines: list[LogLine]) -> None:
        """`add` each of `lines`, in order."""
        seqs = list(filter(None, map(SEQ, lines)))  # in C: this runs for every line
        if seqs:
            if not self.first_seq:
                self.first_seq = seqs[0]
            self.last_seq = max(self.last_seq, max(seqs))
        self.last_run = max(self.last_run, max(map(RUN, lines)))
        self.lines += len(lines)

    def add_run(self, run: LineRun) -> None:
        """`add_all` of the lines of `run`: its first and last seq tell it all."""
        if run.first_seq:
            if not self.first_seq:
                self.first_seq = run.first_seq
            self.last_seq = max(self.last_seq, run.last_seq)
        self.last_run = max(self.last_run, run.run)
        self.lines += len(run.texts)

    def merge(self, other: Span) -> None:
        if other.first_seq and (not self.first_seq or other.first_seq < self.first_seq):
            self.first_seq = other.first_seq
        self.last_seq = max(self.last_seq, other.last_seq)
        self.last_run = max(self.last_run, other.last_run)
        self.lines += other.lines


# Where a reader going forward can start: (seq, byte offset of a record at or before
# the line of that seq) per instance, one every this many seqs at most.
MARK_EVERY = 1024
Mark = tuple[int, int]


@dataclass
class SpoolFile:
    number: int
    spans: dict[IdKey, Span] = field(default_factory=dict)
    size: int = 0
    # Kept in memory by the writer for files it wrote from their start, None for
    # those it found on disk or rewrote: per instance, its first line's mark in the
    # file, then one at least every MARK_EVERY seqs (a forward read starts at one).
    marks: dict[IdKey, list[Mark]] | None = None

    def mark(self, key: IdKey, seq: int, offset: int) -> None:
        """Note that the records from `offset` on hold key's lines from `seq` on."""
        if self.marks is None or not seq:
            return
        kept = self.marks.get(key)
        if kept is None:
            self.marks[key] = [(seq, offset)]
        elif seq - kept[-1][0] >= MARK_EVERY:
            kept.append((seq, offset))

    @property
    def name(self) -> str:
        return f"{self.number:06d}{SUFFIX}"

    def add(self, record: bytes) -> None:
        """Count one record (with its newline) into the spans and the size."""
        found = header(record[:-1])
        if found is not None:
            key, seq, run = found
            self.spans.setdefault(key, Span()).add(seq, run)
        self.size += len(record)


# ------------------------------------------------------------------ records


def encode(line: LogLine) -> str:
    """One record: tab-separated fields, the text last; a text holding a newline as JSON.

    The timestamp is written in full (repr): lines read back must sort where the
    buffer's copies of them do, and lines read together share one timestamp.
    """
    text = line.text
    flags = CONTINUED if line.continued else 0
    if "\n" in text:
        text = json.dumps(text)
        flags |= JSON_TEXT
    return (
        f"{line.app_id}\t{line.app}\t{line.instance}\t{line.timestamp!r}\t{line.stream}\t"
        f"{line.seq}\t{line.run}\t{flags}\t{text}\n"
    )


# What the lines of one run of records share: all their fields but seq and text.
_SHARED = itemgetter(9, 1, 2, 0, 3, 7, 8)  # app id, app, instance, time, stream, run, continued


def encode_all(lines: Sequence[LogLine]) -> str:
    """`encode` of each line, joined: the same records, made a run at a time.

    Lines read together share every field but seq and text, so a run's records are
    its shared prefix and middle interleaved with each line's seq and text, all in
    C (itertools and str.join): half the cost of formatting each record alone, and
    the spool's writer thread is a third of the agent's CPU when a process floods.
    """
    parts: list[str] = []
    for shared, group in groupby(lines, key=_SHARED):
        run = list(group)
        texts = list(map(TEXT, run))
        if any(map(contains, texts, repeat("\n"))):
            parts += map(encode, run)  # a text that is JSON: each record alone
            continue
        app_id, app, instance, timestamp, stream, log_run, continued = shared
        head = f"{app_id}\t{app}\t{instance}\t{timestamp!r}\t{stream}\t"
        middle = f"\t{log_run}\t{CONTINUED if continued else 0}\t"
        seqs = map(str, map(SEQ, run))
        fields = zip(repeat(head), seqs, repeat(middle), texts, repeat("\n"))
        parts.append("".join(chain.from_iterable(fields)))
    return "".join(parts)


def encode_run(run: LineRun) -> str:
    """`encode_all` of the lines of `run`, with no step a line but in C: a prefix and
    a middle shared by all, each line's seq and text between them."""
    texts = run.texts
    if run.continued or not run.first_seq or any(map(contains, texts, repeat("\n"))):
        return encode_all(run.lines())  # a piece, a notice, a text that is JSON
    head = f"{run.app_id}\t{run.app}\t{run.instance}\t{run.timestamp!r}\t{run.stream}\t"
    middle = f"\t{run.run}\t0\t"
    seqs = map(str, range(run.first_seq, run.first_seq + len(texts)))
    return "".join(map("".join, zip(repeat(head), seqs, repeat(middle), texts, repeat("\n"))))


def decode(record: bytes, node: str) -> LogLine | None:
    """The line of one record (without its newline); None if it is not one (a torn write)."""
    fields = record.split(b"\t", 8)
    if len(fields) != 9:
        return None
    app_id, app, instance, stamp, stream, seq, run, flags, text = fields
    try:
        bits = int(flags)
        decoded = text.decode("utf-8", "replace")
        if bits & JSON_TEXT:
            decoded = str(json.loads(decoded))
        return LogLine(
            float(stamp),
            app.decode("utf-8", "replace"),
            instance.decode("utf-8", "replace"),
            stream.decode("utf-8", "replace"),
            node,
            int(seq),
            decoded,
            int(run),
            bool(bits & CONTINUED),
            app_id.decode("utf-8", "replace"),
        )
    except ValueError:
        return None


def header(record: bytes) -> tuple[IdKey, int, int] | None:
    """(app id, app, instance), seq and run of a record, without decoding its text."""
    fields = record.split(b"\t", 7)
    if len(fields) != 8:
        return None
    try:
        app_id, app, instance = (field.decode("utf-8", "replace") for field in fields[:3])
        return (app_id, app, instance), int(fields[5]), int(fields[6])
    except ValueError:
        return None


def records_backwards(file: BinaryIO, end: int) -> Iterator[bytes]:
    """The complete records of the first `end` bytes of `file`, newest first."""
    position = end
    tail = b""
    while position > 0:
        step = min(READ_BLOCK, position)
        position -= step
        file.seek(position)
        block = file.read(step) + tail
        records = block.split(b"\n")
        tail = records[0]  # may be the end of a record that starts in the block before
        for record in reversed(records[1:]):
            if record:
                yield record
    if tail:
        yield tail


def records_from(file: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The complete records (without their newlines) of `file` from byte `start` (where
    one begins) to byte `end`, oldest first."""
    file.seek(start)
    position, tail = start, b""
    while position < end:
        block = file.read(min(READ_BLOCK, end - position))
        if not block:
            return
        position += len(block)
        found = (tail + block).split(b"\n")
        tail = found.pop()  # the start of a record that ends in the next block
        yield from found
    # What is left after the last newline before `end` is no complete record.


def records(file: BinaryIO, end: int) -> Iterator[bytes]:
    """The complete records (each with its newline) of the first `end` bytes of `file`."""
    position = 0
    for record in file:
        position += len(record)
        if position > end or not record.endswith(b"\n"):
            return  # past what is indexed, or torn by a crash
        yield record


class Exclusion:
    """Many readers of the files at once, or the writer thread rewriting them; a rewrite
    that waits goes before readers that come after it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._rewriting = False
        self._waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._changed:
            while self._rewriting or self._waiting:
                self._changed.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def rewriting(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            while self._rewriting or self._readers:
                self._changed.wait()
            self._waiting -= 1
            self._rewriting = True
        try:
            yield
        finally:
            with self._changed:
                self._rewriting = False
                self._changed.notify_all()
