"""`paas logs`: the app's lines of every node and the scheduler's events, merged.

LogsService answers the Logs RPC and offers the same merge as `merged_batches`,
which the log drains read as their stream (drains.py). It reads the agents'
buffers over their own gRPC API (one channel per agent address, kept until
`close`); it never writes etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

import grpc

from paas.common.errors import InvalidInput
from paas.common.grpcutil import CHANNEL_OPTIONS
from paas.common.logbatch import batches
from paas.common.logformat import SCHEDULER_INSTANCE
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from paas.scheduler.events import EventLog
from paas.scheduler.events import notice as _notice
from paas.scheduler.lookup import is_instance as _is_instance
from paas.scheduler.lookup import require_app
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.store import Store

DEFAULT_LOG_LINES = 100
_FOLLOW_QUEUE = 10_000
# Live lines wait this long (seconds) so that those of several nodes go out in time order.
FOLLOW_REORDER = 0.15
# A follow stream of a node that broke while its session stayed up is resumed after this.
FOLLOW_RETRY = 1.0


class LogsService:
    """The Logs RPC and the merge behind it (and behind the log drains)."""

    def __init__(self, store: Store, sessions: Sessions, events: EventLog) -> None:
        self._store = store
        self._sessions = sessions
        self._events = events
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    async def Logs(
        self, request: pb.LogsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.LogBatch]:
        """The app's lines, a batch at a time: the history, then live lines as released."""
        await require_app(self._store, request.app)
        if request.previous and not _is_instance(request.process):
            raise InvalidInput(
                "previous needs one instance (process like web.3), not "
                f"{request.process or 'every process'!r}"
            )
        async for batch in self.merged_batches(request):
            yield batch

    async def merged_batches(self, request: pb.LogsRequest) -> AsyncIterator[pb.LogBatch]:
        """The app's lines of every node and the scheduler's events, merged: the history,
        then (with follow) live lines as released. Unchecked: callers check the request
        and that this replica leads (Logs; the log drains, which run on the leader)."""
        count = request.lines or DEFAULT_LOG_LINES
        history_request = pb.LogsRequest(
            app=request.app,
            lines=count,
            process=request.process,
            since=request.since,
            previous=request.previous,
            after=request.after,
        )
        # A follower that reconnects says where it had got to; nothing before that again.
        seen = {(c.node, c.instance): c.seq for c in request.after}
        started = time.time()
        sessions = self._sessions.connected()
        per_node = await asyncio.gather(
            *(self._read_history(session, history_request) for session in sessions)
        )
        if request.previous:
            per_node = _latest_run(per_node)
        lines = [line for node_lines in per_node for line in node_lines]
        if request.process in ("", SCHEDULER_INSTANCE) and not request.previous:
            lines.extend(
                line for line in self._events.recent(request.app) if line.timestamp >= request.since
            )
        # seq 0 marks notices (drops, unreachable nodes): never skipped.
        lines = [
            line
            for line in lines
            if line.seq == 0 or line.seq > seen.get((line.node, line.instance), 0)
        ]
        lines.sort(key=lambda line: line.timestamp)
        # Lines read now but older than the last `count` are history not asked for:
        # the live part must not bring them back.
        for line in lines:
            seen[(line.node, line.instance)] = max(
                seen.get((line.node, line.instance), 0), line.seq
            )
        lines = lines[-count:]
        if not request.follow or request.previous:
            for part in batches(lines):
                yield pb.LogBatch(lines=part)
            return
        # Live lines are those written since the history was read (seq drops the
        # overlap). A reader that resumes (it has cursors) also wants what a node that
        # rejoins late wrote meanwhile: its cursors and its own `since` bound that.
        live_since = request.since if request.after else max(started, request.since)
        # History lines that live ones may precede (the nodes were read each at its own
        # moment) go out merged with them, in time order.
        recent = next(
            (i for i, line in enumerate(lines) if line.timestamp >= live_since), len(lines)
        )
        for part in batches(lines[:recent]):
            yield pb.LogBatch(lines=part)
        async for batch in self._follow(request, seen, live_since, lines[recent:]):
            yield batch

    async def _read_history(
        self, session: AgentSession, request: pb.LogsRequest
    ) -> list[pb.LogLine]:
        try:
            stub = pb_grpc.AgentStub(self._channel(session.address))
            return [
                line async for batch in stub.ReadLogs(request, timeout=10) for line in batch.lines
            ]
        except grpc.aio.AioRpcError as exc:
            return [
                _notice(request.app, f"logs of node {session.name} unavailable: {exc.details()}")
            ]

    async def _follow(
        self,
        request: pb.LogsRequest,
        seen: dict[tuple[str, str], int],
        since: float,
        recent: list[pb.LogLine],
    ) -> AsyncIterator[pb.LogBatch]:
        """Live lines (stamped from `since` on) of every node, those that join later
        included, in time order, in batches as they are released.

        Each node is followed from where `seen` says this reader is (so a node that
        comes back sends what it wrote meanwhile, and nothing twice). While more than
        one node sends, lines are held for FOLLOW_REORDER seconds and released in
        timestamp order, so the lines of several nodes interleave as they were
        written; while one node alone sends, its batches go out as they came, without
        a look at each line. A lagging reader gets a notice of what it lost instead of
        making anyone wait. `recent` (history lines newer than `since`) goes out
        merged with them.
        """
        loop = asyncio.get_running_loop()
        # Arrived batches, each with its source ("" for the scheduler's own lines) and,
        # if the node's batch came through whole, the message itself (sent on as is).
        inbox: deque[tuple[str, Sequence[pb.LogLine], pb.LogBatch | None]] = deque()
        if recent:
            inbox.append(("", recent, None))  # the newest of the history go with them
        queued = len(recent)  # lines in the inbox
        arrived = asyncio.Event()
        dropped = 0

        def offer(source: str, lines: Sequence[pb.LogLine], whole: pb.LogBatch | None) -> None:
            nonlocal dropped, queued
            if queued + len(lines) > _FOLLOW_QUEUE:
                dropped += len(lines)
                return
            if dropped:
                # Counted as the source's own line: a notice of the scheduler's must not
                # look like a second source and put a lone node's lines through the
                # ordering window (slower, so it falls further behind).
                text = f"{dropped} lines dropped (this reader fell behind)"
                inbox.append((source, [_notice(request.app, text)], None))
                queued += 1
                dropped = 0
            inbox.append((source, lines, whole))
            queued += len(lines)
            arrived.set()

        def offer_batch(source: str, batch: pb.LogBatch) -> None:
            """`offer` the lines of a node's batch that this reader has not had."""
            lines = batch.lines
            fresh: list[pb.LogLine] = []
            for line in lines:
                if line.seq:
                    key = (line.node, line.instance)
                    if line.seq <= seen.get(key, 0):
                        continue
                    seen[key] = line.seq
                fresh.append(line)
            if fresh:
                offer(source, fresh, batch if len(fresh) == len(lines) else None)

        def live_request(node: str) -> pb.LogsRequest:
            return pb.LogsRequest(
                app=request.app,
                lines=_FOLLOW_QUEUE,
                process=request.process,
                follow=True,
                since=since,
                after=[
                    pb.LogCursor(node=name, instance=instance, seq=seq)
                    for (name, instance), seq in seen.items()
                    if name == node
                ],
            )

        async def follow_node(session: AgentSession) -> None:
            stub = pb_grpc.AgentStub(self._channel(session.address))
            while True:
                try:
                    async for batch in stub.ReadLogs(live_request(session.name)):
                        offer_batch(session.name, batch)
                    return  # the agent ended the stream: it is stopping
                except grpc.aio.AioRpcError as exc:
                    if self._sessions.get(session.name) is not session:
                        text = (
                            f"lost node {session.name} ({exc.details()}); its lines "
                            "follow when it is back"
                        )
                        offer("", [_notice(request.app, text)], None)
                        return
                # Still connected: the stream broke on its own; resume from the cursors.
                await asyncio.sleep(FOLLOW_RETRY)

        tasks: dict[str, asyncio.Task[None]] = {}

        def start(session: AgentSession) -> None:
            old = tasks.get(session.name)
            if old is not None:
                old.cancel()
            tasks[session.name] = asyncio.create_task(follow_node(session))

        async def watch_joins(joined: asyncio.Queue[AgentSession]) -> None:
            while True:
                start(await joined.get())

        async def watch_events(events: asyncio.Queue[pb.LogLine]) -> None:
            while True:
                offer("", [await events.get()], None)

        joined = self._sessions.subscribe()
        helpers = [asyncio.create_task(watch_joins(joined))]
        events = None
        if request.process in ("", SCHEDULER_INSTANCE):
            events = self._events.subscribe(request.app)
            helpers.append(asyncio.create_task(watch_events(events)))
        # Lines held back: a heap by timestamp, and when each batch arrived with the
        # newest stamp in it (oldest first).
        held: list[tuple[float, int, pb.LogLine]] = []
        arrivals: deque[tuple[float, float]] = deque()
        released_up_to = float("-inf")  # every held line stamped up to this goes out
        order = 0
        latest: dict[tuple[str, str], float] = {}
        # When each source last sent: lines of one source alone need no waiting
        # (known once every source had time to be heard).
        heard: dict[str, float] = {}
        heard_all_by = loop.time() + 2 * FOLLOW_REORDER
        try:
            for session in self._sessions.connected():
                start(session)
            while True:
                now = loop.time()
                while inbox:
                    source, lines, whole = inbox.popleft()
                    queued -= len(lines)
                    heard[source] = now
                    alone = (
                        now >= heard_all_by
                        and sum(at > now - 2 * FOLLOW_REORDER for at in heard.values()) <= 1
                    )
                    if alone and not held:
                        # One source of late, nothing held: its lines are in order already.
                        if whole is not None:
                            yield whole
                        else:
                            for part in batches(lines):
                                yield pb.LogBatch(lines=part)
                        continue
                    newest = float("-inf")
                    for line in lines:
                        key = (line.node, line.instance)
                        # Never reorder one instance's lines, even if its clock stepped back.
                        stamp = max(line.timestamp, latest.get(key, line.timestamp))
                        latest[key] = stamp
                        heapq.heappush(held, (stamp, order, line))
                        order += 1
                        newest = max(newest, stamp)
                    arrivals.append((now, newest))
                    if alone:
                        # One source of late: release what is held (it all came before).
                        while arrivals:
                            released_up_to = max(released_up_to, arrivals.popleft()[1])
                while arrivals and arrivals[0][0] <= now - FOLLOW_REORDER:
                    released_up_to = max(released_up_to, arrivals.popleft()[1])
                released = []
                while held and held[0][0] <= released_up_to:
                    released.append(heapq.heappop(held)[2])
                for part in batches(released):
                    yield pb.LogBatch(lines=part)
                if inbox:
                    continue
                arrived.clear()
                wait = arrivals[0][0] + FOLLOW_REORDER - loop.time() if arrivals else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait) if wait is not None else None):
                        await arrived.wait()
        finally:
            self._sessions.unsubscribe(joined)
            if events is not None:
                self._events.unsubscribe(request.app, events)
            for task in [*helpers, *tasks.values()]:
                task.cancel()

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel


def _latest_run(batches: list[list[pb.LogLine]]) -> list[list[pb.LogLine]]:
    """Of the nodes' previous runs of one instance, only the one that ended last (and the
    notices): an instance that moved has a finished run on more than one node."""
    runs = [[line for line in batch if line.seq] for batch in batches]
    ends = [max((line.timestamp for line in run), default=0.0) for run in runs]
    latest = max(range(len(batches)), key=lambda i: ends[i], default=-1)
    return [
        batch if i == latest else [line for line in batch if not line.seq]
        for i, batch in enumerate(batches)
    ]
