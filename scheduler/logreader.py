"""An app's log read from every node and merged into one stream: the history, then
(with follow) live lines as they come.

The I/O half of the merge `paas logs` and the log drains read: it asks each
connected agent for its lines over the agent's gRPC (ReadLogs), adds the
scheduler's own events, follows nodes that join later, and resumes a node whose
stream broke from where this reader had got. What to send and in what order is
decided by logmerge.py (cursors, inbox, time-order window); this module only
moves lines between them and the network.

    reader = LogReader(sessions, events)
    request = pb.LogsRequest(app="shop", app_id=app.id, follow=True)
    async for batch in reader.merged_batches(request):
        ...
    await reader.close()  # the agent channels

Unchecked: callers check the request, set the app's id in it (agents serve only
lines of that id) and make sure this replica leads (the Logs RPC; the log drains,
which run on the leader). It never writes etcd and never reorders lines by itself.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import operator
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

import grpc

from paas.common.grpcutil import CHANNEL_OPTIONS
from paas.common.logformat import SCHEDULER_INSTANCE
from paas.common.logruns import last_lines, run_batches, runs_of, runs_of_lines
from paas.common.pki import Credentials
from paas.common.tls import dial
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from paas.scheduler.events import EventLog, notice
from paas.scheduler.logmerge import (
    INBOX_LINES,
    Arrival,
    Cursors,
    Inbox,
    Pushed,
    TimeOrderWindow,
    latest_run,
)
from paas.scheduler.sessions import AgentSession, Sessions

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import AgentAsyncStub

# What reads a merged stream (the Logs RPC, a log drain) is given: LogReader.merged_batches.
LogStream = Callable[[pb.LogsRequest], AsyncIterator[pb.LogBatch]]

DEFAULT_LOG_LINES = 100
# A follow stream of a node that broke while its session stayed up is resumed after this.
FOLLOW_RETRY = 1.0
# One node's history must come within this (seconds), or the node is said unavailable.
HISTORY_TIMEOUT = 10.0


class LogReader:
    """Reads apps' lines from the connected agents; holds one channel per agent address."""

    def __init__(
        self,
        sessions: Sessions,
        events: EventLog,
        tls: Callable[[], Credentials | None] = lambda: None,
    ) -> None:
        """`tls`: the scheduler's own credentials to dial agents with, as they are now
        (they are renewed: servingcert.py); None: plaintext."""
        self._sessions = sessions
        self._events = events
        self._tls = tls
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._serial = ""  # of the credentials the kept channels were made with
        self._retired: list[grpc.aio.Channel] = []  # made with older credentials

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close(None)
        self._channels.clear()
        self._retired.clear()

    async def merged_batches(self, request: pb.LogsRequest) -> AsyncIterator[pb.LogBatch]:
        """The app's lines of every node and the scheduler's events, merged: the last
        `request.lines` of the history in time order, then (with follow) live lines as
        the window releases them. Packed: the batches carry runs, not lines."""
        count = request.lines or DEFAULT_LOG_LINES
        # A follower that reconnects says where it had got to; nothing before that again.
        cursors = Cursors(request.after)
        started = time.time()
        following = request.follow and not request.previous
        # A follower that resumes reads the nodes from its cursors on, all of it
        # (their agents catch it up from their buffers and spools): no history first,
        # which would be only the last `count` lines of each.
        resuming = following and bool(request.after)
        runs = await self._history(request, count, cursors, nodes=not resuming)
        if not following:
            for part in run_batches(runs):
                yield pb.LogBatch(runs=part)
            return
        # Live lines are those written since the history was read (seq drops the
        # overlap). A reader that resumes (it has cursors) also wants what a node that
        # rejoins late wrote meanwhile: its cursors and its own `since` bound that.
        live_since = request.since if request.after else max(started, request.since)
        # History lines that live ones may precede (the nodes were read each at its own
        # moment) go out merged with them, in time order.
        recent = bisect.bisect_left(runs, live_since, key=lambda run: run.timestamp)
        for part in run_batches(runs[:recent]):
            yield pb.LogBatch(runs=part)
        follow = _Follow(
            self._sessions,
            self._events,
            self.stub,
            request,
            cursors,
            live_since,
            count if resuming else INBOX_LINES,
        )
        async for batch in follow.batches(runs[recent:]):
            yield batch

    async def _history(
        self, request: pb.LogsRequest, count: int, cursors: Cursors, nodes: bool = True
    ) -> list[pb.LogRun]:
        """The last `count` lines the reader has not had, in time order (those of the
        nodes only if `nodes`; the scheduler's own events always); every line read is
        noted in `cursors`, those older than the last `count` too (the live part must
        not bring back history not asked for)."""
        history_request = pb.LogsRequest(
            app=request.app,
            app_id=request.app_id,
            lines=count,
            process=request.process,
            since=request.since,
            previous=request.previous,
            after=request.after,
            packed=True,
        )
        per_node = await asyncio.gather(
            *(
                self._read(session, history_request)
                for session in (self._sessions.connected() if nodes else [])
            )
        )
        if request.previous:
            per_node = latest_run(per_node)
        runs = [run for node_runs in per_node for run in node_runs]
        if request.process in ("", SCHEDULER_INSTANCE) and not request.previous:
            runs += runs_of_lines(
                line for line in self._events.recent(request.app) if line.timestamp >= request.since
            )
        runs = cursors.fresh(runs)  # noted, those older than the last `count` too
        runs.sort(key=lambda run: run.timestamp)
        return last_lines(runs, count)

    async def _read(self, session: AgentSession, request: pb.LogsRequest) -> list[pb.LogRun]:
        """One node's history, or a notice that it could not be read."""
        try:
            stream = self.stub(session.address, session.name).ReadLogs(
                request, timeout=HISTORY_TIMEOUT
            )
            return [run async for batch in stream for run in runs_of(batch)]
        except grpc.aio.AioRpcError as exc:
            text = f"logs of node {session.name} unavailable: {exc.details()}"
            return runs_of_lines([notice(request.app, text)])

    def stub(self, address: str, node: str) -> AgentAsyncStub:
        """The agent of `node` at `address` (one channel each, kept until `close`); with
        TLS its certificate must name `node`."""
        tls = self._tls()
        serial = tls.serial if tls is not None else ""
        if serial != self._serial:
            # Renewed: new channels present the new certificate; calls under way on the
            # old ones finish on them (a channel object lives on while a call holds it).
            self._serial = serial
            self._retired.extend(self._channels.values())
            self._channels.clear()
        channel = self._channels.get((address, node))
        if channel is None:
            channel = dial(address, tls, CHANNEL_OPTIONS, server_name=node)
            self._channels[(address, node)] = channel
        return pb_grpc.AgentStub(channel)


class _Follow:
    """One reader's live lines: a task per node (and one for the scheduler's events)
    feeding the inbox; the loop in `batches` puts them through the time-order window.

    Each node is followed from where the cursors say this reader is, so a node that
    comes back sends what it wrote meanwhile, and nothing twice. A lagging reader
    makes its nodes' streams wait (each node has a share of the inbox, and reads no
    more while it is full): their agents keep the lines and catch the reader up from
    its cursors, so nothing is dropped here.
    """

    def __init__(
        self,
        sessions: Sessions,
        events: EventLog,
        stub: Callable[[str, str], AgentAsyncStub],
        request: pb.LogsRequest,
        cursors: Cursors,
        since: float,
        lines: int = INBOX_LINES,
    ) -> None:
        """`lines`: of each instance a node has that the cursors do not name, the last
        this many (since `since`) come first."""
        self._sessions = sessions
        self._events = events
        self._stub = stub
        self._request = request
        self._cursors = cursors
        self._since = since
        self._lines = lines
        self._inbox = Inbox()
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()  # set when the loop takes: a waiting source may go on
        self._nodes: dict[str, asyncio.Task[None]] = {}

    async def batches(self, recent: Sequence[pb.LogRun]) -> AsyncIterator[pb.LogBatch]:
        """Live lines (stamped from `since` on) of every node, those that join later
        included, in batches as the window releases them; `recent` (history lines newer
        than `since`) goes out merged with them."""
        sessions, events = self._sessions, self._events
        app = self._request.app
        if recent:
            self._inbox.put(Arrival("", recent))  # the newest of the history go with them
        joined = sessions.subscribe()
        helpers = [asyncio.create_task(self._watch_joins(joined))]
        subscribed = None
        if self._request.process in ("", SCHEDULER_INSTANCE):
            subscribed = events.subscribe(app)
            helpers.append(asyncio.create_task(self._watch_events(subscribed)))
        loop = asyncio.get_running_loop()
        window = TimeOrderWindow(now=loop.time())
        try:
            for session in sessions.connected():
                self._start(session)
            while True:
                now = loop.time()
                while self._inbox:
                    arrival = self._inbox.take()
                    self._taken.set()
                    if window.push(arrival.source, arrival.runs, now) is Pushed.PASSED:
                        if arrival.whole is not None:
                            yield arrival.whole
                        else:
                            for part in run_batches(arrival.runs):
                                yield pb.LogBatch(runs=part)
                for part in run_batches(window.release(now)):
                    yield pb.LogBatch(runs=part)
                if self._inbox:
                    continue  # more came while the stream took the last
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(window.wake_at()):
                        await self._arrived.wait()
        finally:
            sessions.unsubscribe(joined)
            if subscribed is not None:
                events.unsubscribe(app, subscribed)
            for task in [*helpers, *self._nodes.values()]:
                task.cancel()

    def _offer(self, arrival: Arrival) -> None:
        """Put `arrival` in the inbox whatever its room (notices, the scheduler's events)."""
        self._inbox.put(arrival)
        self._arrived.set()

    async def _put(self, arrival: Arrival) -> None:
        """Put `arrival` once its source has room: until then, this node's stream waits."""
        while not self._inbox.has_room(arrival.source):
            self._taken.clear()
            await self._taken.wait()
        self._offer(arrival)

    def _start(self, session: AgentSession) -> None:
        old = self._nodes.get(session.name)
        if old is not None:
            old.cancel()
        self._nodes[session.name] = asyncio.create_task(self._follow_node(session))

    async def _follow_node(self, session: AgentSession) -> None:
        stub = self._stub(session.address, session.name)
        while True:
            try:
                async for batch in stub.ReadLogs(self._live_request(session.name)):
                    runs = runs_of(batch)
                    fresh = self._cursors.fresh(runs)
                    if fresh:
                        # Sent on as it came if all of it is fresh (and in runs already).
                        whole = (
                            batch
                            if not batch.lines
                            and len(fresh) == len(runs)
                            and all(map(operator.is_, fresh, runs))
                            else None
                        )
                        await self._put(Arrival(session.name, fresh, whole))
                return  # the agent ended the stream: it is stopping
            except grpc.aio.AioRpcError as exc:
                if self._sessions.get(session.name) is not session:
                    text = (
                        f"lost node {session.name} ({exc.details()}); its lines "
                        "follow when it is back"
                    )
                    self._offer(Arrival("", runs_of_lines([notice(self._request.app, text)])))
                    return
            # Still connected: the stream broke on its own; resume from the cursors.
            await asyncio.sleep(FOLLOW_RETRY)

    def _live_request(self, node: str) -> pb.LogsRequest:
        return pb.LogsRequest(
            app=self._request.app,
            app_id=self._request.app_id,
            lines=self._lines,
            process=self._request.process,
            follow=True,
            since=self._since,
            after=self._cursors.of_node(node),
            packed=True,
        )

    async def _watch_joins(self, joined: asyncio.Queue[AgentSession]) -> None:
        while True:
            self._start(await joined.get())

    async def _watch_events(self, events: asyncio.Queue[pb.LogLine]) -> None:
        while True:
            self._offer(Arrival("", runs_of_lines([await events.get()])))
