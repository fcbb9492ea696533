"""The leader's reconcile loop: read desired and actual, plan, commit, push.

Level-triggered: every pass re-reads the whole world from etcd and the agent
sessions, so a missed or duplicated wake-up changes nothing. It wakes on etcd
watch events, session changes and the grace timers of Sessions, never on a
polling sleep. Placement decisions belong to plan.py; writes to store.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from paas.proto import paas_pb2 as pb
from paas.scheduler.events import EventLog
from paas.scheduler.plan import (
    AppDesired,
    NodeView,
    Placed,
    Plan,
    Unplaced,
    plan,
    shortfall_text,
)
from paas.scheduler.sessions import Sessions
from paas.scheduler.settings import settings_from
from paas.scheduler.store import (
    Assign,
    InstanceRecord,
    NodeRecord,
    NotLeaderError,
    ReleaseRecord,
    Store,
    StoreError,
    Unassign,
    World,
)

log = logging.getLogger(__name__)


class Reconciler:
    """Keeps the assignments in etcd and the agents' desired sets matching the formation."""

    def __init__(self, store: Store, sessions: Sessions, events: EventLog) -> None:
        self._store = store
        self._sessions = sessions
        self._events = events
        self._dirty = asyncio.Event()
        self._releases: dict[tuple[str, int], ReleaseRecord] = {}
        self.world: World | None = None  # as of the last pass, for the API
        # Instances moving off a draining node: (app, name) -> the old node and the
        # assignment it keeps running until the new copy is up elsewhere.
        self._handoffs: dict[tuple[str, str], tuple[str, pb.Assignment]] = {}
        # What the app's log last said found no node, per (app, type): said again only
        # when it changes, not on every pass.
        self._unplaced: dict[tuple[str, str], Unplaced] = {}

    def kick(self) -> None:
        """Say: look again."""
        self._dirty.set()

    async def run(self) -> None:
        """Reconcile until cancelled (when this replica stops leading)."""
        watcher = asyncio.create_task(self._watch())
        try:
            self.kick()
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                try:
                    await self.reconcile_once()
                except NotLeaderError:
                    raise
                except StoreError as exc:
                    log.warning("reconcile failed, retrying: %s", exc)
                    await asyncio.sleep(0.5)
                    self.kick()
                except Exception:
                    # A bug must not stop reconciling for good: say so loudly and go on.
                    log.exception("reconcile pass failed")
                    await asyncio.sleep(1.0)
                    self.kick()
        finally:
            watcher.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                async for _ in self._store.changes():
                    self.kick()
            except StoreError as exc:
                log.warning("%s; re-listing", exc)
            # The watch ended or broke: re-read everything (the kick) and watch anew.
            self.kick()
            await asyncio.sleep(0.5)

    async def reconcile_once(self) -> None:
        world = await self._store.world(self._releases)
        nodes = [_node_view(node, self._sessions) for node in world.nodes.values()]
        desired = [
            AppDesired(
                app=app.name,
                release=app.release,
                formation={
                    type_: count
                    for type_, count in world.formations.get(app.name, {}).items()
                    if app.name in world.releases and type_ in world.releases[app.name].commands
                },
            )
            for app in world.apps.values()
        ]
        placed = [
            Placed(app=i.app, name=i.name, node=i.node, release=i.release) for i in world.instances
        ]
        result = plan(desired, nodes, placed)
        self._announce_unplaced(result, nodes)
        if not result.empty:
            self._hand_off(result, world)
            await self._store.apply(
                [
                    Assign(p.app, p.name, p.node, p.release, world.apps[p.app].create_revision)
                    for p in result.place
                ]
                + [Unassign(app, name) for app, name in result.stop]
            )
            # Only what was committed is told: an app destroyed meanwhile gets no event.
            self._announce(result, world)
            world = await self._store.world(self._releases)
        self.world = world
        self._push(world)

    def _announce(self, result: Plan, world: World) -> None:
        current = {(i.app, i.name): i.node for i in world.instances}
        moved: dict[tuple[str, str, str], int] = defaultdict(int)
        for p in result.place:
            before = current.get((p.app, p.name))
            if before is not None and before != p.node:
                moved[(p.app, before, p.node)] += 1
        for (app, src, dst), count in sorted(moved.items()):
            self._events.add(app, f"Moved {count} instance(s) from {src} to {dst}")

    def _announce_unplaced(self, result: Plan, nodes: list[NodeView]) -> None:
        """Say in the app's log what finds no node and why, when that changes (a plan
        with nothing else to do included: a scale-up with no node is not silent)."""
        for (app, type_), unplaced in sorted(result.unplaced.items()):
            if self._unplaced.get((app, type_)) != unplaced:
                self._events.add(app, shortfall_text(unplaced, type_, nodes))
        self._unplaced = dict(result.unplaced)

    def _hand_off(self, result: Plan, world: World) -> None:
        """Remember instances that leave a draining node that still runs them: it keeps
        them until their new copies are up (new before old, as a drain promises)."""
        draining = {name for name, node in world.nodes.items() if node.draining}
        current = {(i.app, str(i.name)): i for i in world.instances}
        for placed in result.place:
            before = current.get((placed.app, str(placed.name)))
            if before is None or before.node == placed.node or before.node not in draining:
                continue
            if self._sessions.get(before.node) is None:
                continue
            assignment = _assignment(before, world)
            if assignment is not None:
                self._handoffs[(placed.app, str(placed.name))] = (before.node, assignment)

    def _push(self, world: World) -> None:
        """Send every connected agent its whole desired set."""
        by_node: dict[str, list[pb.Assignment]] = defaultdict(list)
        records = {(r.app, str(r.name)): r for r in world.instances}
        for record in sorted(world.instances, key=lambda i: (i.app, i.name)):
            assignment = _assignment(record, world)
            if assignment is not None:
                by_node[record.node].append(assignment)
        for key, (old_node, old) in list(self._handoffs.items()):
            moved = records.get(key)
            session = self._sessions.get(moved.node) if moved else None
            report = session.reports.get(key) if session else None
            done = (
                moved is None
                or self._sessions.get(old_node) is None
                or (
                    report is not None
                    and moved is not None
                    and report.incarnation == moved.incarnation
                    and report.state == pb.UP
                )
            )
            if done:
                del self._handoffs[key]
            else:
                by_node[old_node].append(old)
        live_apps = sorted(app.id for app in world.apps.values())
        for session in self._sessions.connected():
            session.push(by_node.get(session.name, []), live_apps)

    def on_report(self) -> None:
        """An agent reported: a drain waiting for a new copy to be up may go on."""
        if self._handoffs and self.world is not None:
            self._push(self.world)


def _node_view(node: NodeRecord, sessions: Sessions) -> NodeView:
    """The node as placement sees it, from its state as Sessions decides it (so that a
    node takes instances exactly when `paas nodes` calls it ready)."""
    state = sessions.node_state(node.name, node.draining)
    return NodeView(
        name=node.name,
        ready=state != pb.NODE_LOST,
        draining=node.draining,  # a lost node that was draining still is when back
        capacity=node.capacity,
    )


def _assignment(record: InstanceRecord, world: World) -> pb.Assignment | None:
    release = world.releases.get(record.app)
    if release is None or release.version != record.release:
        return None  # its release is being replaced; the next pass sends the new one
    app = world.apps.get(record.app)
    if app is None:
        return None  # the app is being destroyed
    return pb.Assignment(
        app=record.app,
        app_id=app.id,
        name=str(record.name),
        type=record.name.type,
        incarnation=record.incarnation,
        release=record.release,
        command=release.commands.get(record.name.type, ""),
        dir=release.dir,
        env=release.env,
        settings=settings_from(release.settings.get(record.name.type, {})),
        slug=pb.Slug(digest=release.slug.digest, size=release.slug.size) if release.slug else None,
    )
