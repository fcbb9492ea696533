"""The scheduler's gRPC service: the public API of the CLI and the agents' sessions.

Every replica serves it; only the leader answers. A follower refuses with
FAILED_PRECONDITION and names the leader in the `paas-leader` trailing
metadata, which the CLI and the agents follow. Requests are validated here
(the CLI is not the only gate) before anything is written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
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
from paas.common.grpcutil import LEADER_METADATA_KEY
from paas.common.names import InstanceName, NameError_, check_app_name
from paas.common.procfile import ProcfileError, parse_procfile
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from paas.scheduler.drains import Drains
from paas.scheduler.events import EventLog
from paas.scheduler.leader import Leadership
from paas.scheduler.logreader import LogReader
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

# An agent that sends nothing (not even a heartbeat) for this long is gone.
SESSION_SILENCE_TIMEOUT = 5.0
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
        self._background: set[asyncio.Task[None]] = set()
        self._logs = LogReader(sessions, events)
        self._drains = Drains(store, events, stream=self._logs.merged_batches)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await self._drains.close()
        await self._logs.close()

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
        async for batch in self._logs.merged_batches(request):
            yield batch

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


async def _abort_store(
    context: grpc.aio.ServicerContext[object, object], exc: StoreError
) -> NoReturn:
    if isinstance(exc, NotLeaderError):
        await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica just lost leadership; retry")
    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    raise AssertionError("unreachable")  # abort raises
