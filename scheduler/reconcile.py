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
from paas.scheduler.plan import AppDesired, NodeView, Placed, Plan, plan
from paas.scheduler.sessions import Sessions
from paas.scheduler.settings import settings_from
from paas.scheduler.store import (
    Assign,
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
        nodes = [
            NodeView(
                name=node.name,
                ready=self._sessions.is_ready(node.name),
                draining=node.draining,
                capacity=node.capacity,
            )
            for node in world.nodes.values()
        ]
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
        if not result.empty:
            self._announce(result, world)
            await self._store.apply(
                [Assign(p.app, p.name, p.node, p.release) for p in result.place]
                + [Unassign(app, name) for app, name in result.stop]
            )
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
        for (app, type_), count in sorted(result.unplaced.items()):
            self._events.add(app, f"No room for {count} {type_} instance(s): every node is full")

    def _push(self, world: World) -> None:
        """Send every connected agent its whole desired set."""
        by_node: dict[str, list[pb.Assignment]] = defaultdict(list)
        for record in sorted(world.instances, key=lambda i: (i.app, i.name)):
            release = world.releases.get(record.app)
            if release is None or release.version != record.release:
                continue  # its release is being replaced; the next pass sends the new one
            by_node[record.node].append(
                pb.Assignment(
                    app=record.app,
                    name=str(record.name),
                    type=record.name.type,
                    incarnation=record.incarnation,
                    release=record.release,
                    command=release.commands.get(record.name.type, ""),
                    dir=release.dir,
                    env=release.env,
                    settings=settings_from(release.settings.get(record.name.type, {})),
                )
            )
        for session in self._sessions.connected():
            session.push(by_node.get(session.name, []))
