"""The placement plan: what to place, move and stop so the world matches the formation.

Pure: `plan(desired, nodes, instances) -> Plan` does no I/O and keeps no state.
The reconcile loop reads etcd and agent sessions, calls it, and commits the
result; nothing here may reach for a clock, a socket or etcd.

A new release does not touch kept instances here: the rollout controller
(rollout.py) replaces them a few at a time. Moved and new instances take the
app's current release.

Two steps, like a reconciler then a placer:

1. Per (app, process type), sort the instances into buckets: kept (on an
   eligible node), to stop, to move (orphaned on a lost, draining or unknown
   node), and new names to create.
2. Place the moves, then the new names, each on the eligible node with room
   that holds the fewest of that (app, type), then the fewest in total.

Stops are decided for every app before anything is placed, so capacity freed by
one app is usable by another in the same plan. The result is sorted, so equal
inputs in any order give an equal plan.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from paas.common.names import InstanceName
from paas.common.placement import TypePlacement


@dataclass(frozen=True)
class AppDesired:
    """What the operator asked for one app: its current release and formation."""

    app: str
    release: int
    formation: Mapping[str, int]  # process type -> count
    # process type -> where its instances may go; a type not here goes anywhere
    placement: Mapping[str, TypePlacement] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeView:
    """A node as placement sees it."""

    name: str
    ready: bool  # session alive, or silent for less than the grace period
    draining: bool
    capacity: int  # most instances it may hold
    labels: Mapping[str, str] = field(default_factory=dict)
    memory: int = 0  # bytes instances may reserve in all (0: none reported)
    cpu: float = 0.0  # cores instances may reserve in all (0: none reported)

    @property
    def eligible(self) -> bool:
        return self.ready and not self.draining


@dataclass(frozen=True)
class Placed:
    """One assignment: instance `name` of `app` runs `release` on `node`."""

    app: str
    name: InstanceName
    node: str
    release: int


class Shortfall(enum.Enum):
    """Why instances found no node."""

    NO_ELIGIBLE_NODE = "no eligible node"  # no node at all, or every one lost or draining
    NO_ROOM = "every eligible node is full"  # eligible nodes exist, at their capacity
    # Eligible nodes exist, but none meets the type's constraints (or has its spread label).
    NO_MATCHING_NODE = "no eligible node meets the type's placement rules"


@dataclass(frozen=True)
class Unplaced:
    """How many instances of one (app, process type) fit nowhere, and why."""

    count: int
    reason: Shortfall


@dataclass(frozen=True)
class Plan:
    """Changes to the assignments. Empty when the world already matches."""

    # New assignments, and replacements of an existing one with the same
    # (app, name): a move to another node (with the app's current release).
    place: list[Placed] = field(default_factory=list)
    # Assignments to delete: (app, instance name).
    stop: list[tuple[str, InstanceName]] = field(default_factory=list)
    # Instances that fit nowhere, per (app, process type), with the reason.
    unplaced: dict[tuple[str, str], Unplaced] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.place and not self.stop


def plan(
    desired: Sequence[AppDesired], nodes: Sequence[NodeView], instances: Sequence[Placed]
) -> Plan:
    """Decide what to place, move and stop so `instances` match `desired` on `nodes`.

    Instances are identified by (app, name); `Plan.place` with an existing
    (app, name) replaces that assignment (a move). A kept instance is never given
    the new release in place: that is the rollout's (rollout.py), health-gated.
    An orphaned instance that fits nowhere stays assigned where it is and is
    counted in `Plan.unplaced` (with the reason: no eligible node, or no room on
    any), so a draining node keeps serving until there is room; applying the
    plan and planning again gives an empty plan.
    """
    apps = {d.app: d for d in desired}
    eligible = sorted((n for n in nodes if n.eligible), key=lambda n: n.name)
    eligible_names = {n.name for n in eligible}

    groups: dict[tuple[str, str], list[Placed]] = defaultdict(list)
    for instance in instances:
        groups[(instance.app, instance.name.type)].append(instance)
    wanted = {(d.app, t) for d in desired for t, count in d.formation.items() if count > 0}
    buckets = [
        _sort_into_buckets(
            apps.get(app),
            type_,
            groups.get((app, type_), []),
            _allowed(_placement(apps.get(app), type_), eligible, eligible_names),
            _placement(apps.get(app), type_).distinct_hosts,
        )
        for app, type_ in sorted(wanted | groups.keys())
    ]

    # A kept instance keeps its release: a new release reaches it through the rollout
    # (rollout.py), a copy at a time. Moves and new names take the app's current one.
    # Running work that lost its node comes before growth, for every app.
    wishes = [(b, i.name) for b in buckets for i in b.move]
    wishes += [(b, name) for b in buckets for name in b.new]
    place, unplaced = _place(wishes, eligible, buckets) if wishes else ([], {})

    return Plan(
        # Keys of plain str and int: InstanceName's generated ordering is slow.
        place=sorted(place, key=lambda p: (p.app, p.name.type, p.name.index)),
        stop=sorted(
            ((i.app, i.name) for b in buckets for i in b.stop),
            key=lambda s: (s[0], s[1].type, s[1].index),
        ),
        unplaced=dict(sorted(unplaced.items())),
    )


def _place(
    wishes: list[tuple[_Buckets, InstanceName]], eligible: list[NodeView], buckets: list[_Buckets]
) -> tuple[list[Placed], dict[tuple[str, str], Unplaced]]:
    """Place each wish in order; those that fit nowhere are counted per (app, type)."""
    rules = {(b.app, t): p for b in buckets if b.desired for t, p in b.desired.placement.items()}
    placer = _Placer(eligible, [i for b in buckets for i in b.kept], rules)
    place: list[Placed] = []
    unplaced: dict[tuple[str, str], Unplaced] = {}
    for bucket, name in wishes:
        node = placer.take(bucket.app, name.type)
        if isinstance(node, Shortfall):
            key = (bucket.app, name.type)
            before = unplaced.get(key)
            # Eligibility is the same for every instance of a type, so is the reason.
            unplaced[key] = Unplaced((before.count if before else 0) + 1, node)
        else:
            place.append(Placed(bucket.app, name, node, bucket.release))
    return place, unplaced


def shortfall_text(unplaced: Unplaced, type_: str, nodes: Sequence[NodeView]) -> str:
    """What the app's log says of `unplaced` instances of `type_`, naming the cause and
    what the nodes are (counts, not names: a cluster may have hundreds)."""
    what = f"{unplaced.count} {type_} instance(s)"
    if unplaced.reason is Shortfall.NO_ROOM:
        eligible = [n for n in nodes if n.eligible]
        capacity = sum(n.capacity for n in eligible)
        return (
            f"No room for {what}: every eligible node is full "
            f"({len(eligible)} node(s), room for {capacity} instance(s) in all)"
        )
    if unplaced.reason is Shortfall.NO_MATCHING_NODE:
        count = sum(1 for n in nodes if n.eligible)
        return (
            f"No node for {what}: none of the {count} eligible node(s) meets its "
            "placement rules (see `paas why`)"
        )
    if not nodes:
        return f"No node for {what}: no node has joined the cluster"
    lost = sum(1 for n in nodes if not n.ready)
    draining = sum(1 for n in nodes if n.ready and n.draining)
    states = ", ".join(
        f"{count} {state}" for count, state in ((lost, "lost"), (draining, "draining")) if count
    )
    return f"No node for {what}: every node is lost or draining ({states})"


@dataclass
class _Buckets:
    """The instances of one (app, process type), sorted by what happens to them."""

    app: str
    release: int
    kept: list[Placed]  # stay on their node, with their release
    stop: list[Placed]
    move: list[Placed]  # orphans to place elsewhere; they stay put if nothing has room
    new: list[InstanceName]
    desired: AppDesired | None = None


def _placement(desired: AppDesired | None, type_: str) -> TypePlacement:
    return desired.placement.get(type_, _ANYWHERE) if desired else _ANYWHERE


_ANYWHERE = TypePlacement()


def _allowed(rules: TypePlacement, eligible: list[NodeView], names: set[str]) -> set[str]:
    """The eligible nodes that the type's rules let hold it (its room aside)."""
    if rules.plain:
        return names
    return {n.name for n in eligible if rules.allows(dict(n.labels))}


def _sort_into_buckets(
    desired: AppDesired | None,
    type_: str,
    current: list[Placed],
    eligible: set[str],
    distinct_hosts: bool = False,
) -> _Buckets:
    """`eligible`: the nodes the type may stay on. With `distinct_hosts`, the second
    instance on a node is an orphan like one on a lost node (the lowest index stays)."""
    app = current[0].app if desired is None else desired.app
    count = 0 if desired is None else desired.formation.get(type_, 0)
    release = 0 if desired is None else desired.release
    ordered = sorted(current, key=lambda i: i.name.index)  # all of one type
    kept = [i for i in ordered if i.node in eligible]
    orphans = [i for i in ordered if i.node not in eligible]
    if distinct_hosts:
        held: set[str] = set()
        crowded: set[InstanceName] = set()
        for instance in kept:
            if instance.node in held:
                crowded.add(instance.name)
            held.add(instance.node)
        kept = [i for i in kept if i.name not in crowded]
        orphans = [i for i in ordered if i.node not in eligible or i.name in crowded]

    if len(kept) > count:
        extras = _extras(kept, len(kept) - count)
        going = {i.name for i in extras}
        kept = [i for i in kept if i.name not in going]
        return _Buckets(app, release, kept, orphans + extras, [], [], desired)
    # Release 0 was never deployed: there is nothing to run, so nothing moves or starts.
    need = count - len(kept) if release > 0 else 0
    move, stop = orphans[:need], orphans[need:]
    used = {i.name.index for i in kept + move}
    new = [InstanceName(type_, n) for n in lowest_free(used, need - len(move))]
    return _Buckets(app, release, kept, stop, move, new, desired)


def _extras(kept: list[Placed], excess: int) -> list[Placed]:
    """The `excess` instances to stop so that the rest stay evenly spread: each from
    the node holding the most, its highest index first, then by node name.

    `kept` is sorted by name, so each node's list ends with its highest index.
    """
    by_node: dict[str, list[Placed]] = defaultdict(list)
    for instance in kept:
        by_node[instance.node].append(instance)
    # Only the node an extra comes from changes, so the heap is never stale.
    heap = [(-len(held), -held[-1].name.index, node) for node, held in by_node.items()]
    heapq.heapify(heap)
    extras: list[Placed] = []
    for _ in range(excess):
        node = heap[0][2]
        held = by_node[node]
        extras.append(held.pop())
        if held:
            heapq.heapreplace(heap, (-len(held), -held[-1].name.index, node))
        else:
            heapq.heappop(heap)
    return extras


def lowest_free(used: set[int], count: int) -> list[int]:
    """The `count` lowest instance indexes (from 1) not in `used`."""
    free: list[int] = []
    index = 1
    while len(free) < count:
        if index not in used:
            free.append(index)
        index += 1
    return free


class _Placer:
    """Chooses nodes for placements and keeps the load counts up to date as it goes.

    Each take costs O(log nodes), amortized. The rule is the straightforward
    one (the eligible node with room holding the fewest of that (app, type),
    then the fewest in total, then the first name); two heaps make it cheap:

    - one shared heap of (load, name) over every node with room: the best node
      that holds none of the type is its first entry not among the type's holders;
    - one heap per (app, type) of (count of the type, load, name) over the
      nodes that hold some: used only when every node with room holds some.

    Counts only grow while a plan is made, so an entry can only be too small:
    an entry found stale on top is pushed again with the current key, and one
    for a full node is dropped. A holder met on top of the shared heap while
    its type is placing is set aside and put back when another type places,
    so each holder is stepped over at most once per run of takes of its type.
    """

    def __init__(
        self,
        eligible: list[NodeView],
        staying: list[Placed],
        rules: Mapping[tuple[str, str], TypePlacement] | None = None,
    ) -> None:
        self._nodes = eligible
        self._rules = {key: r for key, r in (rules or {}).items() if not r.plain}
        self._capacity = {n.name: n.capacity for n in eligible}
        self._load = Counter(i.node for i in staying)
        self._staying: dict[tuple[str, str], list[str]] = defaultdict(list)
        for i in staying:
            self._staying[(i.app, i.name.type)].append(i.node)
        # Every node with room has exactly one entry, in the heap or set aside.
        self._shared = [
            (self._load[n], n) for n, room in self._capacity.items() if self._load[n] < room
        ]
        heapq.heapify(self._shared)
        self._types: dict[tuple[str, str], _TypeHeap] = {}
        self._placing: tuple[str, str] | None = None
        self._set_aside: list[str] = []
        # What instances reserve on each node, for the types with rules.
        self._memory: Counter[str] = Counter()
        self._cpu: defaultdict[str, float] = defaultdict(float)
        for i in staying:
            reserves = self._rules.get((i.app, i.name.type))
            if reserves is not None:
                self._memory[i.node] += reserves.memory
                self._cpu[i.node] += reserves.cpu
        self._ruled: dict[tuple[str, str], _RuledType] = {}

    def take(self, app: str, type_: str) -> str | Shortfall:
        """The best node with room for one more (app, type), counted as taken; or why
        there is none."""
        if not self._capacity:
            return Shortfall.NO_ELIGIBLE_NODE
        key = (app, type_)
        if key != self._placing:
            self._put_back()
            self._placing = key
        if key in self._rules:
            return self._take_ruled(key)
        of_type = self._type_heap(key)
        best = self._first_not_holding(of_type.count)
        if best is not None:  # a node that holds none of the type: it becomes a holder
            self._load[best] += 1
            of_type.count[best] = 1
            heapq.heappush(of_type.heap, (1, self._load[best], best))
            return best
        best = self._first_holding(of_type)
        if best is None:
            return Shortfall.NO_ROOM
        self._load[best] += 1
        of_type.count[best] += 1
        if self._load[best] < self._capacity[best]:
            heapq.heapreplace(of_type.heap, (of_type.count[best], self._load[best], best))
        else:
            heapq.heappop(of_type.heap)
        return best

    def _take_ruled(self, key: tuple[str, str]) -> str | Shortfall:
        """A type with placement rules: a scan of the nodes its rules allow, for the
        one with room (count, memory, cores, distinct hosts) that holds the fewest
        in its spread label's value, then the fewest of the type, then the fewest in
        all, then the first name. O(allowed nodes) per take."""
        rules = self._rules[key]
        ruled = self._ruled.get(key)
        if ruled is None:
            ruled = self._ruled[key] = self._ruled_type(key, rules)
        if not ruled.nodes:
            return Shortfall.NO_MATCHING_NODE
        best: tuple[int, int, int, str] | None = None
        for node in ruled.nodes:
            name = node.name
            count = ruled.count[name]
            if (
                self._load[name] >= node.capacity
                or (rules.distinct_hosts and count)
                or (rules.memory and self._memory[name] + rules.memory > node.memory)
                or (rules.cpu and self._cpu[name] + rules.cpu > node.cpu + _CPU_SLACK)
            ):
                continue
            spread = ruled.spread[node.labels[rules.spread]] if rules.spread else 0
            candidate = (spread, count, self._load[name], name)
            if best is None or candidate < best:
                best = candidate
        if best is None:
            return Shortfall.NO_ROOM
        name = best[3]
        self._load[name] += 1
        ruled.count[name] += 1
        self._memory[name] += rules.memory
        self._cpu[name] += rules.cpu
        if rules.spread:
            ruled.spread[ruled.labels[name]] += 1
        return name

    def _ruled_type(self, key: tuple[str, str], rules: TypePlacement) -> _RuledType:
        nodes = [n for n in self._nodes if rules.allows(dict(n.labels))]
        count = Counter(n for n in self._staying.pop(key, []))
        labels = {n.name: n.labels.get(rules.spread, "") for n in nodes}
        spread: Counter[str] = Counter()
        if rules.spread:
            for name, held in count.items():
                if name in labels:
                    spread[labels[name]] += held
        return _RuledType(nodes, count, labels, spread)

    def _type_heap(self, key: tuple[str, str]) -> _TypeHeap:
        of_type = self._types.get(key)
        if of_type is None:
            count = Counter(self._staying.pop(key, []))
            heap = [(c, self._load[n], n) for n, c in count.items() if n in self._capacity]
            heapq.heapify(heap)
            of_type = self._types[key] = _TypeHeap(count, heap)
        return of_type

    def _first_not_holding(self, holders: Mapping[str, int]) -> str | None:
        shared = self._shared
        while shared:
            load, name = shared[0]
            current = self._load[name]
            if current >= self._capacity[name]:
                heapq.heappop(shared)
            elif current != load:
                heapq.heapreplace(shared, (current, name))
            elif name in holders:
                self._set_aside.append(heapq.heappop(shared)[1])
            else:
                return name
        return None

    def _first_holding(self, of_type: _TypeHeap) -> str | None:
        heap = of_type.heap
        while heap:
            count, load, name = heap[0]
            if self._load[name] >= self._capacity[name]:
                heapq.heappop(heap)
            elif (count, load) != (of_type.count[name], self._load[name]):
                heapq.heapreplace(heap, (of_type.count[name], self._load[name], name))
            else:
                return name
        return None

    def _put_back(self) -> None:
        for name in self._set_aside:
            if self._load[name] < self._capacity[name]:
                heapq.heappush(self._shared, (self._load[name], name))
        self._set_aside.clear()


_CPU_SLACK = 1e-9  # cores: 0.1 + 0.2 reserved fit on a node of 0.3


@dataclass
class _RuledType:
    """One (app, type) with placement rules, for the placer."""

    nodes: list[NodeView]  # the eligible nodes its rules allow, by name
    count: Counter[str]  # its instances per node
    labels: dict[str, str]  # node -> its value of the spread label
    spread: Counter[str]  # its instances per value of the spread label


@dataclass
class _TypeHeap:
    """One (app, type) for the placer: its count per node and its holders' heap."""

    count: dict[str, int]
    heap: list[tuple[int, int, str]]  # (count of the type, load, name), maybe stale
