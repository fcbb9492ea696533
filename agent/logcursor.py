"""Reading one instance's lines forward from a cursor: the spool for what the ring
buffer no longer holds, then the buffer.

A follower that fell behind (its subscription paused, or it reconnects with
cursors) is served from here until it is live again: per instance, the lines
after the seq it has had, in order, a bounded chunk at a time. Lines that left
retention (rotated off the spool, or never written to it) before the reader got
to them are counted exactly, in one notice where the gap is. It only reads; what
a reader has had is the caller's (servicer.py).

    chunk = await read_after(hub, buffer, app, instance, app_id, after=5000, limit=4096)
    send(chunk.runs)
    after = chunk.cursor               # where the next read starts
"""

from __future__ import annotations

from dataclasses import dataclass

from paas.agent.logbuffer import LogBuffer, LogHub, LogLine
from paas.agent.logline import LineRun, line_runs
from paas.agent.spool import Query, Verdict
from paas.common.logformat import PAAS_STREAM, lost_notice

# The lines one read from the spool brings, whatever the limit asked for: it scans a
# file back from its end to them, so fewer, larger reads (memory stays bounded by this).
SPOOL_CHUNK = 32_768


@dataclass(frozen=True)
class Chunk:
    """Lines after a cursor, oldest first, as runs (a loss notice, seq 0, where lines
    are gone), and the cursor after them: the seq the next read goes on from."""

    runs: list[LineRun]
    cursor: int

    @property
    def lines(self) -> list[LogLine]:
        return [line for run in self.runs for line in run.lines()]


async def read_after(
    hub: LogHub,
    buffer: LogBuffer | None,
    app: str,
    instance: str,
    app_id: str,
    after: int,
    limit: int,
) -> Chunk:
    """Lines of (app, instance) of `app_id` with seq above `after`: up to `limit`
    from the buffer if it still holds the next line; else up to SPOOL_CHUNK from the
    spool, up to the buffer's oldest line (or the newest on disk, without a buffer). An empty
    chunk with the cursor unchanged: nothing newer is kept.
    """
    if buffer is not None:
        oldest = buffer.oldest_seq
        if after + 1 >= oldest:
            kept = buffer.runs_after(after, limit)  # as they were read: no line made
            return Chunk(kept, kept[-1].last_seq if kept else after)
    else:
        oldest = _last_on_disk(hub, app, instance, app_id) + 1
    if after + 1 >= oldest:
        return Chunk([], after)
    below = min(oldest, after + 1 + SPOOL_CHUNK)
    lines: list[LogLine] = []
    if hub.spool is not None:
        # Forward from a mark near the cursor where the spool has one (it costs the
        # chunk); else back from the newest line to the cursor (it costs every line
        # newer than the chunk too, which a reader far behind pays chunk after chunk).
        forward = await hub.spool.read_forward(app_id, app, instance, after, below)
        if forward is not None:
            lines = forward
        else:

            def verdict(line: LogLine) -> Verdict:
                return Verdict.STOP if line.seq and line.seq <= after else Verdict.KEEP

            query = Query(app, instance, below, below - after + 64, verdict, app_id)
            found = await hub.spool.read([query])
            lines = found[(app, instance)].lines
    # The spool's own notices before the first line found describe the gap this read
    # counts itself, and those after the last the gap the next read will: kept, they
    # would count it twice. Those between lines are the only word of their gaps.
    first_found = next((i for i, line in enumerate(lines) if line.seq), None)
    if first_found is None:
        lines = []
    else:
        last_found = next(i for i in range(len(lines) - 1, -1, -1) if lines[i].seq)
        lines = lines[first_found : last_found + 1]
    seqs = [line.seq for line in lines if line.seq]
    first = seqs[0] if seqs else below
    lost = first - 1 - after
    if lost > 0:
        # Where the gap is: before the first line found, or the buffer's oldest.
        held = lines or (buffer.after(after, 1) if buffer is not None else [])
        stamp = held[0].timestamp if held else 0.0
        run = held[0].run if held else 0
        lines.insert(0, _lost(app, instance, hub.node, lost, stamp, run, app_id))
    return Chunk(line_runs(lines), seqs[-1] if seqs else below - 1)


def _last_on_disk(hub: LogHub, app: str, instance: str, app_id: str) -> int:
    if hub.spool is None:
        return 0
    return hub.spool.last(app, instance, app_id)[0]


def _lost(
    app: str, instance: str, node: str, count: int, stamp: float, run: int, app_id: str
) -> LogLine:
    """The notice of `count` lines of `instance` that left retention unread."""
    return LogLine(
        stamp,
        app,
        instance,
        PAAS_STREAM,
        node,
        0,
        lost_notice(count, instance),
        run,
        app_id=app_id,
    )
