"""Rolling, health-gated replacement of an app's instances by its new release.

A release that is made (deploy, config, rollback) becomes the app's release in
force with status "rolling"; plan.py leaves the running instances alone and
this module replaces them, per process type, a few at a time:

    for each instance whose release is not the app's, at most max_parallel at once:
        a surge copy of the new release starts beside it (surges/APP/web.3),
        must be reported UP (its health check passed) and stay UP min_healthy s,
        then is promoted: the instance key takes its node, release and
        incarnation in one guarded txn, and the agents stop the old copy.

A surge copy that crashes, or a rollout with no progress for progress_deadline,
fails the release: the surge copies go, the old copies keep running, the
release is marked "failed" and the app's release in force goes back to the one
before (instances already promoted stay on the failed release; the event says
how many). With auto_rollback a new release copying the one before is made.
A newer release supersedes a rolling one (marked failed, "superseded by v5");
the surges of the superseded one are removed and the rollout goes on towards
the newer one. A `release` Procfile entry (the release phase) is awaited once,
through the hook the scheduler is given, before anything is replaced.

Two parts, as plan.py and reconcile.py are: `decide(RolloutInput) -> Decision`
is pure (no clock, no I/O: the time and the health durations are inputs) and
table-tested; `Rollouts.step(world)` is the driver, called by the reconcile
loop on the leader at every pass (level-triggered: it wakes on the informer's
changes, the agents' reports and its own timers), which builds the inputs,
writes what was decided (store.write_rollout) and says it in the app's log.
Everything durable is in etcd (the release record's status, progress_at and
phase_done; the surge keys), so a new leader resumes a rollout where the old
one left it. Only how long a surge copy has been UP is the driver's memory: a
new leader waits min_healthy again before promoting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from paas.common.names import InstanceName
from paas.common.rollouts import DEFAULT_MIN_HEALTHY, max_parallel
from paas.common.slugs import NOT_READY
from paas.proto import paas_pb2 as pb
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.events import EventLog
from paas.scheduler.sessions import Sessions
from paas.scheduler.settings import settings_from
from paas.scheduler.store import (
    AppRecord,
    ConflictError,
    DropSurge,
    InstanceRecord,
    NotLeaderError,
    Promote,
    PutAppRelease,
    PutRelease,
    ReleaseRecord,
    RolloutWrite,
    StartSurge,
    Store,
    StoreError,
    SurgeRecord,
    World,
    next_version,
    write_rollout,
)

log = logging.getLogger(__name__)

RELEASE_PHASE = "release"  # the Procfile entry run once per release, never a formation type
DEFAULT_PROGRESS_DEADLINE = 300.0
LAST_LINES = 5  # of a failing copy's output, in the failure's event
# Writes of one app per pass: one etcd txn holds at most 128 operations.
MAX_WRITES = 40

# The hook that runs a release's release phase: None when it succeeded, else why not.
ReleasePhaseHook = Callable[[ReleaseRecord], Awaitable[str | None]]
AllowedNodes = Mapping[str, Mapping[str, frozenset[str]]]  # app -> type -> nodes
_CopyKey = tuple[str, str, int, int]  # (app id, name, release, incarnation)


# ------------------------------------------------------------ settings


@dataclass(frozen=True)
class TypeSettings:
    """What the rollout reads of one process type's settings."""

    min_healthy: float = DEFAULT_MIN_HEALTHY
    max_parallel: str = ""
    progress_deadline: float = DEFAULT_PROGRESS_DEADLINE
    auto_rollback: bool = False


def type_settings(release: ReleaseRecord, type_: str) -> TypeSettings:
    settings = settings_from(release.settings.get(type_, {}))
    return TypeSettings(
        min_healthy=(
            settings.min_healthy if settings.HasField("min_healthy") else DEFAULT_MIN_HEALTHY
        ),
        max_parallel=settings.max_parallel,
        progress_deadline=settings.progress_deadline or DEFAULT_PROGRESS_DEADLINE,
        auto_rollback=settings.auto_rollback,
    )


# ------------------------------------------------------------ the decision (pure)


@dataclass(frozen=True)
class Health:
    """What the agent last reported of one copy (an instance or a surge)."""

    state: int = pb.PENDING  # pb.InstanceState; PENDING when nothing was reported
    restarts: int = 0
    up_for: float = 0.0  # seconds the scheduler has seen it UP without a break
    reason: str = ""
    last_exit: str = ""
    last_lines: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Crashed, or restarted: a new copy must come up once and stay up. A slug
        that cannot be fetched is no crash (the progress deadline covers it)."""
        if self.state == pb.CRASHED or self.restarts > 0:
            return True
        return self.state == pb.BACKOFF and not self.reason.startswith(NOT_READY)


@dataclass(frozen=True)
class Copy:
    """An instance, or a surge copy, of the app as the rollout sees it."""

    name: InstanceName
    node: str
    release: int
    incarnation: int
    revision: int  # its key's mod revision, which a write compares
    health: Health = Health()


@dataclass(frozen=True)
class RolloutInput:
    app: AppRecord
    release: ReleaseRecord  # the app's release in force
    formation: Mapping[str, int]
    instances: Sequence[Copy]
    surges: Sequence[Copy]
    # The eligible nodes (ready, not draining) and the free room of each.
    room: Mapping[str, int]
    now: float  # unix seconds
    # Other releases of the app still marked rolling (superseded by `release`).
    superseded: Sequence[ReleaseRecord] = ()
    previous: ReleaseRecord | None = None  # the release `release.previous` names
    # Per process type, the nodes its placement rules allow (a type not here: any).
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    phase: str | None = None  # the release phase's outcome, once it ended: "" = ok
    phase_running: bool = False
    # The app's releases by version (to find the one before a superseded release).
    history: Mapping[int, ReleaseRecord] = field(default_factory=dict)


@dataclass
class Decision:
    writes: list[RolloutWrite] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    run_phase: bool = False  # start the release phase (none is running)
    wake_in: float | None = None  # look again in this many seconds
    outcome: str = ""  # "succeeded" or "failed" when it ends in this step
    rollback: ReleaseRecord | None = None  # the release to roll back to (auto_rollback)
    no_room: list[str] = field(default_factory=list)  # types that found no node


def decide(rollout: RolloutInput) -> Decision:
    """What to write for one app's rollout, given everything read."""
    decision = Decision()
    release = rollout.release
    for old in rollout.superseded:
        decision.writes.append(
            PutRelease(
                dataclasses.replace(
                    old, status="failed", status_reason=f"superseded by v{release.version}"
                )
            )
        )
        decision.events.append(
            f"Release v{old.version} superseded by v{release.version} before it rolled out"
        )
        if old.version == release.previous and _rolling(release):
            # It never was in force whole: should this one fail, the one before it is.
            release = dataclasses.replace(release, previous=old.previous)
            decision.writes.append(PutRelease(release))
            rollout = dataclasses.replace(
                rollout, release=release, previous=rollout.history.get(old.previous)
            )
    stray = [s for s in rollout.surges if s.release != release.version or not _rolling(release)]
    decision.writes += [DropSurge(_surge(rollout.app.name, s)) for s in stray]
    if not _rolling(release):
        return decision
    surges = [s for s in rollout.surges if s not in stray]

    if RELEASE_PHASE in release.commands and not release.phase_done:
        if rollout.phase is None:
            decision.run_phase = not rollout.phase_running
            return decision
        if rollout.phase:
            phase = rollout.phase
            reason = (
                phase if phase.startswith("release phase") else f"release phase failed: {phase}"
            )
            return _fail(rollout, decision, reason, surges)
        release = dataclasses.replace(release, phase_done=True, progress_at=rollout.now)
        decision.writes.append(PutRelease(release))
        rollout = dataclasses.replace(rollout, release=release)

    types = {
        type_
        for type_, count in rollout.formation.items()
        if count > 0 and type_ in release.commands and type_ != RELEASE_PHASE
    }
    instances = {i.name: i for i in rollout.instances if i.name.type in types}
    room = dict(rollout.room)
    settings = {type_: type_settings(release, type_) for type_ in types}

    in_flight: Counter[str] = Counter()
    promoted: list[Copy] = []
    for surge in sorted(surges, key=lambda s: (s.name.type, s.name.index)):
        instance = instances.get(surge.name)
        if instance is None or instance.release == release.version or surge.node not in room:
            # Scaled away, moved with the new release meanwhile, or its node went.
            decision.writes.append(DropSurge(_surge(rollout.app.name, surge)))
            continue
        if surge.health.failed:
            return _fail(rollout, decision, _crash_text(surge), surges, surge)
        wait = settings[surge.name.type].min_healthy
        if surge.health.state == pb.UP and surge.health.up_for >= wait:
            promoted.append(surge)
            decision.writes.append(Promote(_surge(rollout.app.name, surge), instance.revision))
            continue
        in_flight[surge.name.type] += 1
        if surge.health.state == pb.UP:
            decision.wake_in = _sooner(decision.wake_in, wait - surge.health.up_for)

    done = {s.name for s in promoted}
    # Every name with a surge key now, dropped ones included: a txn may not name a key
    # twice, so a name whose copy goes in this step gets its new one in the next.
    surging = {s.name for s in rollout.surges}
    left = [i for i in instances.values() if i.release != release.version and i.name not in done]
    progress_at = (release.progress_at or release.created_at) if not promoted else rollout.now
    for type_ in sorted(types):
        waiting = sorted(
            (i for i in left if i.name.type == type_ and i.name not in surging),
            key=lambda i: i.name.index,
        )
        count = rollout.formation.get(type_, 0)
        try:
            limit = max_parallel(settings[type_].max_parallel, count)
        except ValueError:
            limit = 1  # checked at deploy: an older release's value
        for instance in waiting[: max(0, limit - in_flight[type_])]:
            node = _surge_node(instance, room, rollout, type_)
            if node is None:
                decision.no_room.append(type_)
                break
            room[node] -= 1
            decision.writes.append(
                StartSurge(rollout.app.name, instance.name, node, release.version)
            )
        if any(i.name.type == type_ for i in left):
            deadline = settings[type_].progress_deadline
            stalled = rollout.now - progress_at
            if stalled >= deadline:
                reason = (
                    f"no progress for {deadline:g}s ({_ran(rollout, type_, done)} of {count} "
                    f"{type_} instances replaced)"
                )
                return _fail(rollout, decision, reason, surges)
            decision.wake_in = _sooner(decision.wake_in, deadline - stalled)

    if promoted:
        decision.writes.append(PutRelease(dataclasses.replace(release, progress_at=rollout.now)))
    if not left and not (surging - done):
        count = len(instances)
        took = max(0.0, rollout.now - release.created_at)
        _finish(decision, release, "succeeded", "")
        # Nothing to replace is no news, nor is a first release: its instances were
        # placed with it (and may not be up yet), none was replaced.
        if count and release.previous:
            decision.events.append(
                f"Release v{release.version} rolled out ({count} instance{_s(count)} in "
                f"{took:.1f}s)"
            )
    decision.writes = _last_put_per_release(decision.writes)
    return decision


def _last_put_per_release(writes: list[RolloutWrite]) -> list[RolloutWrite]:
    """One put per release key (a txn may not name a key twice): the last one."""
    last = {w.release.version: i for i, w in enumerate(writes) if isinstance(w, PutRelease)}
    return [
        w
        for i, w in enumerate(writes)
        if not isinstance(w, PutRelease) or last[w.release.version] == i
    ]


def _fail(
    rollout: RolloutInput,
    decision: Decision,
    reason: str,
    surges: Sequence[Copy],
    failing: Copy | None = None,
) -> Decision:
    """Stop the rollout: its surges go, the release is failed and the one before is in
    force again. What was decided besides (starts, promotions) is dropped."""
    release = rollout.release
    decision.writes = [w for w in decision.writes if isinstance(w, DropSurge | PutRelease)]
    decision.writes = [
        w
        for w in decision.writes
        if not (isinstance(w, PutRelease) and w.release.version == release.version)
    ]
    dropped = {w.surge.name for w in decision.writes if isinstance(w, DropSurge)}
    decision.writes += [
        DropSurge(_surge(rollout.app.name, s)) for s in surges if s.name not in dropped
    ]
    _finish(decision, release, "failed", reason)
    previous = rollout.previous
    back = ""
    if previous is not None or release.previous == 0:
        decision.writes.append(PutAppRelease(rollout.app, release.previous))
        back = (
            f"; v{release.previous} stays in force"
            if release.previous
            else "; no release is in force"
        )
    else:
        back = f"; v{release.previous} is gone, so v{release.version} stays in force"
    decision.events.append(f"Release v{release.version} failed: {reason}{back}")
    if failing is not None:
        for line in failing.health.last_lines[-LAST_LINES:]:
            decision.events.append(f"{failing.name} (v{release.version}) output: {line}")
    for type_ in sorted({i.name.type for i in rollout.instances}):
        total = sum(1 for i in rollout.instances if i.name.type == type_)
        ran = sum(
            1 for i in rollout.instances if i.name.type == type_ and i.release == release.version
        )
        if ran:
            decision.events.append(
                f"{ran} of {total} {type_} instances run v{release.version} (replaced before "
                "it failed; they stay until the next release)"
            )
    decision.wake_in = None
    decision.no_room = []
    auto = any(type_settings(release, t).auto_rollback for t in release.commands)
    if auto and previous is not None and not release.description.startswith("Rollback"):
        decision.rollback = previous
    return decision


def _finish(decision: Decision, release: ReleaseRecord, status: str, reason: str) -> None:
    decision.outcome = status
    decision.writes = [
        w
        for w in decision.writes
        if not (isinstance(w, PutRelease) and w.release.version == release.version)
    ]
    decision.writes.append(
        PutRelease(dataclasses.replace(release, status=status, status_reason=reason))
    )


def _surge_node(
    instance: Copy, room: Mapping[str, int], rollout: RolloutInput, type_: str
) -> str | None:
    """The node for the new copy of `instance`: its own if it has room (and the type's
    rules allow it), else the allowed node with room holding the fewest copies of the
    type, then the most room, then the first name."""
    allowed = rollout.allowed.get(type_)
    free = [n for n, r in room.items() if r > 0 and (allowed is None or n in allowed)]
    if not free:
        return None
    held: Counter[str] = Counter(
        c.node for c in [*rollout.instances, *rollout.surges] if c.name.type == type_
    )
    return min(free, key=lambda n: (n != instance.node, held[n], -room[n], n))


def _ran(rollout: RolloutInput, type_: str, done: set[InstanceName]) -> int:
    version = rollout.release.version
    return sum(
        1
        for i in rollout.instances
        if i.name.type == type_ and (i.release == version or i.name in done)
    )


def _crash_text(surge: Copy) -> str:
    health = surge.health
    how = f" ({health.last_exit})" if health.last_exit else ""
    # "restarting in 2s" says nothing of the crash; a boot timeout's reason does.
    told = health.reason and not health.reason.startswith("restarting")
    why = f": {health.reason}" if told and health.reason != health.last_exit else ""
    return f"its new copy of {surge.name} crashed{how}{why}"


def _rolling(release: ReleaseRecord) -> bool:
    return release.status == "rolling"


def _surge(app: str, copy: Copy) -> SurgeRecord:
    return SurgeRecord(app, copy.name, copy.node, copy.release, copy.incarnation)


def _sooner(a: float | None, b: float) -> float:
    b = max(0.05, b)
    return b if a is None else min(a, b)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


# ------------------------------------------------------------ the driver (I/O)


class Rollouts:
    """Runs `decide` for every app whose release is rolling, on the leader, once per
    reconcile pass, and writes what it decided.

        rollouts = Rollouts(store, sessions, events, kick=reconciler.kick)
        wrote = await rollouts.step(world)   # the revision it wrote at, 0 if nothing
        rollouts.close()                      # the term ended: timers and hooks stop
    """

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        events: EventLog,
        kick: Callable[[], None],
        release_phase: ReleasePhaseHook | None = None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._events = events
        self._kick = kick
        self._release_phase = release_phase
        # (app id, name, release, incarnation) -> when the scheduler first saw it UP
        self._up_since: dict[_CopyKey, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # (app id, version) -> the release phase's task, and its outcome once ended
        self._phases: dict[tuple[str, int], asyncio.Task[str | None]] = {}
        self._no_room: dict[str, frozenset[str]] = {}
        self.active: set[str] = set()  # apps whose release is rolling, as of the last step

    def use_release_phase(self, hook: ReleasePhaseHook) -> None:
        """Run release phases with `hook` from now on (server.py wires the runs' one)."""
        self._release_phase = hook

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._phases.values():
            task.cancel()
        self._phases.clear()
        self._up_since.clear()
        self.active.clear()

    async def step(self, world: World, room: Mapping[str, int], allowed: AllowedNodes) -> int:
        """One look at every app's rollout; the revision of the last write (0: none)."""
        wrote = 0
        rolling_by_app: dict[str, list[ReleaseRecord]] = defaultdict(list)
        for (owner, _), record in world.history.items():
            if record.status == "rolling":
                rolling_by_app[owner].append(record)
        surges_by_app: dict[str, list[SurgeRecord]] = defaultdict(list)
        for surge in world.surges:
            surges_by_app[surge.app].append(surge)
        instances_by_app: dict[str, list[InstanceRecord]] = defaultdict(list)
        for instance in world.instances:
            instances_by_app[instance.app].append(instance)
        seen: set[_CopyKey] = set()
        active: set[str] = set()
        for name, app in sorted(world.apps.items()):
            release = world.releases.get(name)
            if release is None:
                continue
            others = [r for r in rolling_by_app.get(name, []) if r.version != release.version]
            if not (_rolling(release) or others or surges_by_app.get(name)):
                continue
            active.add(name)
            phase, running = self._phase_of(app, release)
            rollout = RolloutInput(
                app=app,
                release=release,
                formation=world.formations.get(name, {}),
                instances=[self._copy(app, i, seen) for i in instances_by_app.get(name, [])],
                surges=[self._copy(app, s, seen) for s in surges_by_app.get(name, [])],
                room=room,
                now=time.time(),
                superseded=others,
                previous=world.history.get((name, release.previous)),
                history={v: r for (a, v), r in world.history.items() if a == name},
                allowed=allowed.get(name, {}),
                phase=phase,
                phase_running=running,
            )
            decision = decide(rollout)
            wrote = max(wrote, await self._carry_out(rollout, decision))
        self._up_since = {k: v for k, v in self._up_since.items() if k in seen}
        for name in set(self._timers) - active:
            self._timers.pop(name).cancel()
        self.active = active
        return wrote

    def _phase_of(self, app: AppRecord, release: ReleaseRecord) -> tuple[str | None, bool]:
        """The release phase's outcome ("" ok, else why not; None: not ended) and
        whether it runs now."""
        if self._release_phase is None:
            return "", False  # no hook: nothing to run
        task = self._phases.get((app.id, release.version))
        if task is None:
            return None, False
        if not task.done():
            return None, True
        if task.cancelled():
            return "cancelled", False
        error = task.exception()
        if error is not None:
            return f"the release phase hook failed: {error!r}", False
        return task.result() or "", False

    def _copy(
        self, app: AppRecord, record: InstanceRecord | SurgeRecord, seen: set[_CopyKey]
    ) -> Copy:
        revision = record.revision if isinstance(record, InstanceRecord) else record.incarnation
        session = self._sessions.get(record.node)
        status = (
            session.reports.get((app.name, str(record.name), record.release)) if session else None
        )
        health = Health()
        if status is not None and status.incarnation == record.incarnation:
            key = (app.id, str(record.name), record.release, record.incarnation)
            up_for = 0.0
            if status.state == pb.UP:
                seen.add(key)
                since = self._up_since.setdefault(key, time.monotonic())
                up_for = time.monotonic() - since
            health = Health(
                state=status.state,
                restarts=status.restarts,
                up_for=up_for,
                reason=status.reason,
                last_exit=status.last_exit,
                last_lines=tuple(status.last_lines),
            )
        return Copy(record.name, record.node, record.release, record.incarnation, revision, health)

    async def _carry_out(self, rollout: RolloutInput, decision: Decision) -> int:
        app, release = rollout.app, rollout.release
        if decision.run_phase:
            self._run_phase(app, release)
        writes = decision.writes[:MAX_WRITES]
        revision = 0
        if writes:
            try:
                revision = await write_rollout(self._store, app, writes)
            except ConflictError:
                self._kick()  # something changed meanwhile: look again
                return 0
            except NotLeaderError:
                raise
            except StoreError as exc:
                log.warning("%s: rollout step not written: %s", app.name, exc)
                self._wake(app.name, 0.5)
                return 0
            if len(decision.writes) > MAX_WRITES:
                self._kick()
        for text in decision.events:
            self._events.add(app.name, text)
        no_room = frozenset(decision.no_room)
        if no_room and self._no_room.get(app.name) != no_room:
            for type_ in sorted(no_room):
                self._events.add(
                    app.name,
                    f"Rollout of v{release.version}: no node has room for a new copy of a "
                    f"{type_} instance; waiting for room",
                )
        self._no_room[app.name] = no_room
        if decision.outcome:
            self._phases.pop((app.id, release.version), None)
            log.info("%s v%d: rollout %s", app.name, release.version, decision.outcome)
        if decision.rollback is not None:
            await self._roll_back(app.name, release, decision.rollback)
        if decision.wake_in is not None:
            self._wake(app.name, decision.wake_in)
        return revision

    def _run_phase(self, app: AppRecord, release: ReleaseRecord) -> None:
        hook = self._release_phase
        assert hook is not None
        self._events.add(app.name, f"Running the release phase of v{release.version}")

        async def run() -> str | None:
            return await hook(release)

        task = asyncio.create_task(run(), name=f"release phase {app.name} v{release.version}")
        task.add_done_callback(lambda _: self._kick())
        self._phases[(app.id, release.version)] = task

    async def _roll_back(self, app_name: str, failed: ReleaseRecord, to: ReleaseRecord) -> None:
        """auto_rollback: a new release copying `to`, made as Deploy makes one."""

        async def attempt() -> ReleaseRecord | None:
            app = await self._store.app(app_name)
            if app is None:
                return None
            formation, formation_rev = await self._store.formation(app_name)
            release = dataclasses.replace(
                to,
                version=next_version(app),
                created_at=time.time(),
                description=f"Rollback to v{to.version} (v{failed.version} failed)",
                by="",
                status="rolling",
                status_reason="",
                previous=app.release,
                progress_at=0.0,
                phase_done=False,
                mod_revision=0,
            )
            await self._store.add_release(app, release, formation, formation_rev)
            return release

        try:
            # A ConflictError after the last retry is a StoreError too: it is told.
            release = await retry_conflicts(attempt, "the app")
        except StoreError as exc:
            self._events.add(app_name, f"Automatic rollback to v{to.version} failed: {exc}")
            return
        if release is None:
            return
        self._events.add(app_name, f"Release v{release.version} created: {release.description}")
        self._kick()

    def _wake(self, app: str, delay: float) -> None:
        timer = self._timers.pop(app, None)
        if timer is not None:
            timer.cancel()
        self._timers[app] = asyncio.get_running_loop().call_later(delay, self._kick)
