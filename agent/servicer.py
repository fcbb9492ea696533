"""The agent's own gRPC API: reading the logs of the instances on this node.

Owns the translation from LogsRequest to buffered and live lines, and from
the log buffers' records to proto LogLines. It only reads: the agent's server
offers no way to start, stop or signal a process (processes start only from
the desired set that arrives over the session the agent dialled). It serves
nothing until a scheduler has welcomed the agent since it started (the lines
kept could be another cluster's: see membership.py), and a request that names
an app id gets only that app's lines, not those of an earlier app of the name.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import grpc

from paas.agent.logbuffer import LogBuffer, LogHub, LogLine, Subscription
from paas.agent.logcursor import read_after
from paas.agent.logline import LineRun, line_runs, size
from paas.agent.membership import Membership
from paas.agent.spool import Query, Verdict
from paas.agent.spoolfiles import Span
from paas.common.logbatch import BATCH_BYTES, BATCH_LINES, batches
from paas.common.logformat import PAAS_STREAM
from paas.common.names import InstanceName, NameError_, is_instance
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

DEFAULT_LINES = 100
# The most lines one request reads back (per instance, and in all).
MAX_LINES = 100_000
# Lines are read (from the history, and a follower's queue) this many at a time.
FOLLOW_BATCH = 1024
# How long a follower's live lines may wait for more to go in the same message.
FOLLOW_GATHER = 0.005
# The most lines one step of a follower's catch-up reads (from the buffer or the spool).
CATCH_UP_CHUNK = 8 * FOLLOW_BATCH


def process_matcher(process: str) -> Callable[[str], bool]:
    """Instance names `process` selects: "" all, "web" a type, "web.3" one instance."""
    if not process:
        return lambda _instance: True
    try:
        InstanceName.parse(process)
    except NameError_:
        return lambda instance: instance.rpartition(".")[0] == process
    return lambda instance: instance == process


def to_batch(lines: Sequence[LogLine]) -> pb.LogBatch:
    """One LogBatch of `lines`.

    Each line is added to the batch's own list as a copy of a template holding the
    fields it shares with the line before (lines read together share all but seq
    and text), then its own seq and text: 0.6 us a line, against 1.0 for setting
    every field of each and 3.4 for making each LogLine alone and copying it in.
    """
    batch = pb.LogBatch()
    add = batch.lines.add
    template = pb.LogLine()
    shared: tuple[float, str, str, str, str, int] | None = None
    for line in lines:
        key = (line.timestamp, line.app, line.instance, line.stream, line.node, line.run)
        if key != shared:
            shared = key
            template = pb.LogLine(
                timestamp=line.timestamp,
                app=line.app,
                instance=line.instance,
                stream=line.stream,
                node=line.node,
                run=line.run,
            )
        added = add()
        added.CopyFrom(template)
        added.seq = line.seq
        added.text = line.text
        if line.continued:
            added.continued = True
    return batch


def to_runs(runs: Sequence[LineRun]) -> pb.LogBatch:
    """One LogBatch of `runs`, packed (LogsRequest.packed): a step a run, each run's
    texts copied in as one list."""
    batch = pb.LogBatch()
    add = batch.runs.add
    for run in runs:
        add(
            timestamp=run.timestamp,
            app=run.app,
            instance=run.instance,
            stream=run.stream,
            node=run.node,
            run=run.run,
            first_seq=run.first_seq,
            texts=run.texts,
            continued=run.continued,
        )
    return batch


def bounded_parts(runs: Sequence[LineRun]) -> Iterator[Sequence[LineRun]]:
    """`runs` in parts within a batch's bounds (logbatch.py), a run cut where one must be."""
    if size(runs) <= BATCH_LINES and sum(run.text_size() for run in runs) <= BATCH_BYTES:
        yield runs  # the common case: a follower's batch is at most BATCH_LINES
        return
    lines = [line for run in runs for line in run.lines()]
    for part in batches(lines):
        yield line_runs(part)


class AgentService(pb_grpc.AgentServicer):
    """ReadLogs over this node's LogHub (its buffers, then its spool for older lines),
    once `membership` says the node has joined its cluster."""

    def __init__(self, logs: LogHub, membership: Membership) -> None:
        self._logs = logs
        self._membership = membership

    async def ReadLogs(
        self,
        request: pb.LogsRequest,
        context: grpc.aio.ServicerContext[pb.LogsRequest, pb.LogBatch],
    ) -> AsyncIterator[pb.LogBatch]:
        async for runs in self._batches(request, context):
            if request.packed:
                for part in bounded_parts(runs):
                    yield to_runs(part)
            else:  # a reader that predates runs: a LogLine a line
                for lines in batches([line for run in runs for line in run.lines()]):
                    yield to_batch(lines)

    async def _batches(
        self,
        request: pb.LogsRequest,
        context: grpc.aio.ServicerContext[pb.LogsRequest, pb.LogBatch],
    ) -> AsyncIterator[list[LineRun]]:
        """What a LogsRequest reads, a batch at a time, as runs: the history, then
        (following) live lines as they come, as many at once as have come."""
        membership = self._membership
        if not membership.joined:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"agent {self._logs.node} has not joined yet: {membership.describe()}; "
                "try again once its session is open",
            )
        cluster = membership.cluster_id
        if not request.app:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no app given: name the app")
        if request.lines < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid line count {request.lines}: expected 0 (the default) or more",
            )
        if request.previous and not is_instance(request.process):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "previous needs one instance (process like web.3), not "
                f"{request.process or 'every process'!r}",
            )
        app = request.app
        app_id = request.app_id
        count = min(request.lines or DEFAULT_LINES, MAX_LINES)
        matches = process_matcher(request.process)
        # Cursors of a follower that reconnects: lines up to them were delivered.
        sent = {
            cursor.instance: cursor.seq
            for cursor in request.after
            if cursor.node in ("", self._logs.node)
        }
        since = request.since

        # Subscribe before taking the backlog, so no line falls between the two.
        follow = request.follow and not request.previous
        subscription = (
            self._logs.subscribe(
                lambda line: (
                    line.app == app
                    and (not app_id or line.app_id == app_id)
                    and matches(line.instance)
                ),
                app,
            )
            if follow
            else None
        )
        # An instance the follower has a cursor for is served from it on, all of it
        # (catching up from the buffer and spool), not as the last `count` lines.
        resuming = set(sent) if subscription is not None else set()
        try:
            backlog, last = await read_history(
                self._logs,
                app,
                (lambda instance: matches(instance) and instance not in resuming)
                if resuming
                else matches,
                count,
                since,
                request.previous,
                sent,
                app_id,
            )
            await self._still_in(cluster, context)  # it may have switched while reading
            for start in range(0, len(backlog), FOLLOW_BATCH):
                yield line_runs(backlog[start : start + FOLLOW_BATCH])
            if subscription is None:
                return
            for instance, seq in last.items():
                sent[instance] = max(sent.get(instance, 0), seq)
            if resuming:
                subscription.behind = True  # catch up from the cursors first
            while True:
                fresh = await subscription.get_many(FOLLOW_BATCH)
                await self._still_in(cluster, context)
                if not fresh and subscription.behind:
                    # It fell behind and has read what was queued: the rest from
                    # retention, at this reader's pace, until it is live again.
                    async for part in self._catch_up(subscription, app, app_id, matches, sent):
                        await self._still_in(cluster, context)
                        if since:
                            part = [run for run in part if run.timestamp >= since]
                        if part:
                            yield part
                    continue
                if size(fresh) < FOLLOW_BATCH and not subscription.behind:
                    # Let a few ms of lines gather: one message for many, not one for
                    # each read of a pipe (the cost per message dwarfs that per line).
                    await asyncio.sleep(FOLLOW_GATHER)
                    fresh += subscription.take(FOLLOW_BATCH - size(fresh))
                live = _unsent(fresh, sent, since)
                if live:
                    yield live
        finally:
            if subscription is not None:
                self._logs.unsubscribe(subscription)

    async def _catch_up(
        self,
        subscription: Subscription,
        app: str,
        app_id: str,
        matches: Callable[[str], bool],
        sent: dict[str, int],
    ) -> AsyncIterator[list[LineRun]]:
        """What a paused follower missed, per instance from its cursor in `sent` (moved
        on as lines go), a batch at a time, until every instance is read up to its
        newest line; then the subscription resumes, in the same step (no line falls
        between the last read and the queue)."""
        while True:
            read_any = False
            for instance, buffer in self._followed(app, app_id, matches, sent).items():
                after = sent.get(instance)
                if after is None:
                    first = subscription.first_seq.get(instance)
                    if first is None:
                        continue  # nothing of it came since the follower subscribed
                    after = first - 1
                chunk = await read_after(
                    self._logs, buffer, app, instance, app_id, after, CATCH_UP_CHUNK
                )
                sent[instance] = chunk.cursor
                if chunk.runs:
                    read_any = True
                for part in run_parts(chunk.runs, FOLLOW_BATCH):
                    yield part
            if not read_any:
                subscription.resume()
                return

    def _followed(
        self, app: str, app_id: str, matches: Callable[[str], bool], sent: dict[str, int]
    ) -> dict[str, LogBuffer | None]:
        """The instances a follower catches up on: those with a buffer here, and those
        it has a cursor for that only the spool holds now."""
        found: dict[str, LogBuffer | None] = {}
        for buffer in self._logs.buffers(app, app_id):
            if matches(buffer.instance) and buffer.instance not in found:
                found[buffer.instance] = buffer
        for instance in sent:
            found.setdefault(instance, None)
        return found

    async def _still_in(
        self, cluster: str, context: grpc.aio.ServicerContext[pb.LogsRequest, pb.LogBatch]
    ) -> None:
        """End the call if the node has left `cluster` (a Welcome of another) meanwhile."""
        if self._membership.cluster_id != cluster or not self._membership.joined:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"agent {self._logs.node} has joined another cluster since this read began; "
                "read again",
            )


async def read_history(
    logs: LogHub,
    app: str,
    matches: Callable[[str], bool],
    count: int,
    since: float = 0.0,
    previous: bool = False,
    after: dict[str, int] | None = None,
    app_id: str = "",
) -> tuple[list[LogLine], dict[str, int]]:
    """The last `count` lines of `app`'s instances that `matches` selects, in time order,
    and the last seq of each instance at the time (live lines come after it).

    With `app_id`, only lines of that app id count (not those of another app that
    had the name before). Without, each instance's lines are those of the app that
    has the name now on this node (the app id of its buffer, else of its newest
    lines on disk): a re-created app's web.1 is not mixed with the old one's (each
    counts its own seq).

    Each instance's lines come from its buffer and, for what the buffer no longer
    holds, from the spool. Only lines at or after `since` and after the cursor in
    `after` (instance -> seq) count; with `previous`, only those of the instance's
    last finished run. Where older lines that might have been wanted are gone (the
    spool rotated them away, or lost them), a notice says so.
    """
    after = after or {}
    spool = logs.spool
    named = {b.instance: b for b in logs.buffers(app) if matches(b.instance)}
    ids = spool.newest_app_ids(app) if spool is not None and not app_id else {}
    ids.update({instance: buffer.app_id for instance, buffer in named.items()})

    def id_of(instance: str) -> str:
        return app_id or ids.get(instance, "")

    buffers = {i: buffer for i, buffer in named.items() if buffer.app_id == id_of(i)}
    on_disk = _on_disk(logs, app, matches, id_of)
    found: dict[str, list[LogLine]] = {}
    last: dict[str, int] = {}
    # The oldest seq of each buffer when its lines were taken: older ones come from the
    # spool. Taken with the lines, as the buffer moves on while the spool is flushed.
    oldest: dict[str, int] = {}
    verdicts: dict[str, Callable[[LogLine], Verdict]] = {}
    for instance in sorted(set(buffers) | {i for i in on_disk if matches(i)}):
        buffer = buffers.get(instance)
        finished = buffer.finished_run if buffer is not None else on_disk[instance].last_run
        if previous and not finished:
            continue  # no run of it has finished here
        verdict = _verdict(since, after.get(instance, 0), finished if previous else 0)
        lines: list[LogLine] = []
        complete = False
        if buffer is not None:
            last[instance] = buffer.last_seq
            oldest[instance] = buffer.oldest_seq
            lines, complete = _scan(buffer.runs(), count, verdict)
            complete = complete or oldest[instance] <= 1  # nothing older ever existed
        found[instance] = lines
        if not complete:
            verdicts[instance] = verdict
    queries: list[Query] = []
    if verdicts and spool is not None:
        await spool.flush()  # what the buffers no longer hold may still be on its way
        on_disk = _on_disk(logs, app, matches, id_of)
    for instance, verdict in verdicts.items():
        below = oldest.get(instance, 0)
        span = on_disk.get(instance)
        if span is not None and (not below or (span.first_seq and span.first_seq < below)):
            queries.append(
                Query(app, instance, below, count - len(found[instance]), verdict, id_of(instance))
            )
        else:
            found[instance] = _with_loss_notice(
                found[instance], app, instance, below, after, previous, logs.node
            )
    if queries and spool is not None:
        read = await spool.read(queries)
        for query in queries:
            older = read[(app, query.instance)]
            lines = older.lines + found[query.instance]
            if not older.complete:
                lines = _with_loss_notice(
                    lines, app, query.instance, query.below, after, previous, logs.node
                )
            found[query.instance] = lines
    if verdicts and spool is not None and spool.failure:
        # Older lines were wanted and the spool is not writing them: say why, where
        # the gap is (before the oldest line found).
        notice = _notice(app, logs.node, spool.failure)
        first = min((lines[0].timestamp for lines in found.values() if lines), default=None)
        if first is not None:
            notice = notice._replace(timestamp=first - 1e-6)
        found[""] = [notice]
    merged = list(heapq.merge(*found.values(), key=lambda line: line.timestamp))
    return merged[-count:], last


def _on_disk(
    logs: LogHub, app: str, matches: Callable[[str], bool], id_of: Callable[[str], str]
) -> dict[str, Span]:
    """The span on disk of each instance `matches` selects, of the app id `id_of` gives."""
    if logs.spool is None:
        return {}
    return {
        instance: span
        for (instance, app_id), span in logs.spool.spans(app).items()
        if matches(instance) and app_id == id_of(instance)
    }


def _verdict(since: float, after: int, run: int) -> Callable[[LogLine], Verdict]:
    """What a reader going back in time makes of each line, for these bounds (run 0: any)."""

    def verdict(line: LogLine) -> Verdict:
        if line.seq and line.seq <= after:
            return Verdict.STOP
        if line.timestamp < since:
            return Verdict.STOP
        if run and line.run != run:
            return Verdict.SKIP if line.run > run else Verdict.STOP
        return Verdict.KEEP

    return verdict


def _scan(
    runs: list[LineRun], count: int, verdict: Callable[[LogLine], Verdict]
) -> tuple[list[LogLine], bool]:
    """The last `count` lines of `runs` that `verdict` keeps, oldest first, and whether
    that is all (only the runs it reaches are made lines)."""
    kept: list[LogLine] = []
    for run in reversed(runs):
        for line in reversed(run.lines()):
            decision = verdict(line)
            if decision is Verdict.STOP:
                return kept[::-1], True
            if decision is Verdict.KEEP:
                kept.append(line)
                if len(kept) >= count:
                    return kept[::-1], True
    return kept[::-1], False


def _with_loss_notice(
    lines: list[LogLine],
    app: str,
    instance: str,
    below: int,
    after: dict[str, int],
    previous: bool,
    node: str,
) -> list[LogLine]:
    """`lines`, after a notice of the older lines that are gone, if any are."""
    seqs = [line.seq for line in lines if line.seq]
    first = seqs[0] if seqs else below
    lost = first - 1 - after.get(instance, 0)
    if lost <= 0:
        return lines
    oldest = lines[0] if lines else None
    text = (
        f"earlier lines of {instance} are no longer kept"
        if previous
        else f"{lost} earlier lines of {instance} are no longer kept"
    )
    notice = LogLine(
        oldest.timestamp if oldest else 0.0,
        app,
        instance,
        PAAS_STREAM,
        node,
        0,
        text,
        oldest.run if oldest else 0,
    )
    return [notice, *lines]


def run_parts(runs: list[LineRun], limit: int) -> Iterator[list[LineRun]]:
    """`runs` in order, in lists of at most `limit` lines (a run cut where one ends)."""
    part: list[LineRun] = []
    room = limit
    for run in runs:
        start, lines = 0, len(run.texts)
        while start < lines or not lines:  # a run of no lines is passed on as it is
            take = min(room, lines - start)
            part.append(run if take == lines else run.part(start, start + take))
            start += take
            room -= take
            if room <= 0:
                yield part
                part, room = [], limit
            if not lines:
                break
    if part:
        yield part


def _unsent(runs: list[LineRun], sent: dict[str, int], since: float) -> list[LineRun]:
    """The lines of `runs` (live, in seq order per instance) past the follower's cursors
    and `since`, as runs (one cut to its part past the cursor); the cursors move on."""
    out: list[LineRun] = []
    for run in runs:
        if not run.first_seq:
            if run.timestamp >= since:
                out.append(run)
            continue
        cursor = sent.get(run.instance, 0)
        last = run.last_seq
        if last > cursor and run.timestamp >= since:  # a run's lines share one time
            out.append(run if run.first_seq > cursor else run.part(cursor + 1 - run.first_seq))
        sent[run.instance] = max(cursor, last)
    return out


def _notice(app: str, node: str, text: str) -> LogLine:
    return LogLine(time.time(), app, node, PAAS_STREAM, node, 0, text)
