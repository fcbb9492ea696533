"""The leader's reconcile loop: read desired and actual, plan, commit, push.

Level-triggered: every pass plans from the whole world, as the informer's
watch-fed cache of etcd holds it, and the agent sessions, so a missed or
duplicated wake-up changes nothing. It wakes on the informer's changes, session
changes and the grace timers of Sessions, never on a polling sleep. Placement
decisions belong to plan.py; writes to store.py (batched txns, each guarded by
leadership and by the revision the plan was made from). After the plan, each
pass takes the rollouts one step (rollout.py: a new release replaces the
instances a few at a time, new copies beside the old). Only agents whose
desired set changed are sent it; a desired set holds the instances and the
rollouts' new copies (surges), each with its own release.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from paas.common.placement import PlacementError, TypePlacement
from paas.proto import paas_pb2 as pb
from paas.scheduler.events import EventLog
from paas.scheduler.informer import Informer
from paas.scheduler.plan import (
    AppDesired,
    NodeView,
    Placed,
    Plan,
    Unplaced,
    plan,
    shortfall_text,
)
from paas.scheduler.rollout import RELEASE_PHASE, ReleasePhaseHook, Rollouts
from paas.scheduler.sessions import Sessions
from paas.scheduler.settings import placement_of, settings_from
from paas.scheduler.store import (
    Assign,
    InstanceRecord,
    NodeRecord,
    NotLeaderError,
    ReleaseRecord,
    Store,
    StoreError,
    SurgeRecord,
    Unassign,
    World,
    commit,
)

log = logging.getLogger(__name__)

# Per node name: the record, (ready, room taken) and the view built from them.
ViewCache = dict[str, tuple[NodeRecord, tuple[bool, int], NodeView]]


class Reconciler:
    """Keeps the assignments in etcd and the agents' desired sets matching the formation."""

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        events: EventLog,
        release_phase: ReleasePhaseHook | None = None,
    ) -> None:
        """`release_phase`: runs a release's `release` Procfile entry before its rollout
        replaces anything (None: a release phase counts as done at once)."""
        self._store = store
        self._sessions = sessions
        self._events = events
        self._dirty = asyncio.Event()
        self.rollouts = Rollouts(store, sessions, events, self.kick, release_phase)
        self.world: World | None = None  # as of the last pass, for the API
        # Instances moving off a draining node: (app, name) -> the old node and the
        # assignment it keeps running until the new copy is up elsewhere.
        self._handoffs: dict[tuple[str, str], tuple[str, pb.Assignment]] = {}
        # What the app's log last said found no node, per (app, type): said again only
        # when it changes, not on every pass.
        self._unplaced: dict[tuple[str, str], Unplaced] = {}
        self._unplaced_text: dict[tuple[str, str], str] = {}
        self._informer = Informer(store, self.kick)
        # Per instance, the assignment last built and what it was built from, so that
        # a pass rebuilds only what changed; per node, what its session was last sent.
        self._assignments: dict[tuple[str, str, int], tuple[tuple[Any, ...], pb.Assignment]] = {}
        self._pushed: dict[str, tuple[object, list[tuple[Any, ...]], list[str]]] = {}
        self.pushes = 0  # desired sets sent, for tests and benchmarks
        # One-off runs per node (runs.Runs.busy): room they hold, taken off capacity.
        self.busy: Callable[[], Mapping[str, int]] = dict
        # Per node, the view last built and what it was built from: most passes at
        # thousands of nodes change few of them.
        self._views: ViewCache = {}

    def kick(self) -> None:
        """Say: look again."""
        self._dirty.set()

    async def run(self) -> None:
        """Reconcile until cancelled (when this replica stops leading)."""
        self._informer = Informer(self._store, self.kick)  # a new term lists afresh
        self._pushed.clear()
        watcher = asyncio.create_task(self._informer.run())
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
            self.rollouts.close()

    async def _world(self) -> tuple[World, int]:
        """The world as the informer's cache holds it, and the revision it is at."""
        await self._informer.caught_up(0)
        listing = self._informer.listing
        apps = dict(listing.apps)
        history = dict(listing.releases)
        world = World(
            apps=apps,
            formations=dict(listing.formations),
            releases={
                app.name: history[(app.name, app.release)]
                for app in apps.values()
                if (app.name, app.release) in history
            },
            instances=list(listing.instances.values()),
            nodes=dict(listing.nodes),
            surges=list(listing.surges.values()),
            history=history,
        )
        return world, listing.revision

    async def reconcile_once(self) -> None:
        world, revision = await self._world()
        desired, nodes, placed = plan_inputs(world, self._sessions, self.busy(), self._views)
        result = plan(desired, nodes, placed)
        self._announce_unplaced(result, nodes)
        if not result.empty:
            self._hand_off(result, world)
            done = await commit(
                self._store,
                [
                    Assign(p.app, p.name, p.node, p.release, world.apps[p.app].create_revision)
                    for p in result.place
                ]
                + [Unassign(app, name) for app, name in result.stop],
                revision,
            )
            # Only what was committed is told: an app destroyed meanwhile gets no event.
            self._announce(result, world)
            await self._informer.caught_up(done.revision)
            world, _ = await self._world()
            nodes = _node_views(world, self._sessions, self.busy(), self._views)
        wrote = await self.rollouts.step(world, _room(world, nodes), _allowed_nodes(world, nodes))
        if wrote:
            await self._informer.caught_up(wrote)
            world, _ = await self._world()
        self.world = world
        self._push(world)

    async def preview(
        self, app: str, formation: Mapping[str, int]
    ) -> tuple[Plan, World, list[NodeView]]:
        """What a pass would do if `app` had `formation` (`paas scale --plan`): the
        plan made from the informer's cache as it is now, committed nowhere."""
        world, _ = await self._world()
        world = dataclasses.replace(world, formations={**world.formations, app: dict(formation)})
        desired, nodes, placed = plan_inputs(world, self._sessions, self.busy())
        return plan(desired, nodes, placed), world, nodes

    async def placement_inputs(
        self,
    ) -> tuple[World, list[AppDesired], list[NodeView], list[Placed]]:
        """The world and what plan() is given for it, as a pass now would (`paas why`)."""
        world, _ = await self._world()
        return (world, *plan_inputs(world, self._sessions, self.busy()))

    def unplaced(self) -> dict[tuple[str, str], str]:
        """What the last pass found no node for, per (app, type): the log's words."""
        return dict(self._unplaced_text)

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
        texts = {
            key: shortfall_text(unplaced, key[1], nodes)
            for key, unplaced in result.unplaced.items()
        }
        for (app, type_), unplaced in sorted(result.unplaced.items()):
            if self._unplaced.get((app, type_)) != unplaced:
                self._events.add(app, texts[(app, type_)])
        self._unplaced = dict(result.unplaced)
        self._unplaced_text = texts

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
        """Send each connected agent its whole desired set, if it changed since last sent."""
        by_node: dict[str, list[pb.Assignment]] = defaultdict(list)
        signs: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        records = {(r.app, str(r.name)): r for r in world.instances}
        built: dict[tuple[str, str, int], tuple[tuple[Any, ...], pb.Assignment]] = {}
        copies: list[InstanceRecord | SurgeRecord] = [*world.instances, *world.surges]
        for record in sorted(copies, key=lambda i: (i.app, i.name.type, i.name.index, i.release)):
            copy = (record.app, str(record.name), record.release)
            app = world.apps.get(record.app)
            # Everything the assignment is made of: a release's commands, env and
            # settings never change once written (only its rollout status does).
            sign = (record.node, record.incarnation, record.release, app.id if app else "")
            before = self._assignments.get(copy)
            if before is not None and before[0] == sign:
                assignment: pb.Assignment | None = before[1]
            else:
                assignment = _assignment(record, world)
            if assignment is not None:
                built[copy] = (sign, assignment)
                by_node[record.node].append(assignment)
                signs[record.node].append(sign)
        self._assignments = built
        for key, (old_node, old) in list(self._handoffs.items()):
            moved = records.get(key)
            session = self._sessions.get(moved.node) if moved else None
            report = (
                session.report_of(key[0], key[1], moved.incarnation) if moved and session else None
            )
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
                signs[old_node].append(("handoff", *key, old.incarnation))
        live_apps = sorted(app.id for app in world.apps.values())
        for session in self._sessions.connected():
            sent = (session, signs.get(session.name, []), live_apps)
            if self._pushed.get(session.name) == sent:
                continue  # the same session has exactly this set already
            self._pushed[session.name] = sent
            self.pushes += 1
            session.push(by_node.get(session.name, []), live_apps)

    def on_report(self) -> None:
        """An agent reported: a drain waiting for a new copy to be up may go on, and a
        rollout waiting for its new copies looks again."""
        if self.rollouts.active:
            self.kick()
        if self._handoffs and self.world is not None:
            self._push(self.world)


def plan_inputs(
    world: World,
    sessions: Sessions,
    busy: Mapping[str, int] | None = None,
    views: ViewCache | None = None,
) -> tuple[list[AppDesired], list[NodeView], list[Placed]]:
    """What plan() is given for `world`: each app's release and formation (types of
    its current release only, never its release phase), the nodes as Sessions sees
    them (less the room their one-off runs and the rollouts' new copies hold), the
    assignments."""
    nodes = _node_views(world, sessions, busy, views)
    desired = []
    for app in world.apps.values():
        release = _placing(world, app.name)
        desired.append(
            AppDesired(
                app=app.name,
                release=release.version if release else 0,
                formation={
                    type_: count
                    for type_, count in world.formations.get(app.name, {}).items()
                    if release and type_ in release.commands and type_ != RELEASE_PHASE
                },
                placement=_placement(release),
            )
        )
    placed = [
        Placed(app=i.app, name=i.name, node=i.node, release=i.release) for i in world.instances
    ]
    return desired, nodes, placed


def _placing(world: World, app: str) -> ReleaseRecord | None:
    """The release new instances of `app` are placed with: the current one, but while
    its release phase has not run, the one before (none before the first: nothing
    runs a release whose release phase has not passed)."""
    release = world.releases.get(app)
    if release is None or release.status != "rolling" or release.phase_done:
        return release
    if RELEASE_PHASE not in release.commands:
        return release
    return world.history.get((app, release.previous))


def _node_view(node: NodeRecord, sessions: Sessions, taken: int = 0) -> NodeView:
    """The node as placement sees it, from its state as Sessions decides it (so that a
    node takes instances exactly when `paas nodes` calls it ready), its capacity less
    the room `taken` (by its one-off runs and the rollouts' new copies on it)."""
    state = sessions.node_state(node.name, node.draining)
    return NodeView(
        name=node.name,
        ready=state != pb.NODE_LOST,
        draining=node.draining,  # a lost node that was draining still is when back
        capacity=max(0, node.capacity - taken),
        labels=node.labels,
        memory=node.memory,
        cpu=node.cpu,
    )


def _placement(release: ReleaseRecord | None) -> dict[str, TypePlacement]:
    """The placement rules of each process type of `release` that has some."""
    if release is None:
        return {}
    rules = {}
    for type_, settings in release.settings.items():
        try:
            placement = placement_of(settings_from(settings))
        except PlacementError as exc:  # checked at deploy: a bug, or an older release
            log.warning("%s %s: ignoring its placement: %s", release.app, type_, exc)
            continue
        if not placement.plain:
            rules[type_] = placement
    return rules


def _node_views(
    world: World,
    sessions: Sessions,
    busy: Mapping[str, int] | None = None,
    cache: ViewCache | None = None,
) -> list[NodeView]:
    """The nodes as placement sees them, each less the room its one-off runs (`busy`)
    and the rollouts' new copies on it take (they count against its capacity as
    instances do). With `cache`, a node's view is built again only when its record,
    its readiness or the room so taken changed since the last call."""
    busy = busy or {}
    surging = Counter(s.node for s in world.surges)
    cache = {} if cache is None else cache
    views = []
    for name, node in world.nodes.items():
        taken = busy.get(name, 0) + surging.get(name, 0)
        ready = sessions.is_ready(name)
        before = cache.get(name)
        if before is not None and before[0] is node and before[1] == (ready, taken):
            views.append(before[2])
            continue
        view = _node_view(node, sessions, taken)
        cache[name] = (node, (ready, taken), view)
        views.append(view)
    if len(cache) > len(world.nodes):
        for gone in cache.keys() - world.nodes.keys():
            del cache[gone]
    return views


def _room(world: World, nodes: list[NodeView]) -> dict[str, int]:
    """The free room of each eligible node (its capacity less instances and surges; the
    views' capacities already leave the surges out)."""
    held = Counter(i.node for i in world.instances)
    return {n.name: max(0, n.capacity - held[n.name]) for n in nodes if n.eligible}


def _allowed_nodes(world: World, nodes: list[NodeView]) -> dict[str, dict[str, frozenset[str]]]:
    """Per app and process type with placement rules, the eligible nodes they allow
    (where a rollout may start its new copies)."""
    eligible = [n for n in nodes if n.eligible]
    allowed: dict[str, dict[str, frozenset[str]]] = {}
    for app, release in world.releases.items():
        for type_, rules in _placement(release).items():
            names = frozenset(n.name for n in eligible if rules.allows(dict(n.labels)))
            allowed.setdefault(app, {})[type_] = names
    return allowed


def _assignment(record: InstanceRecord | SurgeRecord, world: World) -> pb.Assignment | None:
    """The assignment of an instance, or of a rollout's new copy, with its own release
    (during a rollout, and after one failed, instances run different releases)."""
    release = world.history.get((record.app, record.release))
    if release is None:
        return None  # not in the informer's cache (yet): the next pass sends it
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
