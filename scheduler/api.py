"""The scheduler's gRPC service: the public API of the CLI and the agents' sessions.

Every replica serves it; only the leader answers. A follower refuses with
FAILED_PRECONDITION and names the leader in the `paas-leader` trailing
metadata, which the CLI and the agents follow. Requests are validated here
(the CLI is not the only gate) before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import NoReturn

import grpc
from google.protobuf import json_format

from paas.common.drainurl import DrainURLError, parse_drain_url, redacted
from paas.common.formation import (
    Change,
    FormationError,
    Op,
    apply_changes,
    describe,
)
from paas.common.grpcutil import CHANNEL_OPTIONS, LEADER_METADATA_KEY
from paas.common.logbatch import batches
from paas.common.logformat import PAAS_STREAM, SCHEDULER_INSTANCE
from paas.common.names import InstanceName, NameError_, check_app_name
from paas.common.procfile import ProcfileError, parse_procfile
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from paas.scheduler.drains import Drains
from paas.scheduler.events import EventLog
from paas.scheduler.leader import Leadership
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.settings import settings_from, settings_problem
from paas.scheduler.store import (
    AppRecord,
    Assign,
    ConflictError,
    DrainRecord,
    InstanceRecord,
    NodeRecord,
    NotLeaderError,
    ReleaseRecord,
    Store,
    StoreError,
    Unassign,
)

log = logging.getLogger(__name__)

DEFAULT_LOG_LINES = 100
# An agent that sends nothing (not even a heartbeat) for this long is gone.
SESSION_SILENCE_TIMEOUT = 5.0
_FOLLOW_QUEUE = 10_000
# Live lines wait this long (seconds) so that those of several nodes go out in time order.
FOLLOW_REORDER = 0.15
# A follow stream of a node that broke while its session stayed up is resumed after this.
FOLLOW_RETRY = 1.0
_CONFLICT_RETRIES = 5
# A rolling restart waits this long for each instance to be up before the next.
ROLLING_STEP_TIMEOUT = 120.0

_OPS = {
    pb.FormationChange.SET: Op.SET,
    pb.FormationChange.ADD: Op.ADD,
    pb.FormationChange.SUB: Op.SUB,
}


class SchedulerService(pb_grpc.SchedulerServicer):
    """Answers the CLI and holds the agents' sessions, on the leader."""

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        sessions: Sessions,
        reconciler: Reconciler,
        events: EventLog,
    ) -> None:
        self._store = store
        self._leadership = leadership
        self._sessions = sessions
        self._reconciler = reconciler
        self._events = events
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._drains = Drains(store, events, stream=self._merged_batches)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self._drains.close()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()

    # ------------------------------------------------------------ guards

    async def _require_leader(self, context: grpc.aio.ServicerContext[object, object]) -> None:
        if self._leadership.is_leader:
            return
        leader = self._leadership.leader_address
        if leader:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this scheduler replica is a follower; the leader is {leader}",
                trailing_metadata=((LEADER_METADATA_KEY, leader),),
            )
        await context.abort(
            grpc.StatusCode.UNAVAILABLE, "no scheduler leader is elected yet; try again shortly"
        )

    async def _require_app(
        self, name: str, context: grpc.aio.ServicerContext[object, object]
    ) -> AppRecord:
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no app given")
        app = await self._store.app(name)
        if app is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown app {name!r} (`paas apps` lists them)"
            )
        return app

    # ------------------------------------------------------------ apps

    async def CreateApp(
        self, request: pb.CreateAppRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.App:
        await self._require_leader(context)
        try:
            check_app_name(request.name)
        except NameError_ as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            record = await self._store.create_app(request.name)
        except ConflictError:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"app {request.name!r} already exists"
            )
        except StoreError as exc:
            await _abort_store(context, exc)
        self._events.add(request.name, "App created")
        return pb.App(name=record.name, created_at=record.created_at)

    async def ListApps(
        self, request: pb.ListAppsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListAppsResponse:
        await self._require_leader(context)
        try:
            apps = await self._store.apps()
            result = []
            for app in sorted(apps.values(), key=lambda a: a.name):
                formation, _ = await self._store.formation(app.name)
                release = await self._store.release(app.name, app.release) if app.release else None
                result.append(
                    pb.App(
                        name=app.name,
                        release=app.release,
                        formation=formation,
                        process_types=list(release.commands) if release else [],
                        created_at=app.created_at,
                    )
                )
        except StoreError as exc:
            await _abort_store(context, exc)
        return pb.ListAppsResponse(apps=result)

    async def DestroyApp(
        self, request: pb.DestroyAppRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.DestroyAppResponse:
        # Issue 8 lands this RPC in the apps servicer; until then it is refused.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "apps destroy is not built yet")

    async def Deploy(
        self, request: pb.DeployRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.Release:
        await self._require_leader(context)
        try:
            commands = parse_procfile(request.procfile)
        except ProcfileError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        unknown = sorted(set(request.settings) - set(commands))
        if unknown:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"settings name unknown process type(s) {', '.join(unknown)} "
                f"(Procfile has: {', '.join(sorted(commands))})",
            )
        for type_, wanted in request.settings.items():
            problem = settings_problem(wanted, self._sessions.grace)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type_}: {problem}")
        settings = {
            type_: json_format.MessageToDict(wanted) for type_, wanted in request.settings.items()
        }
        if not os.path.isabs(request.dir):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the app directory must be an absolute path, got {request.dir!r}",
            )
        for _ in range(_CONFLICT_RETRIES):
            app = await self._require_app(request.app, context)
            try:
                formation, formation_rev = await self._store.formation(app.name)
                if app.release == 0 and not formation and "web" in commands:
                    formation = {"web": 1}  # as Heroku does on the first deploy
                for type_ in commands:
                    formation.setdefault(type_, 0)
                release = ReleaseRecord(
                    app=app.name,
                    version=app.release + 1,
                    dir=request.dir,
                    commands=commands,
                    env=dict(request.env),
                    created_at=time.time(),
                    description=f"Deploy of {request.dir}",
                    settings=settings,
                )
                await self._store.add_release(app, release, formation, formation_rev)
            except ConflictError:
                continue
            except StoreError as exc:
                await _abort_store(context, exc)
            self._events.add(
                app.name, f"Release v{release.version} created ({', '.join(commands)})"
            )
            self._reconciler.kick()
            return _release_pb(release)
        await context.abort(
            grpc.StatusCode.ABORTED, "the app changed concurrently too often; try again"
        )

    # ------------------------------------------------------------ formation

    async def Scale(
        self, request: pb.ScaleRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ScaleResponse:
        await self._require_leader(context)
        if not request.changes:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no formation change given")
        for _ in range(_CONFLICT_RETRIES):
            app = await self._require_app(request.app, context)
            try:
                formation, formation_rev = await self._store.formation(app.name)
                release = await self._store.release(app.name, app.release) if app.release else None
                changes = [_change(c) for c in request.changes]
                types = list(release.commands) if release else []
                new = apply_changes(formation, changes, types)
                await self._store.set_formation(app, new, formation_rev)
            except FormationError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ConflictError:
                continue
            except StoreError as exc:
                await _abort_store(context, exc)
            self._events.add(app.name, f"Scaled to {describe(new)}")
            self._reconciler.kick()
            return pb.ScaleResponse(formation=new)
        await context.abort(
            grpc.StatusCode.ABORTED, "the formation changed concurrently too often; try again"
        )

    # ------------------------------------------------------------ restart and stop

    async def Restart(
        self, request: pb.RestartRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RestartResponse:
        await self._require_leader(context)
        await self._require_app(request.app, context)
        try:
            records = [r for r in await self._store.instances() if r.app == request.app]
        except StoreError as exc:
            await _abort_store(context, exc)
        chosen = _select(records, request.process)
        if request.process and not chosen:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no instance of {request.app} matches {request.process!r} (`paas ps` lists them)",
            )
        if len(chosen) == 1:
            try:
                await self._reassign(chosen[0])
            except StoreError as exc:
                await _abort_store(context, exc)
        elif chosen:
            # Rolling: one instance at a time, the next once the last is up again.
            task = asyncio.create_task(self._rolling_restart(request.app, chosen))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        names = [str(r.name) for r in chosen]
        self._events.add(request.app, f"Restarting {', '.join(names) or 'nothing'}")
        return pb.RestartResponse(instances=names)

    async def _reassign(self, record: InstanceRecord) -> int:
        """Give the instance a new incarnation on its node: the agent restarts it."""
        await self._store.apply([Assign(record.app, record.name, record.node, record.release)])
        self._reconciler.kick()
        for current in await self._store.instances():
            if current.app == record.app and current.name == record.name:
                return current.incarnation
        return 0

    async def _rolling_restart(self, app: str, records: list[InstanceRecord]) -> None:
        for record in records:
            try:
                incarnation = await self._reassign(record)
            except StoreError as exc:
                self._events.add(app, f"Rolling restart stopped at {record.name}: {exc}")
                return
            status = await self._sessions.wait_for_report(
                record.node, app, str(record.name), incarnation, {pb.UP}, ROLLING_STEP_TIMEOUT
            )
            if status is None:
                self._events.add(
                    app,
                    f"{record.name} was not up within {ROLLING_STEP_TIMEOUT:.0f}s of its "
                    "restart; going on with the next",
                )

    async def Stop(
        self, request: pb.StopRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.StopResponse:
        await self._require_leader(context)
        await self._require_app(request.app, context)
        try:
            name = InstanceName.parse(request.instance)
        except NameError_ as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            records = await self._store.instances()
            found = [r for r in records if r.app == request.app and r.name == name]
            if not found:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no instance {request.instance} in {request.app} (`paas ps` lists them)",
                )
            # Unassigned, the agent stops it; the formation places it anew.
            await self._store.apply([Unassign(request.app, name)])
        except StoreError as exc:
            await _abort_store(context, exc)
        self._events.add(request.app, f"Stopped {name}; the formation replaces it")
        self._reconciler.kick()
        return pb.StopResponse()

    # ------------------------------------------------------------ status

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListInstancesResponse:
        await self._require_leader(context)
        if request.app:
            await self._require_app(request.app, context)
        try:
            records = await self._store.instances()
        except StoreError as exc:
            await _abort_store(context, exc)
        views = []
        for record in sorted(records, key=lambda r: (r.app, r.name)):
            if request.app and record.app != request.app:
                continue
            view = pb.InstanceView(
                app=record.app,
                name=str(record.name),
                type=record.name.type,
                node=record.node,
                state=pb.PENDING,
                release=record.release,
                incarnation=record.incarnation,
            )
            session = self._sessions.get(record.node)
            status = session.reports.get((record.app, str(record.name))) if session else None
            if not self._sessions.is_ready(record.node):
                view.state = pb.LOST
            elif status is not None and status.incarnation == record.incarnation:
                view.state = status.state
                view.pid = status.pid
                view.port = status.port
                view.restarts = status.restarts
                view.last_exit = status.last_exit
                view.since = status.since
                view.reason = status.reason
                view.next_start = status.next_start
                view.exited_at = status.exited_at
                view.ran_for = status.ran_for
                view.last_lines.extend(status.last_lines)
                view.cpu_percent = status.cpu_percent
                view.rss_bytes = status.rss_bytes
                view.started_at = status.started_at
            views.append(view)
        return pb.ListInstancesResponse(instances=views)

    async def ListNodes(
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListNodesResponse:
        await self._require_leader(context)
        try:
            nodes = await self._store.nodes()
            records = await self._store.instances()
        except StoreError as exc:
            await _abort_store(context, exc)
        counts: dict[str, int] = {}
        for record in records:
            counts[record.node] = counts.get(record.node, 0) + 1
        result = []
        for node in sorted(nodes.values(), key=lambda n: n.name):
            session = self._sessions.get(node.name)
            reports = list(session.reports.values()) if session else []
            result.append(
                pb.Node(
                    name=node.name,
                    address=node.address,
                    state=self._sessions.node_state(node.name, node.draining),
                    capacity=node.capacity,
                    instances=counts.get(node.name, 0),
                    last_seen=session.last_seen if session else 0.0,
                    labels=node.labels,
                    cpu_percent=sum(r.cpu_percent for r in reports),
                    rss_bytes=sum(r.rss_bytes for r in reports),
                )
            )
        return pb.ListNodesResponse(nodes=result)

    async def Drain(
        self, request: pb.DrainRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.Node:
        await self._require_leader(context)
        try:
            nodes = await self._store.nodes()
            node = nodes.get(request.node)
            if node is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"unknown node {request.node!r} (`paas nodes` lists them)",
                )
            if node.draining != request.drain:
                node = dataclasses.replace(node, draining=request.drain)
                await self._store.put_node(node)
        except StoreError as exc:
            await _abort_store(context, exc)
        self._reconciler.kick()
        log.info("node %s %s", node.name, "draining" if node.draining else "undrained")
        return pb.Node(
            name=node.name,
            address=node.address,
            state=self._sessions.node_state(node.name, node.draining),
            capacity=node.capacity,
            labels=node.labels,
        )

    # ------------------------------------------------------------ logs

    async def Logs(
        self, request: pb.LogsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.LogBatch]:
        """The app's lines, a batch at a time: the history, then live lines as released."""
        await self._require_leader(context)
        await self._require_app(request.app, context)
        if request.previous and not _is_instance(request.process):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "previous needs one instance (process like web.3), not "
                f"{request.process or 'every process'!r}",
            )
        async for batch in self._merged_batches(request):
            yield batch

    async def _merged_batches(self, request: pb.LogsRequest) -> AsyncIterator[pb.LogBatch]:
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

    # ------------------------------------------------------------ log drains

    async def AddDrain(
        self, request: pb.AddDrainRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.LogDrain:
        await self._require_leader(context)
        await self._require_app(request.app, context)
        try:
            url = parse_drain_url(request.url).url
        except DrainURLError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        drain = DrainRecord(
            app=request.app, url=url, token=f"d.{uuid.uuid4()}", created_at=time.time()
        )
        try:
            await self._store.add_drain(drain)
        except ConflictError:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"log drain {redacted(url)} is already added to {request.app} "
                "(`paas drains` lists them)",
            )
        except StoreError as exc:
            await _abort_store(context, exc)
        self._events.add(request.app, f"Log drain {redacted(url)} added")
        self._drains.kick()
        return self._drains.view(drain)

    async def RemoveDrain(
        self, request: pb.RemoveDrainRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.LogDrain:
        await self._require_leader(context)
        await self._require_app(request.app, context)
        url = request.url.strip()
        try:
            drain = await self._store.remove_drain(request.app, url) if url else None
        except StoreError as exc:
            await _abort_store(context, exc)
        if drain is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no log drain {redacted(url)!r} on {request.app} (`paas drains` lists them)",
            )
        view = self._drains.view(drain)
        await self._drains.forget(drain.app, drain.url)
        self._events.add(request.app, f"Log drain {redacted(url)} removed")
        return view

    async def ListDrains(
        self, request: pb.ListDrainsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListDrainsResponse:
        await self._require_leader(context)
        await self._require_app(request.app, context)
        try:
            drains = await self._store.drains(request.app)
        except StoreError as exc:
            await _abort_store(context, exc)
        return pb.ListDrainsResponse(drains=[self._drains.view(drain) for drain in drains])

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    # ------------------------------------------------------------ agent sessions

    async def Session(
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.SchedulerMessage]:
        await self._require_leader(context)
        try:
            first = await asyncio.wait_for(anext(request_iterator), SESSION_SILENCE_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        session = AgentSession(first.hello)
        try:
            await self._register(session)
        except NotLeaderError:
            await self._require_leader(context)
        except StoreError as exc:
            await _abort_store(context, exc)
        self._sessions.attach(session)
        log.info("agent %s connected from %s", session.name, context.peer())
        reader = asyncio.create_task(self._read_session(session, request_iterator))
        try:
            async for message in session.outgoing():
                yield message
        finally:
            reader.cancel()
            self._sessions.detach(session)
            log.info("agent %s disconnected", session.name)

    async def _register(self, session: AgentSession) -> None:
        nodes = await self._store.nodes()
        known = nodes.get(session.name)
        record = NodeRecord(
            name=session.name,
            address=session.address,
            capacity=session.capacity,
            labels=session.labels,
            draining=known.draining if known else False,
        )
        if known != record:
            await self._store.put_node(record)

    async def _read_session(
        self, session: AgentSession, messages: AsyncIterator[pb.AgentMessage]
    ) -> None:
        try:
            while True:
                message = await asyncio.wait_for(anext(messages), SESSION_SILENCE_TIMEOUT)
                kind = message.WhichOneof("kind")
                if kind == "status":
                    # Reports feed `paas ps`; placement does not read them, so no kick.
                    session.report(message.status)
                    self._sessions.notify_report()
                    self._reconciler.on_report()
                else:
                    session.heartbeat()
        except (StopAsyncIteration, TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            session.close()

    def on_leadership(self, leading: bool) -> None:
        self._drains.on_leadership(leading)
        if not leading:
            # Agents must find the new leader: end every session now.
            self._sessions.close_all()


def _select(records: list[InstanceRecord], process: str) -> list[InstanceRecord]:
    """The instances `process` names: all, a type, or one instance."""
    ordered = sorted(records, key=lambda r: r.name)
    if not process:
        return ordered
    if "." in process:
        return [r for r in ordered if str(r.name) == process]
    return [r for r in ordered if r.name.type == process]


def _change(change: pb.FormationChange) -> Change:
    if change.count < 0:
        raise FormationError(f"invalid count {change.count} for {change.type}")
    return Change(change.type, _OPS[change.op], change.count)


def _release_pb(release: ReleaseRecord) -> pb.Release:
    return pb.Release(
        app=release.app,
        version=release.version,
        dir=release.dir,
        commands=release.commands,
        env=release.env,
        created_at=release.created_at,
        description=release.description,
        settings={t: settings_from(v) for t, v in release.settings.items()},
    )


def _is_instance(process: str) -> bool:
    try:
        InstanceName.parse(process)
    except NameError_:
        return False
    return True


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


def _notice(app: str, text: str) -> pb.LogLine:
    return pb.LogLine(
        timestamp=time.time(), app=app, instance=SCHEDULER_INSTANCE, stream=PAAS_STREAM, text=text
    )


async def _abort_store(
    context: grpc.aio.ServicerContext[object, object], exc: StoreError
) -> NoReturn:
    if isinstance(exc, NotLeaderError):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica just lost leadership; retry")
    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    raise AssertionError("unreachable")  # abort raises
