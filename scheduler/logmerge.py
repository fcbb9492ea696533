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
    if window.push("node-a", runs, now) is Pushed.PASSED:
        send(runs)                      # alone and nothing held: in order already
    send(window.release(now))           # what has waited long enough, in time order

Lines are handled as runs (pb.LogRun, common/logruns.py): a node's lines read
together, one stamp and one step for all of them.
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
from dataclasses import dataclass, field

from paas.common.logruns import last_seq, past, size
from paas.proto import paas_pb2 as pb

# Live lines wait this long (seconds) so that those of several nodes go out in time order.
REORDER = 0.15
# Lines a follow stream's inbox holds of each source before the source waits.
INBOX_LINES = 10_000

# A stream of one instance: (node, instance). Its lines are never reordered.
StreamKey = tuple[str, str]


class Cursors:
    """How far a reader has got: per (node, instance), the highest seq it has had.

    Lines come as runs (pb.LogRun: an instance's lines read together, seqs one after
    another). A notice (seq 0: lines dropped, a node unreachable) is never a repeat.
    """

    def __init__(self, after: Iterable[pb.LogCursor] = ()) -> None:
        self._seq: dict[StreamKey, int] = {(c.node, c.instance): c.seq for c in after}

    @classmethod
    def of(cls, seqs: Mapping[StreamKey, int]) -> Cursors:
        """Cursors from a mapping (node, instance) -> seq, as a drain's progress keeps them."""
        cursors = cls()
        cursors._seq = dict(seqs)
        return cursors

    def fresh(self, runs: Iterable[pb.LogRun]) -> list[pb.LogRun]:
        """The lines of `runs` (in seq order per instance) the reader has not had, as
        runs (one it had in part cut to the rest), and noted as had."""
        seen = self._seq
        out: list[pb.LogRun] = []
        for run in runs:
            key = (run.node, run.instance)
            fresh = past(run, seen.get(key, 0))
            if fresh is not None:
                out.append(fresh)
                if fresh.first_seq:
                    seen[key] = last_seq(fresh)
        return out

    def note(self, runs: Iterable[pb.LogRun]) -> None:
        """Count `runs` as had (also those not sent: history older than asked for must
        not come back through the live part)."""
        for run in runs:
            last = last_seq(run)
            if last:
                key = (run.node, run.instance)
                if last > self._seq.get(key, 0):
                    self._seq[key] = last

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


def latest_run(per_node: Sequence[Sequence[pb.LogRun]]) -> list[list[pb.LogRun]]:
    """Of the nodes' previous runs of one instance, only the one that ended last (and
    every notice): an instance that moved has a finished run on more than one node."""
    ends = [max((run.timestamp for run in runs if run.first_seq), default=0.0) for runs in per_node]
    latest = max(range(len(per_node)), key=lambda i: ends[i], default=-1)
    return [
        list(runs) if i == latest else [run for run in runs if not run.first_seq]
        for i, runs in enumerate(per_node)
    ]


@dataclass(frozen=True)
class Arrival:
    """Lines (as runs) that came in together from one source (a node's name; "" for
    the scheduler's own), and the message that carried them if it came through whole
    (so that it can be sent on as it is, without building another)."""

    source: str
    runs: Sequence[pb.LogRun]
    whole: pb.LogBatch | None = None
    lines: int = field(init=False)  # how many the runs hold

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", size(self.runs))


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
        self._lines += arrival.lines
        self._held[arrival.source] = self._held.get(arrival.source, 0) + arrival.lines

    def take(self) -> Arrival:
        """The oldest arrival (the inbox must not be empty)."""
        arrival = self._arrivals.popleft()
        self._lines -= arrival.lines
        held = self._held[arrival.source] - arrival.lines
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
        # Held runs (the lines of a run share one stamp): a heap by (stamp, arrival order).
        self._held: list[tuple[float, int, pb.LogRun]] = []
        self._order = itertools.count()
        # When each held batch arrived, with the newest stamp in it (oldest first).
        self._arrivals: deque[tuple[float, float]] = deque()
        self._released_up_to = float("-inf")  # every held line stamped up to this goes out
        self._latest: dict[StreamKey, float] = {}
        # When each source last sent; a source unheard for twice the window is quiet.
        self._heard: dict[str, float] = {}
        self._heard_all_by = now + 2 * window

    def __len__(self) -> int:
        """Runs held."""
        return len(self._held)

    def push(self, source: str, runs: Sequence[pb.LogRun], now: float) -> Pushed:
        """Runs that arrived together from `source` at `now`: passed, or held."""
        self._heard[source] = now
        alone = self._alone(now)
        if alone and not self._held:
            return Pushed.PASSED
        newest = float("-inf")
        latest = self._latest
        for run in runs:
            key = (run.node, run.instance)
            stamp = max(run.timestamp, latest.get(key, run.timestamp))
            latest[key] = stamp
            heapq.heappush(self._held, (stamp, next(self._order), run))
            newest = max(newest, stamp)
        self._arrivals.append((now, newest))
        if alone:
            # One source of late: what is held all came before these; let it all out.
            while self._arrivals:
                self._released_up_to = max(self._released_up_to, self._arrivals.popleft()[1])
        return Pushed.HELD

    def release(self, now: float) -> list[pb.LogRun]:
        """The held runs whose time has come, in time order."""
        # As wake_at says (arrival + window), so that waking then releases for sure.
        while self._arrivals and self._arrivals[0][0] + self._window <= now:
            self._released_up_to = max(self._released_up_to, self._arrivals.popleft()[1])
        out: list[pb.LogRun] = []
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
