"""The agent's on-disk log spool: every instance's lines, in a few rotated files.

Owns one directory (the agent's STATE_DIR/NAME/logs): numbered files
`000001.log`, `000002.log`, ... of which the highest is written to and at most
`files` are kept (the oldest is deleted when a new one starts), an index per
full file (`000001.idx`: which instances' lines it holds, by app id, app and
instance), a `FORMAT` file naming the record format (files of another format
are deleted on open: their lines cannot be told apart by app id), the writer
thread that appends to the current file, and the in-memory index of every file.
The records and the index of one file are spoolfiles.py's.

Every record carries the app's id as well as its name, so a reader can ask for
one app id's lines (an app re-created under the same name has another id), and
`forget(app_ids)` can delete every line of apps that are gone: the writer thread
rewrites each file that holds lines of them without those lines (a file that
holds nothing else is deleted), and from the moment `forget` is called no read
returns them. `clear()` deletes every file (the node joined another cluster).
Readers never see a file while it is rewritten: rewriting waits for the reads
in progress, and reads for the rewrite.

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
    await spool.forget({"3f2a..."})           # every line of a destroyed app, gone
    await spool.close()                       # writes what is pending, then stops
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import queue
import threading
from bisect import bisect_right
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from enum import Enum
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO

from paas.agent.config import AgentConfig
from paas.agent.errors import AgentError
from paas.agent.logline import LineRun, LogLine, size
from paas.agent.spoolfiles import (
    FORMAT,
    FORMAT_FILE,
    INDEX_SUFFIX,
    REWRITE_SUFFIX,
    SUFFIX,
    Exclusion,
    IdKey,
    Span,
    SpoolFile,
    decode,
    encode_run,
    records,
    records_backwards,
    records_from,
)
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
# A run of lines and its records, as the writer thread gets them.
Encoded = tuple[LineRun, bytes]


def _cost(run: LineRun) -> int:
    """What `run` counts against the backlog."""
    return run.text_size() + LINE_OVERHEAD * len(run.texts)


Key = tuple[str, str]  # (app, instance): what a reader asks for


class LogStateError(AgentError):
    """Root of the errors of what the agent keeps of its instances' logs (one line each,
    naming the thing and what to do):

        LogStateError
        ├── SpoolError       the spool cannot be opened, or cannot delete what it must
        └── MembershipError  (membership.py) the cluster id cannot be recorded or read,
                             or a scheduler's welcome names no usable cluster id
    """


class SpoolError(LogStateError):
    """The spool cannot be opened, or could not delete lines it was told to; the message
    names the directory and the reason."""


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
    app_id: str = ""  # only lines of this app id; "" = of any app by that name


@dataclass(frozen=True)
class Found:
    """What a Query found, oldest first; `complete` unless the spool ran out of lines
    before it had `count` of them or a STOP (older lines are gone, if there were any)."""

    lines: list[LogLine]
    complete: bool


@dataclass(frozen=True)
class _Forget:
    """For the writer thread: delete every line of `app_ids` (None: every line there is)."""

    app_ids: frozenset[str] | None
    done: concurrent.futures.Future[None]


def _by_name(spans: dict[IdKey, Span], hidden: frozenset[str]) -> dict[Key, dict[str, Span]]:
    """`spans` by (app, instance), then app id; those of `hidden` app ids left out."""
    named: dict[Key, dict[str, Span]] = {}
    for (app_id, app, instance), span in spans.items():
        if app_id not in hidden:
            named.setdefault((app, instance), {})[app_id] = span
    return named


def _merged(spans: dict[str, Span], app_id: str) -> Span | None:
    """The span of `app_id` in `spans` (by app id), or of all of them if `app_id` is ""."""
    if app_id:
        return spans.get(app_id)
    merged = Span()
    for span in spans.values():
        merged.merge(span)
    return merged


def _seq_at_or_above(record: bytes, after_instance: int, below: int) -> bool:
    """Whether the record's seq (its sixth field; `after_instance` is the tab that
    ends the third) is at or above `below`; a notice (seq 0) never is."""
    after_stamp = record.find(b"\t", after_instance + 1)
    after_stream = record.find(b"\t", after_stamp + 1)
    after_seq = record.find(b"\t", after_stream + 1)
    try:
        return int(record[after_stream + 1 : after_seq]) >= below
    except ValueError:
        return False  # torn: decode says so


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
        # Runs of lines (those read together, or a line alone), as they were written,
        # each with its records: made on the loop, so that the writer thread needs the
        # GIL for little but to hand them to os.write (two threads that both want it
        # for most of their work cost more than the work, bench/logs.py).
        self._batch: list[Encoded] = []
        # Per instance: how many lines were lost, and the time and run of the first.
        self._lost: dict[IdKey, tuple[int, float, int]] = {}
        self._queued = 0  # bytes handed over, ever (only the loop writes it)
        self._written = 0  # bytes written, ever (only the writer thread writes it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: queue.SimpleQueue[
            list[Encoded] | concurrent.futures.Future[None] | _Forget | None
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # App ids being forgotten (or whose lines could not be deleted): never read.
        # Only the loop replaces it; readers take it as it is when they start.
        self._hidden: frozenset[str] = frozenset()
        # Shared with the writer thread and readers: the index of every file.
        self._lock = threading.Lock()
        self._files = Exclusion()  # reads of the files against their rewriting
        self._index: dict[int, SpoolFile] = {}
        self._current: SpoolFile | None = None
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
            key = (line.app_id, line.app, line.instance)
            count, stamp, run = self._lost.get(key, (0, line.timestamp, line.run))
            self._lost[key] = (count + 1, stamp, run)
            self.dropped_total += 1
            return
        self._enqueue(LineRun.of(line), cost)

    def write_run(self, run: LineRun) -> None:
        """`write` each line of `run`, with the checks done once for all if they fit in
        the backlog."""
        cost = _cost(run)
        if self._queued - self._written + cost > self.backlog_bytes or self._thread is None:
            for line in run.lines():
                self.write(line)
            return
        self._enqueue(run, cost)

    def _enqueue(self, run: LineRun, cost: int) -> None:
        """Add `run` (it fits in the backlog) to the batch the writer gets next."""
        if not self._batch:
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        if self._lost:
            self._note_losses()  # before these lines, where the gap is
        self._queued += cost
        self._batch.append((run, encode_run(run).encode("utf-8", "replace")))

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
                key[1],
                key[2],
                PAAS_STREAM,
                self.node,
                0,
                f"{count} lines not written to disk (the disk writer fell behind)",
                run,
                app_id=key[0],
            )
            cost = len(notice.text) + LINE_OVERHEAD
            if self._queued - self._written + cost > self.backlog_bytes:
                return
            del self._lost[key]
            self._queued += cost
            noted = LineRun.of(notice)
            self._batch.append((noted, encode_run(noted).encode("utf-8", "replace")))

    def congested(self) -> bool:
        """Whether more than half the backlog waits for the disk: readers of pipes then
        wait for it (`flush`) rather than have lines dropped when it is full."""
        return self._thread is not None and self._queued - self._written > self.backlog_bytes // 2

    async def flush(self) -> None:
        """Return once every line written so far is on disk (or the writer has failed)."""
        if self._thread is None:
            return
        self._hand_over()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._inbox.put(done)
        await asyncio.wrap_future(done)

    async def forget(self, app_ids: Collection[str]) -> None:
        """Delete every line of these apps from the disk; from now on none is read.

        The lines handed over before are deleted too. Raises SpoolError if some
        could not be deleted (they stay unread: hidden for as long as the agent runs).
        """
        gone = frozenset(app_ids)
        if not gone:
            return
        self._hidden |= gone
        self._lost = {key: lost for key, lost in self._lost.items() if key[0] not in gone}
        await self._command(gone)
        self._hidden -= gone  # off the disk: nothing is left to hide

    async def clear(self) -> None:
        """Delete every line there is, written or handed over; raises SpoolError if the
        files could not all be deleted."""
        self._lost.clear()
        await self._command(None)

    async def _command(self, app_ids: frozenset[str] | None) -> None:
        if self._thread is None:
            raise SpoolError(f"the log spool in {self.directory} is not open")
        self._hand_over()  # what was handed over before goes first, and is deleted
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._inbox.put(_Forget(app_ids, done))
        await asyncio.wrap_future(done)

    # ------------------------------------------------------------ the index

    def last(self, app: str, instance: str, app_id: str = "") -> tuple[int, int]:
        """The highest seq and run of (app, instance) of app id `app_id` on disk (with
        `app_id` "", of the lines that have none); (0, 0) if none."""
        span = None
        with self._lock:
            for spool_file in self._index.values():
                found = spool_file.spans.get((app_id, app, instance))
                if found is not None:
                    span = span or Span()
                    span.merge(found)
        return (span.last_seq, span.last_run) if span else (0, 0)

    def instances(self, app: str, app_id: str = "") -> dict[str, Span]:
        """Every instance of `app` (of app id `app_id`, if given) with lines on disk, each
        with its span over all files (and app ids)."""
        merged: dict[str, Span] = {}
        for (instance, owner_id), span in self.spans(app).items():
            if not app_id or owner_id == app_id:
                merged.setdefault(instance, Span()).merge(span)
        return merged

    def spans(self, app: str) -> dict[tuple[str, str], Span]:
        """The span over all files of each (instance, app id) of `app` on disk."""
        merged: dict[tuple[str, str], Span] = {}
        hidden = self._hidden
        with self._lock:
            for spool_file in self._index.values():
                for (owner_id, owner, instance), span in spool_file.spans.items():
                    if owner == app and owner_id not in hidden:
                        merged.setdefault((instance, owner_id), Span()).merge(span)
        return merged

    def newest_app_ids(self, app: str) -> dict[str, str]:
        """For each instance of `app` on disk, the app id of its newest lines."""
        newest: dict[str, str] = {}
        hidden = self._hidden
        with self._lock:
            files = sorted(self._index.items())
            for _, spool_file in files:  # oldest first; in a file, in order of first line
                for owner_id, owner, instance in spool_file.spans:
                    if owner == app and owner_id not in hidden:
                        newest[instance] = owner_id
        return newest

    def app_ids(self) -> set[str]:
        """The id of every app with lines on disk (not those being forgotten)."""
        with self._lock:
            held = {key[0] for spool_file in self._index.values() for key in spool_file.spans}
        return held - self._hidden

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
        return await asyncio.to_thread(self._read, queries, self._hidden)

    def _read(self, queries: list[Query], hidden: frozenset[str]) -> dict[Key, Found]:
        wanted = {(q.app.encode(), q.instance.encode()): q for q in queries}
        found: dict[Key, list[LogLine]] = {(q.app, q.instance): [] for q in queries}
        done: dict[Key, bool] = {}
        with self._files.reading():
            with self._lock:
                files = [(f.number, dict(f.spans), f.size) for f in self._index.values()]
            files.sort(reverse=True)
            for number, spans, size in files:
                held = _by_name(spans, hidden)
                pending = {}
                for key, query in wanted.items():
                    name = (query.app, query.instance)
                    span = held.get(name, {})
                    if name in done or not span:
                        continue
                    merged = _merged(span, query.app_id)
                    if merged is not None and (not query.below or merged.first_seq < query.below):
                        pending[key] = query
                if not pending:
                    continue
                path = self.directory / f"{number:06d}{SUFFIX}"
                with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
                    # (not found: rotated away meanwhile)
                    self._read_file(file, size, pending, hidden, found, done)
        return {key: Found(lines[::-1], done.get(key, False)) for key, lines in found.items()}

    async def read_forward(
        self, app_id: str, app: str, instance: str, after: int, below: int
    ) -> list[LogLine] | None:
        """The lines of (app id, app, instance) with seq above `after` and below
        `below`, oldest first, read forward from a mark the writer keeps (and the loss
        notices among them); None where no mark can be had (a file found on disk or
        rewritten, an app id hidden or not given): `read` then, which goes backwards
        from the newest line. Lines written so far are included."""
        if not app_id or app_id in self._hidden or below <= after + 1:
            return None
        await self.flush()
        return await asyncio.to_thread(self._read_forward, (app_id, app, instance), after, below)

    def _read_forward(self, key: IdKey, after: int, below: int) -> list[LogLine] | None:
        with self._files.reading():
            with self._lock:
                start: tuple[int, int, int] | None = None  # file, offset, size
                for number in sorted(self._index):
                    spool_file = self._index[number]
                    marks = (spool_file.marks or {}).get(key)
                    if marks and marks[0][0] <= after + 1:
                        at = bisect_right(marks, after + 1, key=itemgetter(0)) - 1
                        start = (number, marks[at][1], spool_file.size)
            if start is None:
                return None
            number, offset, size = start
            prefix = "\t".join(key).encode() + b"\t"
            lines: list[LogLine] = []
            passed = False  # a line above `after` has come: notices from here on count
            # Notices (seq 0) go out only before a line that follows them: the cursor
            # moves to that line, so a notice at the end of a chunk would come again.
            notices: list[LogLine] = []
            path = self.directory / f"{number:06d}{SUFFIX}"
            with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
                for record in records_from(file, offset, size):
                    if not record.startswith(prefix):
                        continue
                    line = decode(record, self.node)
                    if line is None:
                        continue
                    if line.seq >= below:
                        break
                    if not line.seq:
                        if passed:
                            notices.append(line)
                    elif line.seq > after:
                        lines += notices
                        notices = []
                        lines.append(line)
                        passed = True
        return lines or None

    def _read_file(
        self,
        file: BinaryIO,
        size: int,
        pending: dict[tuple[bytes, bytes], Query],
        hidden: frozenset[str],
        found: dict[Key, list[LogLine]],
        done: dict[Key, bool],
    ) -> None:
        only = {key: query.app_id.encode() for key, query in pending.items() if query.app_id}
        unread = {app_id.encode() for app_id in hidden}
        for record in records_backwards(file, size):
            first = record.find(b"\t")
            second = record.find(b"\t", first + 1)
            third = record.find(b"\t", second + 1)
            name = (record[first + 1 : second], record[second + 1 : third])
            query = pending.get(name)
            if query is None:
                continue
            app_id = record[:first]
            if (name in only and app_id != only[name]) or app_id in unread:
                continue
            if query.below and _seq_at_or_above(record, third, query.below):
                continue  # newer than asked for: not worth decoding
            line = decode(record, self.node)
            key = (query.app, query.instance)
            if line is None or (line.seq and query.below and line.seq >= query.below):
                continue
            verdict = query.verdict(line)
            if verdict is Verdict.KEEP:
                found[key].append(line)
            if verdict is Verdict.STOP or len(found[key]) >= query.count:
                done[key] = True
                del pending[name]
                if not pending:
                    return

    # ------------------------------------------------------------ the writer thread

    def _recover(self) -> None:
        """Index the files on disk; go on writing the newest (its torn end cut off)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(f"*{REWRITE_SUFFIX}"):
            leftover.unlink()  # a rewrite cut short: the file it would replace is whole
        numbers = self._numbers()
        marker = self.directory / FORMAT_FILE
        try:
            found = marker.read_text().strip()
        except FileNotFoundError:
            found = ""
        if found != FORMAT:
            if numbers:
                log.warning(
                    "the log spool in %s is of another format (%s, not %s): deleting its %d "
                    "files, whose lines cannot be told apart by app",
                    self.directory,
                    found or "the first",
                    FORMAT,
                    len(numbers),
                )
            for number in numbers:
                self._delete(number)
            numbers = []
            marker.write_text(FORMAT + "\n")
        for number in numbers[: max(0, len(numbers) - self.files)]:
            self._delete(number)
        numbers = numbers[-self.files :]
        for number in numbers[:-1]:
            self._index[number] = self._load_or_scan(number)
        current = self._scan(numbers[-1]) if numbers else SpoolFile(1, marks={})
        path = self.directory / current.name
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.ftruncate(self._fd, current.size)  # a record torn by a crash is cut off
        self._index[current.number] = current
        self._current = current
        if current.size >= self.file_bytes:
            self._rotate()

    def _numbers(self) -> list[int]:
        """The numbers of the spool's files on disk, oldest first."""
        return sorted(
            int(path.stem) for path in self.directory.glob(f"*{SUFFIX}") if path.stem.isdigit()
        )

    def _load_or_scan(self, number: int) -> SpoolFile:
        path = self.directory / f"{number:06d}{SUFFIX}"
        size = path.stat().st_size
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads((self.directory / f"{number:06d}{INDEX_SUFFIX}").read_text())
            if saved["size"] == size:
                spans = {
                    (str(app_id), str(app), str(instance)): Span(**span)
                    for app_id, app, instance, span in saved["spans"]
                }
                return SpoolFile(number, spans, size)
        scanned = self._scan(number)
        self._save_index(scanned)
        return scanned

    def _scan(self, number: int) -> SpoolFile:
        """Index a file by reading it; its size is that of its complete records."""
        scanned = SpoolFile(number)
        path = self.directory / scanned.name
        with path.open("rb") as file:
            for record in records(file, path.stat().st_size):
                scanned.add(record)
        return scanned

    def _save_index(self, spool_file: SpoolFile) -> None:
        spans = [[*key, asdict(span)] for key, span in spool_file.spans.items()]
        path = self.directory / f"{spool_file.number:06d}{INDEX_SUFFIX}"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"size": spool_file.size, "spans": spans}))
        temporary.replace(path)

    def _delete(self, number: int) -> None:
        for suffix in (SUFFIX, INDEX_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{number:06d}{suffix}").unlink()

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            batch: list[Encoded] = []
            barriers: list[concurrent.futures.Future[None]] = []
            stop = False
            # Take everything waiting: one write for many batches.
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, list):
                    batch += item
                elif isinstance(item, _Forget):
                    if batch:  # lines handed over before it are deleted with the rest
                        self._append(batch)
                        batch = []
                    self._forget(item)
                else:
                    barriers.append(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._append(batch)
            for barrier in barriers:
                # A flush whose caller gave up (cancelled) has no one to tell.
                if barrier.set_running_or_notify_cancel():
                    barrier.set_result(None)
            if stop:
                break
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, batch: list[Encoded]) -> None:
        runs = [run for run, _ in batch]
        lines = size(runs)
        cost = sum(map(_cost, runs))
        try:
            self._write(batch)
            if self._failed:
                log.warning("the log spool in %s writes again", self.directory)
                self._failed = ""
        except OSError as exc:
            self.unwritten += lines
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
            try:
                os.ftruncate(self._fd, current.size)
            except OSError:
                # The torn bytes stay, and what is appended lands after them: the
                # offsets of the marks from here on would be wrong.
                with self._lock:
                    current.marks = None

    def _write(self, batch: list[Encoded]) -> None:
        current = self._current
        if current is None or self._fd < 0:  # a failed clear or rewrite left none
            raise OSError(errno.EBADF, "the spool has no file to write to")
        # One encoding, one span update and maybe a mark per run of lines.
        data = b"".join([records for _, records in batch])
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        with self._lock:
            spans = current.spans
            offset = current.size
            for run, records_of_run in batch:
                key = (run.app_id, run.app, run.instance)
                span = spans.get(key)
                if span is None:
                    span = spans[key] = Span()
                span.add_run(run)
                current.mark(key, run.first_seq, offset)
                offset += len(records_of_run)
            current.size += len(data)
        if current.size >= self.file_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """The current file is full: index it, start the next, delete the oldest beyond `files`."""
        current = self._current
        assert current is not None
        self._save_index(current)
        following = SpoolFile(current.number + 1, marks={})
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

    # ------------------------------------------------------------ deleting (the writer thread)

    def _forget(self, order: _Forget) -> None:
        """Carry out one `forget` or `clear`; its future says how it went (unless its
        caller gave up waiting: it is carried out all the same)."""
        told = order.done.set_running_or_notify_cancel()
        try:
            with self._files.rewriting():
                if order.app_ids is None:
                    self._clear()
                else:
                    self._drop_apps(order.app_ids)
                self._sync_directory()
        except OSError as exc:
            log.error("the log spool in %s could not delete lines: %s", self.directory, exc)
            if told:
                order.done.set_exception(
                    SpoolError(f"the log spool in {self.directory} could not delete lines: {exc}")
                )
        except Exception as exc:  # never leave the caller waiting, nor end the writer
            log.exception("the log spool in %s failed deleting lines", self.directory)
            if told:
                order.done.set_exception(exc)
        else:
            if told:
                order.done.set_result(None)

    def _clear(self) -> None:
        """Delete every file; start again with an empty first one."""
        with self._lock:
            doomed = sorted(self._index)
            self._index.clear()
            self._current = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            for number in {*doomed, *self._numbers()}:
                self._delete(number)
        finally:
            self._start(SpoolFile(1, marks={}))

    def _start(self, spool_file: SpoolFile) -> None:
        """Make `spool_file` (empty: truncated if it exists) the one written to."""
        self._fd = os.open(
            self.directory / spool_file.name,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
            0o644,
        )
        with self._lock:
            self._index[spool_file.number] = spool_file
            self._current = spool_file

    def _drop_apps(self, app_ids: frozenset[str]) -> None:
        """Rewrite each file holding lines of `app_ids` without them; delete a full file
        that holds nothing else."""
        with self._lock:
            files = sorted(self._index.values(), key=lambda spool_file: spool_file.number)
        for spool_file in files:
            doomed = [key for key in spool_file.spans if key[0] in app_ids]
            if not doomed:
                continue
            if spool_file is not self._current and len(doomed) == len(spool_file.spans):
                with self._lock:
                    del self._index[spool_file.number]
                self._delete(spool_file.number)
            else:
                self._rewrite(spool_file, app_ids)

    def _rewrite(self, spool_file: SpoolFile, app_ids: frozenset[str]) -> None:
        """Replace the file by a copy without the lines of `app_ids` (the file written to
        included: writing goes on at the end of the copy)."""
        path = self.directory / spool_file.name
        copy = path.with_suffix(REWRITE_SUFFIX)
        doomed = {app_id.encode() for app_id in app_ids}
        kept = SpoolFile(spool_file.number)
        with path.open("rb") as source, copy.open("wb") as target:
            for record in records(source, spool_file.size):
                if record[: record.find(b"\t")] not in doomed:
                    target.write(record)
                    kept.add(record)
            target.flush()
            os.fsync(target.fileno())
        os.replace(copy, path)
        if spool_file is self._current:
            os.close(self._fd)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            with self._lock:
                self._index[kept.number] = kept
                self._current = kept
        else:
            with self._lock:
                self._index[kept.number] = kept
            self._save_index(kept)

    def _sync_directory(self) -> None:
        """Make the deletions and renames in the directory durable."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
