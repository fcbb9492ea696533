"""The instances: ListInstances (`paas ps`), Restart, Stop and Why (`paas why`).

ListInstances joins the assignments in etcd (and a rollout's new copies, the
surges, listed beside the instances they replace) with what each agent last
reported; a restart gives an instance a new incarnation (rolling.py); a stop
unassigns it, and the formation places it anew.
"""

from __future__ import annotations

from collections.abc import Callable

from paas.common.names import InstanceName
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound
from paas.scheduler.events import EventLog
from paas.scheduler.explain import explain
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app, select
from paas.scheduler.plan import lowest_free
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.rolling import Restarts
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import InstanceRecord, Store, SurgeRecord, Unassign


class InstancesService:
    """ListInstances, Restart, Stop and Why."""

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        reconciler: Reconciler,
        events: EventLog,
        restarts: Restarts,
        one_offs: Callable[[str], list[pb.InstanceView]] = lambda _app: [],
    ) -> None:
        """`one_offs`: the rows of an app's running one-offs (runs.Runs.views)."""
        self._one_offs = one_offs
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler
        self._events = events
        self._restarts = restarts

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        if request.app:
            await require_app(self._store, request.app)
        records: list[InstanceRecord | SurgeRecord] = [*await self._store.instances(request.app)]
        # A rollout's new copies are listed beside the instances they replace.
        records += await self._store.surges(request.app)
        views = []
        for record in sorted(records, key=lambda r: (r.app, r.name, r.release)):
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
            status = (
                session.reports.get((record.app, str(record.name), record.release))
                if session
                else None
            )
            # A lost node's instances are lost whatever they last reported; a draining
            # node still runs its own until their new copies are up.
            if self._sessions.node_state(record.node, draining=False) == pb.NODE_LOST:
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
        if request.app:
            views.extend(self._one_offs(request.app))
        return pb.ListInstancesResponse(
            instances=views, unplaced=await self._unplaced(request.app, records)
        )

    async def _unplaced(
        self, app: str, records: list[InstanceRecord | SurgeRecord]
    ) -> list[pb.UnplacedType]:
        """What the last reconcile pass found no node for, with the names the formation
        asks for that no assignment has (a move that found no node keeps its old one)."""
        found = []
        for (of_app, type_), reason in sorted(self._reconciler.unplaced().items()):
            if app and of_app != app:
                continue
            formation, _ = await self._store.formation(of_app)
            held = {r.name.index for r in records if r.app == of_app and r.name.type == type_}
            missing = max(0, formation.get(type_, 0) - len(held))
            names = [str(InstanceName(type_, i)) for i in lowest_free(held, missing)]
            found.append(
                pb.UnplacedType(
                    app=of_app, type=type_, count=len(names), reason=reason, names=names
                )
            )
        return [u for u in found if u.count]

    async def Why(self, request: pb.WhyRequest, context: Context) -> pb.WhyResponse:
        app = await require_app(self._store, request.app)
        name = InstanceName.parse(request.instance)
        world, desired, nodes, placed = await self._reconciler.placement_inputs()
        formation = world.formations.get(app.name, {})
        release = world.releases.get(app.name)
        held = any(i.app == app.name and i.name == name for i in placed)
        if not held and (release is None or name.type not in release.commands):
            raise NotFound(
                f"{app.name} has no process type {name.type!r} (`paas ps` lists its instances)"
            )
        if not held and name.index > formation.get(name.type, 0):
            raise NotFound(
                f"{app.name} asks for {formation.get(name.type, 0)} {name.type} instance(s): "
                f"{name} is not one of them (`paas scale {name.type}={name.index}` would make it)"
            )
        rules = {(d.app, type_): rule for d in desired for type_, rule in d.placement.items()}
        found = explain(app.name, name, nodes, placed, rules)
        return pb.WhyResponse(
            instance=found.instance,
            node=found.node,
            nodes=found.nodes,
            candidates=found.candidates,
            filters=[pb.WhyFilter(filter=f.filter, nodes=f.nodes) for f in found.filters],
            summary=found.summary,
        )

    async def Restart(self, request: pb.RestartRequest, context: Context) -> pb.RestartResponse:
        await require_app(self._store, request.app)
        records = await self._store.instances(request.app)
        chosen = select(records, request.process)
        if request.process and not chosen:
            raise NotFound(
                f"no instance of {request.app} matches {request.process!r} (`paas ps` lists them)"
            )
        if len(chosen) == 1:
            await self._restarts.reassign(chosen[0])
        elif chosen:
            # Rolling: one instance at a time, the next once the last is up again.
            self._restarts.roll(request.app, chosen)
        names = [str(r.name) for r in chosen]
        self._events.add(request.app, f"Restarting {', '.join(names) or 'nothing'}")
        return pb.RestartResponse(instances=names)

    async def Stop(self, request: pb.StopRequest, context: Context) -> pb.StopResponse:
        await require_app(self._store, request.app)
        name = InstanceName.parse(request.instance)
        records = await self._store.instances(request.app)
        found = [r for r in records if r.app == request.app and r.name == name]
        if not found:
            raise NotFound(
                f"no instance {request.instance} in {request.app} (`paas ps` lists them)"
            )
        # Unassigned, the agent stops it; the formation places it anew.
        await self._store.apply([Unassign(request.app, name)])
        self._events.add(request.app, f"Stopped {name}; the formation replaces it")
        self._reconciler.kick()
        return pb.StopResponse()
