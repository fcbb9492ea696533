"""The agent's on-disk log spool: every instance's lines, in a few rotated files.

Owns one directory (the agent's STATE_DIR/NAME/logs): numbered files
`000001.log`, `000002.log`, ... of which the highest is written to and at most
`files` are kept (the oldest is deleted when a new one starts), an index per
full file (`000001.idx`: which instances' lines it holds), the writer thread
that appends to the current file, and the in-memory index of every file.

Lines come in on the event loop through `write`, which never blocks and never
touches the disk: it appends to a batch that the writer thread takes as a
whole. The lines handed over but not yet written are bounded (in bytes); a
line that finds no room is not written but counted per instance, and the spool
records a notice of the gap (seq 0, "N lines not written to disk") as soon as
there is room, so history read back from disk says where it is incomplete.
Reading (`read`) runs in a worker thread and goes backwards from the newest
file, through the files that hold the instances asked for, until it has what
was asked. Memory is bounded: the backlog by bytes, the index by files times
instances, a read by the lines it asks for.

On open the spool rebuilds its index (from the `.idx` files, or by scanning a
file that has none, such as the one an earlier agent was writing when it
died), so that an instance's sequence numbers and run count go on where they
stopped, even across agent restarts.

It never decides what is kept in memory or what a reader sees; the log hub and
the Agent API do.

    spool = Spool(state_dir / "logs", file_bytes=64 << 20, files=4)
    await spool.open()
    spool.write(line)                         # on the loop; never blocks
    found = await spool.read([Query("shop", "web.3", below=5000, count=1000)])
    await spool.close()                       # writes what is pending, then stops
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from itertools import groupby
from operator import itemgetter
from pathlib import Path

from paas.agent.config import AgentConfig
from paas.agent.logline import LogLine
from paas.common.logformat import PAAS_STREAM

log = logging.getLogger(__name__)

FILE_BYTES = 64 << 20
FILES = 4
BACKLOG_BYTES = 16 << 20
# What a queued line costs in memory beyond its text: the record (a 9-field tuple
# with its GC header, 128 bytes), its float and int (52), the text's str header (49)
# and its slot in the batch (8), rounded up. Counting less lets a flood of short
# lines (`yes`) hold several times the backlog's bytes in memory.
LINE_OVERHEAD = 256
READ_BLOCK = 1 << 20
_SUFFIX = ".log"
_INDEX_SUFFIX = ".idx"
# Record flags: the line is continued; the text is JSON (it held a newline).
_CONTINUED = 1
_JSON_TEXT = 2

Key = tuple[str, str]  # (app, instance)
_KEY = itemgetter(1, 2)  # a LogLine's (app, instance)


class SpoolError(RuntimeError):
    """The spool cannot be opened; the message names the directory and the reason."""


class Verdict(Enum):
    """What a reader going backwards makes of one line."""

    KEEP = "keep"  # wanted
    SKIP = "skip"  # not wanted; older lines may be
    STOP = "stop"  # not wanted, nor is anything older: the reader has all it needs


def _keep_all(_line: LogLine) -> Verdict:
    return Verdict.KEEP


@dataclass(frozen=True)
class Query:
    """The last `count` lines of one instance with 0 < seq < `below` (0: no bound) that
    `verdict` keeps, read newest first; notices of loss (seq 0) in that range count too."""

    app: str
    instance: str
    below: int = 0
    count: int = 100
    verdict: Callable[[LogLine], Verdict] = _keep_all


@dataclass(frozen=True)
class Found:
    """What a Query found, oldest first; `complete` unless the spool ran out of lines
    before it had `count` of them or a STOP (older lines are gone, if there were any)."""

    lines: list[LogLine]
    complete: bool


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
        seqs = [line.seq for line in lines if line.seq]
        if seqs:
            if not self.first_seq:
                self.first_seq = seqs[0]
            self.last_seq = max(self.last_seq, max(seqs))
        self.last_run = max(self.last_run, max(line.run for line in lines))
        self.lines += len(lines)

    def merge(self, other: Span) -> None:
        if other.first_seq and (not self.first_seq or other.first_seq < self.first_seq):
            self.first_seq = other.first_seq
        self.last_seq = max(self.last_seq, other.last_seq)
        self.last_run = max(self.last_run, other.last_run)
        self.lines += other.lines


@dataclass
class _File:
    number: int
    spans: dict[Key, Span] = field(default_factory=dict)
    size: int = 0

    @property
    def name(self) -> str:
        return f"{self.number:06d}{_SUFFIX}"


# ------------------------------------------------------------------ records


def encode(line: LogLine) -> str:
    """One record: tab-separated fields, the text last; a text holding a newline as JSON.

    The timestamp is written in full (repr): lines read back must sort where the
    buffer's copies of them do, and lines read together share one timestamp.
    """
    text = line.text
    flags = _CONTINUED if line.continued else 0
    if "\n" in text:
        text = json.dumps(text)
        flags |= _JSON_TEXT
    return (
        f"{line.app}\t{line.instance}\t{line.timestamp!r}\t{line.stream}\t"
        f"{line.seq}\t{line.run}\t{flags}\t{text}\n"
    )


def decode(record: bytes, node: str) -> LogLine | None:
    """The line of one record (without its newline); None if it is not one (a torn write)."""
    fields = record.split(b"\t", 7)
    if len(fields) != 8:
        return None
    app, instance, stamp, stream, seq, run, flags, text = fields
    try:
        bits = int(flags)
        decoded = text.decode("utf-8", "replace")
        if bits & _JSON_TEXT:
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
            bool(bits & _CONTINUED),
        )
    except ValueError:
        return None


def _header(record: bytes) -> tuple[Key, int, int] | None:
    """(app, instance), seq and run of a record, without decoding its text."""
    fields = record.split(b"\t", 6)
    if len(fields) != 7:
        return None
    try:
        key = (fields[0].decode("utf-8", "replace"), fields[1].decode("utf-8", "replace"))
        return key, int(fields[4]), int(fields[5])
    except ValueError:
        return None


def _records_backwards(path: Path, end: int) -> Iterator[bytes]:
    """The complete records of the first `end` bytes of `path`, newest first."""
    with path.open("rb") as file:
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


# ------------------------------------------------------------------ the spool


def for_agent(config: AgentConfig) -> Spool | None:
    """The spool of the agent `config` describes (None if it keeps none: log_spool_files 0)."""
    if not config.log_spool_files:
        return None
    return Spool(
        config.state_dir / config.name / "logs",
        config.name,
        file_bytes=config.log_spool_file_bytes,
        files=config.log_spool_files,
        backlog_bytes=config.log_spool_backlog_bytes,
    )


class Spool:
    """Rotated files of every line of this node's instances, written by a thread."""

    def __init__(
        self,
        directory: Path,
        node: str = "",
        file_bytes: int = FILE_BYTES,
        files: int = FILES,
        backlog_bytes: int = BACKLOG_BYTES,
    ) -> None:
        if file_bytes < 1 or files < 1 or backlog_bytes < 1:
            raise ValueError(
                f"spool sizes must be positive (file_bytes={file_bytes}, files={files}, "
                f"backlog_bytes={backlog_bytes})"
            )
        self.directory = directory
        self.node = node
        self.file_bytes = file_bytes
        self.files = files
        self.backlog_bytes = backlog_bytes
        self.dropped_total = 0  # lines never written for lack of room in the backlog
        self.unwritten = 0  # lines whose write failed (disk full, I/O error)
        # Loop side: the batch being gathered, lost lines per instance not yet noted.
        self._batch: list[LogLine] = []
        # Per instance: how many lines were lost, and the time and run of the first.
        self._lost: dict[Key, tuple[int, float, int]] = {}
        self._queued = 0  # bytes handed over, ever (only the loop writes it)
        self._written = 0  # bytes written, ever (only the writer thread writes it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: queue.SimpleQueue[list[LogLine] | concurrent.futures.Future[None] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        # Shared with the writer thread and readers: the index of every file.
        self._lock = threading.Lock()
        self._index: dict[int, _File] = {}
        self._current: _File | None = None
        self._fd = -1
        self._failed = ""  # why the last write failed (a disk error); "" if it did not

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Rebuild the index from the files on disk and start the writer thread."""
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._recover)
        except OSError as exc:
            raise SpoolError(f"cannot open the log spool in {self.directory}: {exc}") from None
        self._thread = threading.Thread(target=self._run, name="log spool writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Write what is pending, then stop the writer thread."""
        if self._thread is None:
            return
        self._hand_over()
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # ------------------------------------------------------------ the loop side

    def write(self, line: LogLine) -> None:
        """Queue `line` for the disk; never blocks. Without room it is counted, not written."""
        cost = len(line.text) + LINE_OVERHEAD
        if self._queued - self._written + cost > self.backlog_bytes or self._thread is None:
            key = (line.app, line.instance)
            count, stamp, run = self._lost.get(key, (0, line.timestamp, line.run))
            self._lost[key] = (count + 1, stamp, run)
            self.dropped_total += 1
            return
        self._enqueue([line], cost)

    def write_many(self, lines: list[LogLine]) -> None:
        """`write` each of `lines` (one instance's, in order), with the checks done once
        for all that fit in the backlog."""
        cost = sum(len(line.text) for line in lines) + LINE_OVERHEAD * len(lines)
        if self._queued - self._written + cost > self.backlog_bytes or self._thread is None:
            for line in lines:
                self.write(line)
            return
        self._enqueue(lines, cost)

    def _enqueue(self, lines: list[LogLine], cost: int) -> None:
        """Add `lines` (they fit in the backlog) to the batch the writer gets next."""
        if not self._batch:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        if self._lost:
            self._note_losses()  # before these lines, where the gap is
        self._queued += cost
        self._batch += lines

    def _hand_over(self) -> None:
        if self._lost and self._thread is not None:
            self._note_losses()
        if self._batch:
            batch, self._batch = self._batch, []
            self._inbox.put(batch)

    def _note_losses(self) -> None:
        """Each instance that lost lines gets a notice in the spool, where the gap is."""
        for key, (count, stamp, run) in list(self._lost.items()):
            notice = LogLine(
                stamp,
                key[0],
                key[1],
                PAAS_STREAM,
                self.node,
                0,
                f"{count} lines not written to disk (the disk writer fell behind)",
                run,
            )
            cost = len(notice.text) + LINE_OVERHEAD
            if self._queued - self._written + cost > self.backlog_bytes:
                return
            del self._lost[key]
            self._queued += cost
            self._batch.append(notice)

    async def flush(self) -> None:
        """Return once every line written so far is on disk (or the writer has failed)."""
        if self._thread is None:
            return
        self._hand_over()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._inbox.put(done)
        await asyncio.wrap_future(done)

    # ------------------------------------------------------------ the index

    def last(self, app: str, instance: str) -> tuple[int, int]:
        """The highest seq and run of (app, instance) on disk; (0, 0) if none."""
        span = self.instances(app).get(instance)
        return (span.last_seq, span.last_run) if span else (0, 0)

    def instances(self, app: str) -> dict[str, Span]:
        """Every instance of `app` with lines on disk, each with its span over all files."""
        merged: dict[str, Span] = {}
        with self._lock:
            for spool_file in self._index.values():
                for (owner, instance), span in spool_file.spans.items():
                    if owner == app:
                        merged.setdefault(instance, Span()).merge(span)
        return merged

    @property
    def failure(self) -> str:
        """Why the spool cannot write ("" while it can), with how many lines it missed."""
        failed = self._failed
        if not failed:
            return ""
        return f"the log spool cannot write ({failed}); {self.unwritten} lines are not on disk"

    @property
    def size(self) -> int:
        """Bytes on disk, all files."""
        with self._lock:
            return sum(spool_file.size for spool_file in self._index.values())

    # ------------------------------------------------------------ reading

    async def read(self, queries: list[Query]) -> dict[Key, Found]:
        """What each query finds, read off the loop; lines written so far are included."""
        await self.flush()
        return await asyncio.to_thread(self._read, queries)

    def _read(self, queries: list[Query]) -> dict[Key, Found]:
        wanted = {(q.app.encode(), q.instance.encode()): q for q in queries}
        found: dict[Key, list[LogLine]] = {(q.app, q.instance): [] for q in queries}
        done: dict[Key, bool] = {}
        with self._lock:
            files = [(f.number, dict(f.spans), f.size) for f in self._index.values()]
        files.sort(reverse=True)
        for number, spans, size in files:
            pending = {
                key: query
                for key, query in wanted.items()
                if (query.app, query.instance) not in done
                and (query.app, query.instance) in spans
                and (not query.below or spans[(query.app, query.instance)].first_seq < query.below)
            }
            if not pending:
                continue
            path = self.directory / f"{number:06d}{_SUFFIX}"
            with contextlib.suppress(FileNotFoundError):  # rotated away meanwhile
                self._read_file(path, size, pending, found, done)
        return {key: Found(lines[::-1], done.get(key, False)) for key, lines in found.items()}

    def _read_file(
        self,
        path: Path,
        size: int,
        pending: dict[tuple[bytes, bytes], Query],
        found: dict[Key, list[LogLine]],
        done: dict[Key, bool],
    ) -> None:
        for record in _records_backwards(path, size):
            first = record.find(b"\t")
            second = record.find(b"\t", first + 1)
            query = pending.get((record[:first], record[first + 1 : second]))
            if query is None:
                continue
            line = decode(record, self.node)
            key = (query.app, query.instance)
            if line is None or (line.seq and query.below and line.seq >= query.below):
                continue
            verdict = query.verdict(line)
            if verdict is Verdict.KEEP:
                found[key].append(line)
            if verdict is Verdict.STOP or len(found[key]) >= query.count:
                done[key] = True
                del pending[(record[:first], record[first + 1 : second])]
                if not pending:
                    return

    # ------------------------------------------------------------ the writer thread

    def _recover(self) -> None:
        """Index the files on disk; go on writing the newest (its torn end cut off)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        numbers = sorted(
            int(path.stem) for path in self.directory.glob(f"*{_SUFFIX}") if path.stem.isdigit()
        )
        for number in numbers[: max(0, len(numbers) - self.files)]:
            self._delete(number)
        numbers = numbers[-self.files :]
        for number in numbers[:-1]:
            self._index[number] = self._load_or_scan(number)
        current = self._scan(numbers[-1]) if numbers else _File(1)
        path = self.directory / current.name
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.ftruncate(self._fd, current.size)  # a record torn by a crash is cut off
        self._index[current.number] = current
        self._current = current
        if current.size >= self.file_bytes:
            self._rotate()

    def _load_or_scan(self, number: int) -> _File:
        path = self.directory / f"{number:06d}{_SUFFIX}"
        size = path.stat().st_size
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads((self.directory / f"{number:06d}{_INDEX_SUFFIX}").read_text())
            if saved["size"] == size:
                spans = {
                    (str(app), str(instance)): Span(**span)
                    for app, instance, span in saved["spans"]
                }
                return _File(number, spans, size)
        scanned = self._scan(number)
        self._save_index(scanned)
        return scanned

    def _scan(self, number: int) -> _File:
        """Index a file by reading it; its size is that of its complete records."""
        scanned = _File(number)
        path = self.directory / scanned.name
        with path.open("rb") as file:
            for record in file:
                if not record.endswith(b"\n"):
                    break  # torn by a crash: not part of the spool
                header = _header(record[:-1])
                if header is not None:
                    key, seq, run = header
                    scanned.spans.setdefault(key, Span()).add(seq, run)
                scanned.size += len(record)
        return scanned

    def _save_index(self, spool_file: _File) -> None:
        spans = [[app, name, asdict(span)] for (app, name), span in spool_file.spans.items()]
        path = self.directory / f"{spool_file.number:06d}{_INDEX_SUFFIX}"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"size": spool_file.size, "spans": spans}))
        temporary.replace(path)

    def _delete(self, number: int) -> None:
        for suffix in (_SUFFIX, _INDEX_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{number:06d}{suffix}").unlink()

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            batch: list[LogLine] = []
            barriers: list[concurrent.futures.Future[None]] = []
            stop = False
            # Take everything waiting: one write for many batches.
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, list):
                    batch += item
                else:
                    barriers.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._append(batch)
            for barrier in barriers:
                barrier.set_result(None)
            if stop:
                break
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, batch: list[LogLine]) -> None:
        cost = sum(len(line.text) for line in batch) + LINE_OVERHEAD * len(batch)
        try:
            self._write(batch)
            if self._failed:
                log.warning("the log spool in %s writes again", self.directory)
                self._failed = ""
        except OSError as exc:
            self.unwritten += len(batch)
            if not self._failed:
                log.error("the log spool in %s cannot write: %s", self.directory, exc)
            self._failed = str(exc)
            self._cut_torn_end()
        finally:
            self._written += cost

    def _cut_torn_end(self) -> None:
        """After a failed write, the file ends where its last complete record does."""
        current = self._current
        if current is not None and self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, current.size)

    def _write(self, batch: list[LogLine]) -> None:
        current = self._current
        assert current is not None
        data = "".join(map(encode, batch)).encode("utf-8", "replace")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        with self._lock:
            spans = current.spans
            # Lines come in runs of one instance's: one span update per run of lines.
            for key, group in groupby(batch, key=_KEY):
                span = spans.get(key)
                if span is None:
                    span = spans[key] = Span()
                span.add_all(list(group))
            current.size += len(data)
        if current.size >= self.file_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """The current file is full: index it, start the next, delete the oldest beyond `files`."""
        current = self._current
        assert current is not None
        self._save_index(current)
        following = _File(current.number + 1)
        fd = os.open(
            self.directory / following.name,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
            0o644,
        )
        os.close(self._fd)
        self._fd = fd
        with self._lock:
            self._index[following.number] = following
            self._current = following
            doomed = sorted(self._index)[: max(0, len(self._index) - self.files)]
            for number in doomed:
                del self._index[number]
        for number in doomed:
            self._delete(number)
