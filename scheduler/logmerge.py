"""The decisions of a merged log stream: which lines a reader has not had, what its
inbox holds, and in what order lines of several nodes go out.

`paas logs -f` and the log drains follow an app's lines on every node at once
(logreader.py does the reading). Four small pieces decide what happens to them:

- `Cursors`: per (node, instance), the last seq a reader has had, so that a node
  followed again (it came back, its stream broke) sends nothing twice.
- `Inbox`: arrived batches, up to a bound per source; a source that fills its
  share waits before it reads more of its node (flow control back to the agent,
  which keeps the lines): nothing is dropped for a reader that lags.
- `latest_run`: of an instance's finished runs on several nodes (it moved), the
  one `--previous` shows.
- `TimeOrderWindow`: while more than one source sends, lines are held for
  REORDER seconds and released in timestamp order, so that those of several nodes
  interleave as they were written; one source alone passes straight through.

    window = TimeOrderWindow(now=loop.time())
    if window.push("node-a", lines, now) is Pushed.PASSED:
        send(lines)                     # alone and nothing held: in order already
    send(window.release(now))           # what has waited long enough, in time order
    sleep_until(window.wake_at())       # None: nothing held

Pure: no I/O, no asyncio, no clock of its own (the caller passes `now`, a
monotonic time such as `loop.time()`); nothing here may read a socket or sleep.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, lt

from paas.proto import paas_pb2 as pb

_NODE_INSTANCE = attrgetter("node", "instance")
_SEQ = attrgetter("seq")

# Live lines wait this long (seconds) so that those of several nodes go out in time order.
REORDER = 0.15
# Lines a follow stream's inbox holds of each source before the source waits.
INBOX_LINES = 10_000

# A stream of one instance: (node, instance). Its lines are never reordered.
StreamKey = tuple[str, str]


class Cursors:
    """How far a reader has got: per (node, instance), the highest seq it has had.

    A line of seq 0 is a notice (lines dropped, a node unreachable): never a repeat.
    """

    def __init__(self, after: Iterable[pb.LogCursor] = ()) -> None:
        self._seq: dict[StreamKey, int] = {(c.node, c.instance): c.seq for c in after}

    @classmethod
    def of(cls, seqs: Mapping[StreamKey, int]) -> Cursors:
        """Cursors from a mapping (node, instance) -> seq, as a drain's progress keeps them."""
        cursors = cls()
        cursors._seq = dict(seqs)
        return cursors

    def is_new(self, line: pb.LogLine) -> bool:
        """True unless the reader already had `line`."""
        return line.seq == 0 or line.seq > self._seq.get((line.node, line.instance), 0)

    def note(self, lines: Iterable[pb.LogLine]) -> None:
        """Count `lines` as had (also those not sent: history older than asked for must
        not come back through the live part)."""
        for line in lines:
            if line.seq:
                key = (line.node, line.instance)
                if line.seq > self._seq.get(key, 0):
                    self._seq[key] = line.seq

    def fresh(self, lines: Sequence[pb.LogLine]) -> list[pb.LogLine]:
        """Those of `lines` (in seq order per instance) the reader has not had, noted."""
        seen = self._seq
        out: list[pb.LogLine] = []
        # An agent's lines come in runs of one instance's: a run whose first seq is
        # new, rising from there, with no notice in it, is taken whole (its seqs
        # read and checked in C); any other line by line.
        for key, group in itertools.groupby(lines, key=_NODE_INSTANCE):
            run = list(group)
            seqs = list(map(_SEQ, run))
            if seqs[0] > seen.get(key, 0) and 0 not in seqs and all(map(lt, seqs, seqs[1:])):
                out += run
                seen[key] = seqs[-1]
                continue
            for line, seq in zip(run, seqs, strict=True):
                if seq:
                    if seq <= seen.get(key, 0):
                        continue
                    seen[key] = seq
                out.append(line)
        return out

    def of_node(self, node: str) -> list[pb.LogCursor]:
        """Where to resume `node`: its instances' cursors, for a LogsRequest's `after`."""
        return [
            pb.LogCursor(node=name, instance=instance, seq=seq)
            for (name, instance), seq in self._seq.items()
            if name == node
        ]

    def all(self) -> list[pb.LogCursor]:
        """Every cursor, sorted: where to resume the whole stream."""
        return [
            pb.LogCursor(node=node, instance=instance, seq=seq)
            for (node, instance), seq in sorted(self._seq.items())
        ]


def latest_run(per_node: Sequence[Sequence[pb.LogLine]]) -> list[list[pb.LogLine]]:
    """Of the nodes' previous runs of one instance, only the one that ended last (and
    every notice): an instance that moved has a finished run on more than one node."""
    ends = [max((line.timestamp for line in lines if line.seq), default=0.0) for lines in per_node]
    latest = max(range(len(per_node)), key=lambda i: ends[i], default=-1)
    return [
        list(lines) if i == latest else [line for line in lines if not line.seq]
        for i, lines in enumerate(per_node)
    ]


@dataclass(frozen=True)
class Arrival:
    """Lines that came in together from one source (a node's name; "" for the
    scheduler's own), and the message that carried them if it came through whole
    (so that it can be sent on as it is, without building another)."""

    source: str
    lines: Sequence[pb.LogLine]
    whole: pb.LogBatch | None = None


class Inbox:
    """Arrived lines waiting for the follow loop, at most about `limit` of each source.

    Nothing is dropped: a source whose lines fill its share waits (`has_room`)
    before it reads more from its node, so the node's stream stops and the agent
    keeps the lines (it serves them from its buffer and spool when the reader gets
    there). A share per source, so that one node catching up does not keep the
    live lines of the others out.
    """

    def __init__(self, limit: int = INBOX_LINES) -> None:
        self._limit = limit
        self._arrivals: deque[Arrival] = deque()
        self._lines = 0
        self._held: dict[str, int] = {}

    def __len__(self) -> int:
        """Lines held."""
        return self._lines

    def __bool__(self) -> bool:
        return bool(self._arrivals)

    def has_room(self, source: str) -> bool:
        """Whether `source` may put more (it holds less than its share)."""
        return self._held.get(source, 0) < self._limit

    def put(self, arrival: Arrival) -> None:
        """Take `arrival`, whatever its size (a source asks `has_room` first)."""
        self._arrivals.append(arrival)
        self._lines += len(arrival.lines)
        self._held[arrival.source] = self._held.get(arrival.source, 0) + len(arrival.lines)

    def take(self) -> Arrival:
        """The oldest arrival (the inbox must not be empty)."""
        arrival = self._arrivals.popleft()
        self._lines -= len(arrival.lines)
        held = self._held[arrival.source] - len(arrival.lines)
        if held:
            self._held[arrival.source] = held
        else:
            del self._held[arrival.source]
        return arrival


class Pushed(enum.Enum):
    """What `TimeOrderWindow.push` did with the lines."""

    # One source alone and nothing held: the lines are in order already, and the
    # caller sends them on now, as they are. The window keeps nothing of them.
    PASSED = "passed"
    # Taken into the window: they come out of `release`, in time order.
    HELD = "held"


class TimeOrderWindow:
    """Puts the live lines of several sources in timestamp order, holding each
    batch for `window` seconds after it arrived.

    Release is by arrival: once a batch has waited `window`, every held line
    stamped up to the newest stamp in it goes out, oldest first. So a line that
    reaches the scheduler within `window` of being written (by the clock of its
    stamp) goes out after every line stamped earlier, whichever node sent it; lines
    further apart than `window` always go out in time order.

    One source alone needs no waiting: once every source had twice `window` to be
    heard, while only one has sent in that time its lines pass straight through
    (`Pushed.PASSED`), or, if some are held, release what is held at once.

    One instance's lines are never reordered, even if its clock stepped back: a
    line is ordered by the newest stamp of its instance so far.
    """

    def __init__(self, now: float, window: float = REORDER) -> None:
        self._window = window
        # Held lines: a heap by (stamp, arrival order).
        self._held: list[tuple[float, int, pb.LogLine]] = []
        self._order = itertools.count()
        # When each held batch arrived, with the newest stamp in it (oldest first).
        self._arrivals: deque[tuple[float, float]] = deque()
        self._released_up_to = float("-inf")  # every held line stamped up to this goes out
        self._latest: dict[StreamKey, float] = {}
        # When each source last sent; a source unheard for twice the window is quiet.
        self._heard: dict[str, float] = {}
        self._heard_all_by = now + 2 * window

    def __len__(self) -> int:
        """Lines held."""
        return len(self._held)

    def push(self, source: str, lines: Sequence[pb.LogLine], now: float) -> Pushed:
        """Lines that arrived together from `source` at `now`: passed, or held."""
        self._heard[source] = now
        alone = self._alone(now)
        if alone and not self._held:
            return Pushed.PASSED
        newest = float("-inf")
        latest = self._latest
        for line in lines:
            key = (line.node, line.instance)
            stamp = max(line.timestamp, latest.get(key, line.timestamp))
            latest[key] = stamp
            heapq.heappush(self._held, (stamp, next(self._order), line))
            newest = max(newest, stamp)
        self._arrivals.append((now, newest))
        if alone:
            # One source of late: what is held all came before these; let it all out.
            while self._arrivals:
                self._released_up_to = max(self._released_up_to, self._arrivals.popleft()[1])
        return Pushed.HELD

    def release(self, now: float) -> list[pb.LogLine]:
        """The held lines whose time has come, in time order."""
        # As wake_at says (arrival + window), so that waking then releases for sure.
        while self._arrivals and self._arrivals[0][0] + self._window <= now:
            self._released_up_to = max(self._released_up_to, self._arrivals.popleft()[1])
        out: list[pb.LogLine] = []
        held = self._held
        while held and held[0][0] <= self._released_up_to:
            out.append(heapq.heappop(held)[2])
        return out

    def wake_at(self) -> float | None:
        """When `release` next has lines to give, if it has none now; None if none held."""
        return self._arrivals[0][0] + self._window if self._arrivals else None

    def _alone(self, now: float) -> bool:
        if now < self._heard_all_by:
            return False
        quiet_before = now - 2 * self._window
        return sum(at > quiet_before for at in self._heard.values()) <= 1
