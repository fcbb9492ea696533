"""Instance output: reading it off the pipes, keeping it bounded, fanning it out.

Owns the per-instance ring buffers (LogBuffer), the lines' per-instance
sequence numbers, the set of buffers of this node (LogHub, including those of
recently removed instances) and the live subscribers that follow them. Every
line also goes to the hub's on-disk spool (spool.py), if it has one, which keeps
what the ring buffers no longer hold. Memory is bounded everywhere: a partial
line is at most MAX_LINE bytes, a buffer keeps its last N lines, a
subscriber's queue is bounded. A slow reader never blocks the producer: its
subscription pauses, and the reader catches up from the buffer and the spool
at its own cursor (servicer.py, logcursor.py). Loss is never silent.

It never starts or stops processes and never decides what a line means; the
supervisor feeds it lifecycle lines like any other.

    hub = LogHub(node="node-1", lines=10_000)
    buffer = hub.buffer("shop", "web.1")
    buffer.append("paas", "State changed from starting to up")
    subscription = hub.subscribe(lambda run: run.app == "shop")
    runs = await subscription.get_many(1024)
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, NamedTuple

from paas.agent.logline import LineRun
from paas.agent.logline import LogLine as LogLine  # re-exported: readers import it from here
from paas.common.logformat import PAAS_STREAM

if TYPE_CHECKING:
    from paas.agent.spool import Spool

# A line longer than this (in bytes of UTF-8) is split; the remainder starts a new
# line. Heroku's (logplex's) limit, so a drain sees lines cut where Heroku cuts them.
MAX_LINE = 10_000
_UTF8_MAX = 4  # the most bytes one character takes in UTF-8
READ_CHUNK = 65536
# Buffers of removed instances stay readable; this many of them, this many lines each.
RETIRED_BUFFERS = 100
RETIRED_LINES = 1000
# Sequence and run counters of instances whose buffers were forgotten, so they go on.
FORGOTTEN_COUNTERS = 10_000
# Live lines queued per follower before it pauses and catches up from retention: a
# few tens of ms of a process writing flat out. Catching up costs the agent about
# three times the CPU per line of following live (bench/logs.py: 4,096 paused a
# gRPC follower in about half the runs, and it stayed behind at 0.11 of the floor).
SUBSCRIBER_QUEUE = 16384


def _no_wait() -> None:
    return None


class Piece(NamedTuple):
    """A line, or a piece of an over-long one (`continued`: more of it follows)."""

    text: str
    continued: bool = False


class Split(NamedTuple):
    """What a LineSplitter gives for a chunk: the texts of its lines and pieces, and
    the indexes of those that are pieces followed by more of their line."""

    texts: list[str]
    continued: tuple[int, ...] = ()
    chars: int = -1  # the characters of all the texts, if counted

    def pieces(self) -> list[Piece]:
        continued = set(self.continued)
        return [Piece(text, i in continued) for i, text in enumerate(self.texts)]


class LineSplitter:
    """Bytes in, complete lines out: UTF-8 (errors replaced), at most MAX_LINE bytes each.

    A longer line comes out in pieces, each but the last marked `continued`, cut
    where a character starts (a piece is never more than MAX_LINE bytes of UTF-8,
    and never ends inside a character). The text waiting for its newline is cut
    the same way once it is over MAX_LINE bytes, so it stays bounded.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < _UTF8_MAX:
            raise ValueError(f"max_line must be at least {_UTF8_MAX} bytes, not {max_line}")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._max_line = max_line
        # Text of at most this many characters is at most max_line bytes, whatever it holds.
        self._safe_chars = max_line // _UTF8_MAX

    def feed(self, data: bytes) -> list[Piece]:
        """The lines and pieces `data` completes (with what came before it)."""
        return self.split(data).pieces()

    def flush(self) -> list[Piece]:
        """What is left at end of stream (a last line without a newline)."""
        return self.split_rest().pieces()

    def split(self, data: bytes) -> Split:
        """`feed`, as texts and the indexes of pieces: no object a line."""
        text = self._partial + self._decoder.decode(data)
        *lines, self._partial = text.split("\n")
        if "\r" not in text and self._all_fit(lines, text):
            # The common case, without a Python-level step per line; the lines' text is
            # all that came but the newlines and the partial line.
            out = Split(lines, (), len(text) - len(self._partial) - len(lines))
        else:
            out = _joined([self._cut(line.removesuffix("\r")) for line in lines])
        if len(self._partial) > self._safe_chars:
            *pieces, self._partial = _pieces(self._partial, self._max_line)
            out = _joined([out, Split(pieces, tuple(range(len(pieces))))])
        return out

    def split_rest(self) -> Split:
        """`flush`, as `split` gives it."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return self._cut(rest) if rest else Split([])

    def _all_fit(self, lines: list[str], text: str) -> bool:
        """Whether every one of `lines` (the complete lines of `text`) is short enough."""
        if not lines:
            return True
        longest = len(max(lines, key=len))
        if longest <= self._safe_chars:
            return True
        if text.isascii():  # O(1) in CPython: characters are bytes
            return longest <= self._max_line
        return all(len(line.encode()) <= self._max_line for line in lines)

    def _cut(self, line: str) -> Split:
        if len(line) <= self._safe_chars:
            return Split([line])
        pieces = _pieces(line, self._max_line)
        return Split(pieces, tuple(range(len(pieces) - 1)))


def _joined(splits: list[Split]) -> Split:
    """The texts of `splits` one after another, their pieces' indexes shifted along."""
    texts: list[str] = []
    continued: list[int] = []
    for split in splits:
        continued += (len(texts) + index for index in split.continued)
        texts += split.texts
    return Split(texts, tuple(continued))


def _pieces(text: str, limit: int) -> list[str]:
    """`text` cut into pieces of at most `limit` bytes of UTF-8, each ending where a
    character does; every piece but the last is as long as that allows."""
    data = text.encode()
    if len(data) <= limit:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(data) - start > limit:
        end = start + limit
        while data[end] & 0xC0 == 0x80:  # a continuation byte: inside a character
            end -= 1
        pieces.append(data[start:end].decode())
        start = end
    pieces.append(data[start:].decode())
    return pieces


class LogBuffer:
    """The last `limit` lines of one instance of one app (by id), with its sequence counter.

    Lines are kept as they were read, a LineRun for each read of a pipe (and one for
    each line appended alone): nothing is made a line on the way in. Each run is
    also handed to `publish` (the hub's fan-out). `dropped` counts lines pushed out
    of the ring by newer ones.
    """

    def __init__(
        self,
        app: str,
        instance: str,
        node: str,
        limit: int,
        publish: Callable[[LineRun], None] | None = None,
        *,
        seq: int = 0,
        run: int = 0,
        app_id: str = "",
    ) -> None:
        """`seq` and `run`: where an earlier buffer of the instance stopped (they go on)."""
        self.app = app
        self.app_id = app_id
        self.instance = instance
        self.node = node
        self.dropped = 0
        self.run = run  # the run lines are written by now; 0 before the first start
        self.finished_run = run  # the last run whose process has exited
        self._limit = max(1, limit)
        # Oldest first; the first `_skip` lines of the oldest run are no longer kept.
        self._runs: deque[LineRun] = deque()
        self._skip = 0
        self._kept = 0  # lines kept, those skipped not counted
        self._seq = seq
        self._publish = publish
        # What the pipe's reader waits on before reading more (the hub's: the disk
        # writer's backlog); None: nothing to wait for now.
        self.backpressure: Callable[[], Awaitable[None] | None] = _no_wait

    def __len__(self) -> int:
        return self._kept

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def oldest_seq(self) -> int:
        """The seq of the oldest line kept; with nothing kept, the seq the next line gets."""
        return self._seq + 1 - self._kept

    def begin_run(self) -> int:
        """A new process of the instance starts: lines from now on belong to the next run."""
        self.run += 1
        return self.run

    def end_run(self) -> None:
        """The current run's process has exited (its last lines may still come)."""
        self.finished_run = self.run

    def append(self, stream: str, text: str, continued: bool = False) -> LogLine:
        self._seq += 1
        run = LineRun(
            time.time(),
            self.app,
            self.instance,
            stream,
            self.node,
            self._seq,
            [text],
            self.run,
            (0,) if continued else (),
            self.app_id,
            len(text),
        )
        self._keep(run)
        return run.lines()[0]

    def extend(self, stream: str, split: Split) -> None:
        """`append` each text of `split`, all stamped with the same time (they were read
        together): one run."""
        texts, continued, chars = split
        if not texts:
            return
        first = self._seq + 1
        self._seq += len(texts)
        self._keep(
            LineRun(
                time.time(),
                self.app,
                self.instance,
                stream,
                self.node,
                first,
                texts,
                self.run,
                continued,
                self.app_id,
                chars,
            )
        )

    def _keep(self, run: LineRun) -> None:
        self._runs.append(run)
        self._kept += len(run.texts)
        self._trim(self._limit)
        if self._publish is not None:
            self._publish(run)

    def _trim(self, limit: int) -> None:
        """Keep the last `limit` lines; those pushed out count as dropped."""
        over = self._kept - limit
        if over <= 0:
            return
        self.dropped += over
        self._kept = limit
        runs = self._runs
        while over:
            oldest = len(runs[0].texts) - self._skip
            if oldest > over:
                self._skip += over
                return
            runs.popleft()
            self._skip = 0
            over -= oldest

    def runs(self) -> list[LineRun]:
        """Every kept line, oldest first, as the runs they were read in."""
        runs = list(self._runs)
        if runs and self._skip:
            runs[0] = runs[0].part(self._skip)
        return runs

    def lines(self) -> list[LogLine]:
        """Every kept line, oldest first."""
        return [line for run in self.runs() for line in run.lines()]

    def after(self, seq: int, limit: int) -> list[LogLine]:
        """Up to `limit` kept lines with seq above `seq`, oldest first."""
        return [line for run in self.runs_after(seq, limit) for line in run.lines()]

    def runs_after(self, seq: int, limit: int) -> list[LineRun]:
        """`after`, as runs (the first and the last cut to fit)."""
        if limit <= 0 or seq >= self._seq:
            return []
        # From the newer end: a follower that catches up is mostly near it.
        found: list[LineRun] = []
        for run in reversed(self._runs):
            if run.last_seq <= seq:
                break
            found.append(run)
        found.reverse()
        if not found:
            return []
        start = max(seq + 1, self.oldest_seq) - found[0].first_seq
        if start > 0:
            found[0] = found[0].part(start)
        out: list[LineRun] = []
        left = limit
        for run in found:
            if len(run.texts) >= left:
                out.append(run.part(0, left) if len(run.texts) > left else run)
                break
            out.append(run)
            left -= len(run.texts)
        return out

    def last_output(self, run: int, count: int) -> list[str]:
        """The last `count` stdout/stderr lines of `run` that are still kept."""
        found: list[str] = []
        for kept in reversed(self.runs()):
            if kept.run < run or len(found) >= count:
                break
            if kept.run == run and kept.stream != PAAS_STREAM:
                found += reversed(kept.texts[-(count - len(found)) :])
        return found[::-1]

    def tail(self, count: int) -> list[LogLine]:
        """The last `count` lines; if more were asked for than kept, a notice of the loss first."""
        return self.select(count)

    def select(self, count: int, keep: Callable[[LogLine], bool] | None = None) -> list[LogLine]:
        """The last `count` lines that `keep` accepts (all by default).

        When fewer are found and lines were dropped that might have matched (the
        oldest kept line matches), a notice of the loss comes first.
        """
        if count <= 0:
            return []
        lines: list[LogLine] = []
        runs = self.runs()
        for run in reversed(runs):
            if len(lines) >= count:
                break
            newest_first = run.lines()[::-1]
            lines += newest_first if keep is None else filter(keep, newest_first)
        lines = lines[:count]
        lines.reverse()
        oldest = runs[0].lines()[0] if runs else None
        if (
            len(lines) < count
            and self.dropped
            and oldest is not None
            and (keep is None or keep(oldest))
        ):
            notice = LogLine(
                oldest.timestamp,
                self.app,
                self.instance,
                PAAS_STREAM,
                self.node,
                0,
                f"{self.dropped} earlier lines dropped (the buffer keeps the last {len(self)})",
                oldest.run,
                app_id=self.app_id,
            )
            lines.insert(0, notice)
        return lines

    def retire(self, keep: int) -> None:
        """Shrink to the last `keep` lines and stop publishing: the instance is gone."""
        self._limit = max(1, keep)
        self._trim(keep)
        self._publish = None

    def revive(self, limit: int, publish: Callable[[LineRun], None]) -> None:
        """The instance is back on this node: grow again, publish again, keep counting seq."""
        self._limit = max(1, limit)
        self._trim(self._limit)
        self._publish = publish

    def detach(self) -> None:
        """Its app is gone (destroyed, or of another cluster): publish nothing more.

        The instance may still write to it until it has stopped; no reader sees it.
        """
        self._publish = None


class Subscription:
    """One follower's bounded queue of live lines, and whether it fell behind.

    `offer` never blocks and never drops a line the node still holds: when the
    queue is full the subscription pauses (`behind`), takes no more lines, and
    remembers nothing but that. Its reader, once it has read what is queued,
    catches up from the buffers and the spool from its own cursors (per instance,
    the last seq it has had), then `resume`s. Every line stays in the buffer and
    the spool while it is paused, so the reader loses only what leaves them.
    `first_seq` keeps, per instance, the seq of the first line offered: where a
    reader starts an instance it had no cursor for.
    """

    def __init__(
        self,
        wants: Callable[[LineRun], bool],
        node: str,
        app: str = "",
        maxsize: int = SUBSCRIBER_QUEUE,
    ) -> None:
        self.wants = wants
        self.app = app
        self.behind = False  # paused: the reader catches up from retention
        self.pauses = 0  # how often it fell behind (for tests and benchmarks)
        self.first_seq: dict[str, int] = {}
        self._node = node
        self._maxsize = max(1, maxsize)
        self._runs: deque[LineRun] = deque()
        self._lines = 0  # in the runs queued
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False  # the hub ended it: nothing more will come

    def __len__(self) -> int:
        """Lines queued."""
        return self._lines

    def close(self) -> None:
        """Nothing more will come (what it follows is gone): a waiting `get_many` returns."""
        self.closed = True
        self._wake()

    def offer(self, run: LineRun) -> None:
        """Queue `run`, or pause if it does not fit."""
        if not run.texts or not self.wants(run):
            return
        if run.instance not in self.first_seq:
            self.first_seq[run.instance] = run.first_seq
        if self.behind:
            return
        if self._maxsize - self._lines < len(run.texts):
            self.behind = True
            self.pauses += 1
            self._wake()
            return
        self._runs.append(run)
        self._lines += len(run.texts)
        self._wake()

    def resume(self) -> None:
        """The reader has caught up: queue live lines again."""
        self.behind = False

    def _wake(self) -> None:
        """Lines are queued (or it paused): a `get_many` waiting for them returns."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_many(self, limit: int) -> list[LineRun]:
        """Up to `limit` queued lines, oldest first, as runs, waiting for at least one,
        or for the subscription to pause (then the lines queued before it, maybe none).
        Once closed, it returns what is left, at once (nothing, in the end)."""
        while not self._lines and not self.behind and not self.closed:
            await self._wait()
        return self.take(limit)

    async def _wait(self) -> None:
        """Until lines are queued, it pauses or it is closed (`_wake`)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self, limit: int) -> list[LineRun]:
        """Up to `limit` lines there are now, as runs, without waiting (as `get_many`)."""
        runs = self._runs
        taken: list[LineRun] = []
        left = limit
        while runs and left > 0:
            run = runs[0]
            if len(run.texts) > left:  # the rest of it stays first in the queue
                taken.append(run.part(0, left))
                runs[0] = run.part(left)
                left = 0
                break
            taken.append(runs.popleft())
            left -= len(run.texts)
        self._lines -= limit - left
        return taken


class LogHub:
    """Every instance buffer of this node, live and recently removed, and the followers.

    Buffers are found by (app, instance); each holds the lines of one app id, and
    seq and run count per app id and instance (an app re-created under the same
    name is another app: its web.1 starts again from seq 1). When an app of the
    same name but another id takes the instance over, it gets a fresh buffer.
    `forget_apps` and `forget_everything` delete what is kept of apps that are
    gone, in memory and in the spool: nothing of them is read after.
    """

    def __init__(
        self,
        node: str,
        lines: int,
        retired_buffers: int = RETIRED_BUFFERS,
        retired_lines: int = RETIRED_LINES,
        spool: Spool | None = None,
    ) -> None:
        """`spool`, if given, gets every line; the hub opens and closes it (`open`, `close`)."""
        self.node = node
        self.spool = spool
        self._limit = lines
        self._live: dict[tuple[str, str], LogBuffer] = {}
        self._retired: OrderedDict[tuple[str, str], LogBuffer] = OrderedDict()
        self._retired_buffers = retired_buffers
        self._retired_lines = retired_lines
        # (seq, run) of instances whose retired buffers were forgotten, by (app id, app,
        # instance).
        self._forgotten: OrderedDict[tuple[str, str, str], tuple[int, int]] = OrderedDict()
        self._subscriptions: set[Subscription] = set()

    async def open(self) -> None:
        """Open the spool (its index tells where each instance's seq and run go on)."""
        if self.spool is not None:
            await self.spool.open()

    async def close(self) -> None:
        """Write what the spool still holds, and close it."""
        if self.spool is not None:
            await self.spool.close()

    def buffer(self, app: str, instance: str, app_id: str = "") -> LogBuffer:
        """The live buffer of (app, instance) for app `app_id`, created (or revived) on
        first use; one of another app id (an app of the same name before) is replaced."""
        key = (app, instance)
        found = self._live.get(key)
        if found is not None:
            if found.app_id == app_id:
                return found
            del self._live[key]  # its instance has stopped or is stopping: no reader sees it
            found.detach()
        else:
            found = self._retired.pop(key, None)
            if found is not None:
                if found.app_id == app_id:
                    found.revive(self._limit, self._publish)
                    found.backpressure = self._backpressure
                    self._live[key] = found
                    return found
                self._forget_counters(found)
        seq, run = self._forgotten.pop((app_id, app, instance), (0, 0))
        if not seq and self.spool is not None:
            seq, run = self.spool.last(app, instance, app_id)
        fresh = LogBuffer(
            app, instance, self.node, self._limit, self._publish, seq=seq, run=run, app_id=app_id
        )
        fresh.backpressure = self._backpressure
        self._live[key] = fresh
        return fresh

    def retire(self, app: str, instance: str) -> None:
        """(app, instance) left this node: keep its last lines readable for a while."""
        found = self._live.pop((app, instance), None)
        if found is None:
            return
        found.retire(self._retired_lines)
        self._retired[(app, instance)] = found
        while len(self._retired) > self._retired_buffers:
            _, forgotten = self._retired.popitem(last=False)
            self._forget_counters(forgotten)

    def _forget_counters(self, buffer: LogBuffer) -> None:
        """Drop `buffer`, keeping its seq and run should its instance come back."""
        self._forgotten[(buffer.app_id, buffer.app, buffer.instance)] = (
            buffer.last_seq,
            buffer.run,
        )
        while len(self._forgotten) > FORGOTTEN_COUNTERS:
            self._forgotten.popitem(last=False)

    def buffers(self, app: str, app_id: str = "") -> list[LogBuffer]:
        """Buffers of `app` (only those of app id `app_id`, if given), live and retired."""
        return [
            buffer
            for buffer in (*self._live.values(), *self._retired.values())
            if buffer.app == app and (not app_id or buffer.app_id == app_id)
        ]

    def app_ids(self) -> set[str]:
        """The id of every app with lines here, in memory or in the spool (those written
        so far: flush the spool first to count every line handed to it)."""
        held = {buffer.app_id for buffer in (*self._live.values(), *self._retired.values())}
        if self.spool is not None:
            held |= self.spool.app_ids()
        held.discard("")
        return held

    async def forget_apps(self, app_ids: Collection[str]) -> None:
        """Delete every line of these apps: at once from what is read, then from the disk.

        Their live buffers publish nothing more (their instances are being stopped),
        their retired ones go. Raises SpoolError if the disk keeps some (they are
        still never read).
        """
        gone = set(app_ids)
        if not gone:
            return
        for key, buffer in list(self._live.items()):
            if buffer.app_id in gone:
                del self._live[key]
                buffer.detach()
        for key, buffer in list(self._retired.items()):
            if buffer.app_id in gone:
                del self._retired[key]
        if self.spool is not None:
            await self.spool.forget(gone)

    async def forget_everything(self) -> None:
        """Delete every line kept, in memory and on disk (the node joins another cluster).

        Raises SpoolError if the spool could not delete its files.
        """
        for buffer in self._live.values():
            buffer.detach()
        self._live.clear()
        self._retired.clear()
        self._forgotten.clear()
        for subscription in self._subscriptions:
            subscription.close()  # its reader was another cluster's
        self._subscriptions.clear()
        if self.spool is not None:
            await self.spool.clear()

    def subscribe(
        self, wants: Callable[[LineRun], bool], app: str = "", maxsize: int = SUBSCRIBER_QUEUE
    ) -> Subscription:
        """Live lines that `wants` accepts, from now on; `app` names the app in loss notices."""
        subscription = Subscription(wants, self.node, app, maxsize)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def _backpressure(self) -> Awaitable[None] | None:
        """While the spool's disk writer is far behind, what a pipe's reader waits on
        before it reads more: the process then waits on its pipe, as it would under
        `docker logs` in blocking mode, instead of its lines being dropped."""
        spool = self.spool
        if spool is None or not spool.congested():
            return None
        return spool.flush()

    def _publish(self, run: LineRun) -> None:
        """Lines of one instance read together, to the spool and to each follower."""
        if self.spool is not None:
            self.spool.write_run(run)
        for subscription in self._subscriptions:
            subscription.offer(run)


async def pump(reader: asyncio.StreamReader, stream: str, buffer: LogBuffer) -> None:
    """Copy one pipe into `buffer` until EOF, as many lines at once as have come;
    memory stays bounded."""
    splitter = LineSplitter()
    while chunk := await reader.read(READ_CHUNK):
        buffer.extend(stream, splitter.split(chunk))
        wait = buffer.backpressure()
        if wait is not None:
            await wait
    buffer.extend(stream, splitter.split_rest())
