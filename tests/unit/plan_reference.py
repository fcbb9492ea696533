"""The straightforward placer that `paas.scheduler.plan` was before it was made fast.

Kept as the reference: every placement scans every eligible node for the one
with the fewest of that (app, type), then the fewest in total, then the first
name. The fast placer must give the same plan (tests/unit/test_plan.py checks
it over random worlds) and bench/placement.py measures both in one run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from paas.common.names import InstanceName
from paas.common.placement import TypePlacement
from paas.scheduler.plan import AppDesired, NodeView, Placed, Plan, Shortfall, Unplaced


def reference_plan(
    desired: Sequence[AppDesired], nodes: Sequence[NodeView], instances: Sequence[Placed]
) -> Plan:
    """Decide what to place, move and stop so `instances` match `desired` on `nodes`.

    Instances are identified by (app, name); `Plan.place` with an existing
    (app, name) replaces that assignment (a move; a kept instance keeps its release).
    An orphaned instance that fits nowhere stays assigned where it is and is
    counted in `Plan.unplaced` (with the reason: no eligible node, or no room on
    any), so a draining node keeps serving until there is room; applying the
    plan and planning again gives an empty plan.
    """
    apps = {d.app: d for d in desired}
    eligible = sorted((n for n in nodes if n.eligible), key=lambda n: n.name)

    groups: dict[tuple[str, str], list[Placed]] = defaultdict(list)
    for instance in instances:
        groups[(instance.app, instance.name.type)].append(instance)
    wanted = {(d.app, t) for d in desired for t, count in d.formation.items() if count > 0}
    buckets = [
        _sort_into_buckets(
            apps.get(app),
            type_,
            groups.get((app, type_), []),
            {n.name for n in eligible if _rules(apps.get(app), type_).allows(dict(n.labels))},
        )
        for app, type_ in sorted(wanted | groups.keys())
    ]

    placer = _Placer(eligible, [i for b in buckets for i in b.kept], apps)
    # Kept instances keep their release (the rollout replaces them, not the plan).
    place: list[Placed] = []
    unplaced: dict[tuple[str, str], Unplaced] = {}
    # Running work that lost its node comes before growth, for every app.
    wishes = [(b, i.name) for b in buckets for i in b.move]
    wishes += [(b, name) for b in buckets for name in b.new]
    for bucket, name in wishes:
        node = placer.take(bucket.app, name.type)
        if isinstance(node, Shortfall):
            key = (bucket.app, name.type)
            before = unplaced.get(key)
            # Eligibility is the same for every instance of a type, so is the reason.
            unplaced[key] = Unplaced((before.count if before else 0) + 1, node)
        else:
            place.append(Placed(bucket.app, name, node, bucket.release))

    return Plan(
        place=sorted(place, key=lambda p: (p.app, p.name)),
        stop=sorted((i.app, i.name) for b in buckets for i in b.stop),
        unplaced=dict(sorted(unplaced.items())),
    )


@dataclass
class _Buckets:
    """The instances of one (app, process type), sorted by what happens to them."""

    app: str
    release: int
    kept: list[Placed]  # stay on their node, with their release
    stop: list[Placed]
    move: list[Placed]  # orphans to place elsewhere; they stay put if nothing has room
    new: list[InstanceName]


def _rules(desired: AppDesired | None, type_: str) -> TypePlacement:
    return desired.placement.get(type_, TypePlacement()) if desired else TypePlacement()


def _sort_into_buckets(
    desired: AppDesired | None, type_: str, current: list[Placed], allowed: set[str]
) -> _Buckets:
    app = current[0].app if desired is None else desired.app
    count = 0 if desired is None else desired.formation.get(type_, 0)
    release = 0 if desired is None else desired.release
    ordered = sorted(current, key=lambda i: i.name)
    kept: list[Placed] = []
    orphans: list[Placed] = []
    for i in ordered:
        crowded = _rules(desired, type_).distinct_hosts and i.node in {k.node for k in kept}
        (orphans if i.node not in allowed or crowded else kept).append(i)

    if len(kept) > count:
        extras = _extras(kept, len(kept) - count)
        kept = [i for i in kept if i not in extras]
        return _Buckets(app, release, kept, stop=orphans + extras, move=[], new=[])
    # Release 0 was never deployed: there is nothing to run, so nothing moves or starts.
    need = count - len(kept) if release > 0 else 0
    move, stop = orphans[:need], orphans[need:]
    used = {i.name.index for i in kept + move}
    new = [InstanceName(type_, n) for n in _lowest_free(used, need - len(move))]
    return _Buckets(app, release, kept, stop, move, new)


def _extras(kept: list[Placed], excess: int) -> list[Placed]:
    """The `excess` instances to stop so that the rest stay evenly spread.

    `kept` is sorted by name, so each node's list ends with its highest index.
    """
    by_node: dict[str, list[Placed]] = defaultdict(list)
    for instance in kept:
        by_node[instance.node].append(instance)
    extras: list[Placed] = []
    for _ in range(excess):
        node = min(by_node, key=lambda n: (-len(by_node[n]), -by_node[n][-1].name.index, n))
        extras.append(by_node[node].pop())
        if not by_node[node]:
            del by_node[node]
    return extras


def _lowest_free(used: set[int], count: int) -> list[int]:
    free: list[int] = []
    index = 1
    while len(free) < count:
        if index not in used:
            free.append(index)
        index += 1
    return free


class _Placer:
    """Chooses nodes for placements by scanning every eligible node each time."""

    def __init__(
        self, eligible: list[NodeView], staying: list[Placed], apps: dict[str, AppDesired]
    ) -> None:
        self._nodes = eligible
        self._apps = apps
        self._load = Counter(i.node for i in staying)
        self._of_type = Counter((i.app, i.name.type, i.node) for i in staying)
        self._memory: Counter[str] = Counter()
        self._cpu: defaultdict[str, float] = defaultdict(float)
        for i in staying:
            self._reserve(i.app, i.name.type, i.node)

    def _reserve(self, app: str, type_: str, node: str) -> None:
        rules = _rules(self._apps.get(app), type_)
        self._memory[node] += rules.memory
        self._cpu[node] += rules.cpu

    def take(self, app: str, type_: str) -> str | Shortfall:
        """The best node with room for one more (app, type), counted as taken; or why
        there is none."""
        if not self._nodes:
            return Shortfall.NO_ELIGIBLE_NODE
        rules = _rules(self._apps.get(app), type_)
        if rules.plain:  # the placer as it was before placement rules
            roomy = [n for n in self._nodes if self._load[n.name] < n.capacity]
            if not roomy:
                return Shortfall.NO_ROOM
            best = min(
                roomy,
                key=lambda n: (self._of_type[(app, type_, n.name)], self._load[n.name], n.name),
            )
            self._load[best.name] += 1
            self._of_type[(app, type_, best.name)] += 1
            return best.name
        allowed = [n for n in self._nodes if rules.allows(dict(n.labels))]
        if not allowed:
            return Shortfall.NO_MATCHING_NODE
        roomy = [
            n
            for n in allowed
            if self._load[n.name] < n.capacity
            and not (rules.distinct_hosts and self._of_type[(app, type_, n.name)])
            and not (rules.memory and self._memory[n.name] + rules.memory > n.memory)
            and not (rules.cpu and self._cpu[n.name] + rules.cpu > n.cpu + 1e-9)
        ]
        if not roomy:
            return Shortfall.NO_ROOM

        def spread(n: NodeView) -> int:
            if not rules.spread:
                return 0
            value = n.labels[rules.spread]
            return sum(
                self._of_type[(app, type_, m.name)]
                for m in allowed
                if m.labels[rules.spread] == value
            )

        best = min(
            roomy,
            key=lambda n: (
                spread(n),
                self._of_type[(app, type_, n.name)],
                self._load[n.name],
                n.name,
            ),
        )
        self._load[best.name] += 1
        self._of_type[(app, type_, best.name)] += 1
        self._reserve(app, type_, best.name)
        return best.name
