"""The placement plan: table-driven cases for each rule, and properties over random worlds."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paas.common.names import InstanceName
from paas.common.placement import Constraint, TypePlacement
from paas.scheduler.plan import (
    AppDesired,
    NodeView,
    Placed,
    Plan,
    Shortfall,
    Unplaced,
    plan,
    shortfall_text,
)

from .plan_reference import reference_plan

APP = "shop"


def node(name: str, *, ready: bool = True, draining: bool = False, capacity: int = 10) -> NodeView:
    return NodeView(name=name, ready=ready, draining=draining, capacity=capacity)


def at(name: str, node: str, release: int = 1, app: str = APP) -> Placed:
    """`at("web.3", "a")`: instance web.3 of the app on node a."""
    return Placed(app=app, name=InstanceName.parse(name), node=node, release=release)


def want(release: int = 1, app: str = APP, **formation: int) -> AppDesired:
    return AppDesired(app=app, release=release, formation=formation)


def stop(name: str, app: str = APP) -> tuple[str, InstanceName]:
    return (app, InstanceName.parse(name))


def full(count: int) -> Unplaced:
    return Unplaced(count, Shortfall.NO_ROOM)


def nowhere(count: int) -> Unplaced:
    return Unplaced(count, Shortfall.NO_ELIGIBLE_NODE)


def apply(world: Sequence[Placed], change: Plan) -> list[Placed]:
    """The world after the plan is committed: stops removed, placements replace by name."""
    stopped = set(change.stop)
    placed = {(p.app, p.name): p for p in change.place}
    kept = [i for i in world if (i.app, i.name) not in stopped | placed.keys()]
    return sorted([*kept, *placed.values()], key=lambda i: (i.app, i.name))


@dataclass(frozen=True)
class Case:
    desired: list[AppDesired]
    nodes: list[NodeView]
    instances: list[Placed]
    place: list[Placed] = field(default_factory=list)
    stop: list[tuple[str, InstanceName]] = field(default_factory=list)
    unplaced: dict[tuple[str, str], Unplaced] = field(default_factory=dict)


ABC = [node("a"), node("b"), node("c")]

CASES = {
    "test_scale_up_from_an_empty_world_spreads_evenly_over_nodes": Case(
        desired=[want(web=4, worker=1)],
        nodes=ABC,
        instances=[],
        # web.4 goes to a (all tied, then by name); worker.1 to the least loaded node.
        place=[
            at("web.1", "a"),
            at("web.2", "b"),
            at("web.3", "c"),
            at("web.4", "a"),
            at("worker.1", "b"),
        ],
    ),
    "test_scale_up_fills_the_node_with_fewest_of_that_type_first": Case(
        desired=[want(web=4)],
        nodes=ABC,
        instances=[at("web.1", "a"), at("web.2", "a")],
        place=[at("web.3", "b"), at("web.4", "c")],
    ),
    "test_scale_down_stops_from_the_most_loaded_node_first": Case(
        desired=[want(web=2)],
        nodes=ABC,
        instances=[at("web.1", "a"), at("web.2", "b"), at("web.3", "a"), at("web.4", "c")],
        # a holds two, so web.3 goes; then all hold one and c's web.4 is the highest.
        stop=[stop("web.3"), stop("web.4")],
    ),
    "test_scale_to_zero_stops_every_instance": Case(
        desired=[want(web=0)],
        nodes=ABC,
        instances=[at("web.1", "a"), at("web.2", "b")],
        stop=[stop("web.1"), stop("web.2")],
    ),
    "test_lost_node_instances_move_to_the_others_keeping_their_names": Case(
        desired=[want(web=4)],
        nodes=[node("a", ready=False), node("b"), node("c")],
        instances=[at("web.1", "a"), at("web.2", "b"), at("web.3", "a"), at("web.4", "c")],
        place=[at("web.1", "b"), at("web.3", "c")],
    ),
    "test_draining_node_instances_move_to_the_others": Case(
        desired=[want(web=2, worker=1)],
        nodes=[node("a", draining=True), node("b"), node("c")],
        instances=[at("web.1", "a"), at("web.2", "b"), at("worker.1", "a")],
        place=[at("web.1", "c"), at("worker.1", "b")],
    ),
    "test_instances_on_an_unknown_node_move_like_lost_ones": Case(
        desired=[want(web=1)],
        nodes=[node("a")],
        instances=[at("web.1", "gone")],
        place=[at("web.1", "a")],
    ),
    "test_moved_instances_take_the_app_release": Case(
        desired=[want(release=3, web=1)],
        nodes=[node("a", ready=False), node("b")],
        instances=[at("web.1", "a", release=2)],
        place=[at("web.1", "b", release=3)],
    ),
    "test_orphans_beyond_the_formation_are_stopped_not_moved": Case(
        desired=[want(web=2)],
        nodes=[node("a", ready=False), node("b")],
        instances=[at("web.1", "a"), at("web.2", "b"), at("web.3", "a")],
        place=[at("web.1", "b")],
        stop=[stop("web.3")],
    ),
    "test_orphans_are_stopped_when_the_eligible_nodes_already_hold_too_many": Case(
        desired=[want(web=1)],
        nodes=[node("a", ready=False), node("b")],
        instances=[at("web.1", "a"), at("web.2", "b"), at("web.3", "b")],
        stop=[stop("web.1"), stop("web.3")],
    ),
    "test_full_capacity_counts_the_rest_as_unplaced": Case(
        desired=[want(web=4), want(app="blog", worker=1)],
        nodes=[node("a", capacity=1), node("b", capacity=2)],
        instances=[at("worker.1", "b", app="blog")],
        place=[at("web.1", "a"), at("web.2", "b")],
        unplaced={(APP, "web"): full(2)},
    ),
    "test_capacity_counts_every_app_on_the_node": Case(
        desired=[want(web=2), want(app="blog", web=1)],
        nodes=[node("a", capacity=2), node("b", capacity=1)],
        instances=[at("web.1", "a", app="blog")],
        place=[at("web.1", "b"), at("web.2", "a")],
    ),
    "test_stops_of_one_app_free_room_for_another_in_the_same_plan": Case(
        desired=[want(app="aaa", web=1), want(app="zzz", web=0)],
        nodes=[node("a", capacity=1)],
        instances=[at("web.1", "a", app="zzz")],
        place=[at("web.1", "a", app="aaa")],
        stop=[stop("web.1", app="zzz")],
    ),
    "test_moves_come_before_new_instances_when_room_is_short": Case(
        desired=[want(app="aaa", web=1), want(app="zzz", web=1)],
        nodes=[node("a", ready=False), node("b", capacity=1)],
        instances=[at("web.1", "a", app="zzz")],
        place=[at("web.1", "b", app="zzz")],
        unplaced={("aaa", "web"): full(1)},
    ),
    "test_an_orphan_with_no_room_stays_where_it_is_and_counts_as_unplaced": Case(
        desired=[want(web=2)],
        nodes=[node("a", draining=True), node("b", capacity=1)],
        instances=[at("web.1", "a"), at("web.2", "b")],
        unplaced={(APP, "web"): full(1)},
    ),
    "test_a_new_release_leaves_kept_instances_alone_for_the_rollout": Case(
        desired=[want(release=2, web=2)],
        nodes=ABC,
        instances=[at("web.1", "c"), at("web.2", "a", release=2)],
    ),
    "test_a_rollback_leaves_kept_instances_alone_too": Case(
        desired=[want(release=1, web=1)],
        nodes=ABC,
        instances=[at("web.1", "b", release=2)],
    ),
    "test_scale_up_during_a_rollout_places_the_new_release": Case(
        desired=[want(release=2, web=2)],
        nodes=ABC,
        instances=[at("web.1", "a", release=1)],
        place=[at("web.2", "b", release=2)],
    ),
    "test_type_removed_from_formation_is_stopped": Case(
        desired=[want(web=1)],
        nodes=ABC,
        instances=[at("web.1", "a"), at("clock.1", "b"), at("clock.2", "c")],
        stop=[stop("clock.1"), stop("clock.2")],
    ),
    "test_app_removed_is_stopped": Case(
        desired=[want(web=1)],
        nodes=ABC,
        instances=[at("web.1", "a"), at("web.1", "b", app="old"), at("worker.1", "c", app="old")],
        stop=[stop("web.1", app="old"), stop("worker.1", app="old")],
    ),
    "test_names_reuse_the_lowest_free_index": Case(
        desired=[want(web=5)],
        nodes=[node("a")],
        instances=[at("web.1", "a"), at("web.3", "a"), at("web.4", "a")],
        place=[at("web.2", "a"), at("web.5", "a")],
    ),
    "test_never_deployed_app_places_nothing": Case(
        desired=[want(release=0, web=3)],
        nodes=ABC,
        instances=[],
    ),
    "test_unchanged_world_gives_an_empty_plan": Case(
        desired=[want(web=2, worker=1)],
        nodes=[*ABC, node("d", ready=False)],
        instances=[at("web.1", "a"), at("web.2", "b"), at("worker.1", "c")],
    ),
    "test_no_eligible_node_leaves_everything_unplaced": Case(
        desired=[want(web=2)],
        nodes=[node("a", ready=False)],
        instances=[],
        unplaced={(APP, "web"): nowhere(2)},
    ),
    "test_no_node_at_all_says_no_eligible_node": Case(
        desired=[want(web=2, worker=1)],
        nodes=[],
        instances=[],
        unplaced={(APP, "web"): nowhere(2), (APP, "worker"): nowhere(1)},
    ),
    "test_every_node_lost_or_draining_says_no_eligible_node_not_full": Case(
        # Both nodes have room; neither may take work (web.1 stays on b, unplaced too).
        desired=[want(web=3)],
        nodes=[node("a", ready=False), node("b", draining=True)],
        instances=[at("web.1", "b")],
        unplaced={(APP, "web"): nowhere(3)},
    ),
    "test_orphans_of_a_draining_node_with_nowhere_to_go_say_no_eligible_node": Case(
        desired=[want(web=2)],
        nodes=[node("a", draining=True), node("b", ready=False, capacity=100)],
        instances=[at("web.1", "a"), at("web.2", "b")],
        unplaced={(APP, "web"): nowhere(2)},
    ),
    "test_eligible_nodes_of_no_capacity_are_full_not_missing": Case(
        desired=[want(web=1)],
        nodes=[node("a", capacity=0), node("b", ready=False)],
        instances=[],
        unplaced={(APP, "web"): full(1)},
    ),
    "test_a_full_node_beside_a_lost_one_says_full": Case(
        desired=[want(web=3)],
        nodes=[node("a", capacity=1), node("b", ready=False, capacity=100)],
        instances=[at("web.1", "a")],
        unplaced={(APP, "web"): full(2)},
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_plan(case: Case) -> None:
    result = plan(case.desired, case.nodes, case.instances)
    assert result == Plan(place=case.place, stop=case.stop, unplaced=case.unplaced)


# --- what the app's log says of instances that found no node ------------------

SHORTFALL_TEXTS = {
    "test_no_node_at_all_says_none_has_joined": (
        nowhere(2),
        [],
        "No node for 2 web instance(s): no node has joined the cluster",
    ),
    "test_lost_and_draining_nodes_are_counted": (
        nowhere(1),
        [node("a", ready=False), node("b", draining=True), node("c", ready=False)],
        "No node for 1 web instance(s): every node is lost or draining (2 lost, 1 draining)",
    ),
    "test_a_lost_node_that_was_draining_counts_as_lost": (
        nowhere(3),
        [node("a", ready=False, draining=True)],
        "No node for 3 web instance(s): every node is lost or draining (1 lost)",
    ),
    "test_no_matching_node_counts_the_eligible_nodes": (
        Unplaced(2, Shortfall.NO_MATCHING_NODE),
        [node("a"), node("b", ready=False)],
        "No node for 2 web instance(s): none of the 1 eligible node(s) meets its "
        "placement rules (see `paas why`)",
    ),
    "test_full_counts_the_eligible_nodes_and_their_room": (
        full(4),
        [node("a", capacity=2), node("b", capacity=3), node("c", ready=False, capacity=9)],
        "No room for 4 web instance(s): every eligible node is full "
        "(2 node(s), room for 5 instance(s) in all)",
    ),
}


@pytest.mark.parametrize(
    ("unplaced", "nodes", "text"), list(SHORTFALL_TEXTS.values()), ids=list(SHORTFALL_TEXTS)
)
def test_shortfall_text(unplaced: Unplaced, nodes: list[NodeView], text: str) -> None:
    assert shortfall_text(unplaced, "web", nodes) == text


# --- properties -------------------------------------------------------------

APPS = ("api", "shop")
TYPES = ("web", "worker", "clock")
NODES = ("n1", "n2", "n3", "n4")

formations = st.dictionaries(st.sampled_from(TYPES), st.integers(0, 6), max_size=len(TYPES))


@st.composite
def desireds(draw: st.DrawFn, min_release: int = 0) -> list[AppDesired]:
    """Formations for some of APPS; release 0 is an app never deployed."""
    apps = draw(st.lists(st.sampled_from(APPS), unique=True, max_size=len(APPS)))
    return [
        AppDesired(app, draw(st.integers(min_release, 3)), draw(formations)) for app in sorted(apps)
    ]


@st.composite
def node_sets(draw: st.DrawFn) -> list[NodeView]:
    count = draw(st.integers(1, len(NODES)))
    return [
        NodeView(name, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 8)))
        for name in NODES[:count]
    ]


@st.composite
def any_instances(draw: st.DrawFn) -> list[Placed]:
    """Any assignments, even ones no plan would make: unknown apps and nodes, crowded nodes."""
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from((*APPS, "gone")), st.sampled_from(TYPES), st.integers(1, 8)),
            unique=True,
            max_size=20,
        )
    )
    return [
        Placed(
            app,
            InstanceName(type_, index),
            draw(st.sampled_from((*NODES, "ghost"))),
            draw(st.integers(1, 3)),
        )
        for app, type_, index in keys
    ]


def replan(desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]) -> list[Placed]:
    return apply(world, plan(desired, nodes, world))


def per_type(world: Sequence[Placed]) -> Counter[tuple[str, str]]:
    return Counter((i.app, i.name.type) for i in world)


@given(desireds(), node_sets(), any_instances())
def test_never_more_instances_than_the_formation(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> None:
    change = plan(desired, nodes, world)
    after = per_type(apply(world, change))
    formation = {(d.app, t): n for d in desired for t, n in d.formation.items()}
    for key, count in after.items():
        assert count <= formation.get(key, 0)
    for d in desired:
        for type_, count in d.formation.items():
            if d.release > 0:
                # Short only by what found no room.
                short = change.unplaced.get((d.app, type_))
                assert after[(d.app, type_)] >= count - (short.count if short else 0)


@settings(max_examples=300)
@given(st.lists(desireds(min_release=1), min_size=1, max_size=6), st.booleans())
def test_spread_per_type_stays_within_one_through_formation_changes(
    steps: list[list[AppDesired]], with_draining_node: bool
) -> None:
    nodes = [node(name, capacity=100) for name in NODES[:3]]
    if with_draining_node:
        nodes.append(node("n4", draining=True, capacity=100))
    world: list[Placed] = []
    for desired in steps:
        world = replan(desired, nodes, world)
        for app in APPS:
            for type_ in TYPES:
                counts = [
                    sum(1 for i in world if (i.app, i.name.type, i.node) == (app, type_, n.name))
                    for n in nodes
                    if n.eligible
                ]
                assert max(counts) - min(counts) <= 1, (app, type_, counts, world)


@given(desireds(), node_sets(), any_instances())
def test_kept_instances_keep_their_release_and_placed_ones_take_the_app_release(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> None:
    releases = {d.app: d.release for d in desired if d.release > 0}
    before = {(i.app, i.name): i for i in world}
    change = plan(desired, nodes, world)
    for p in change.place:
        assert p.release == releases[p.app], p
        old = before.get((p.app, p.name))
        assert old is None or old.node != p.node, "no release change in place"


@given(desireds(), node_sets(), any_instances())
def test_the_reason_is_no_eligible_node_exactly_when_no_node_is_eligible(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> None:
    reasons = {u.reason for u in plan(desired, nodes, world).unplaced.values()}
    if any(n.eligible for n in nodes):
        assert reasons <= {Shortfall.NO_ROOM}
    else:
        assert reasons <= {Shortfall.NO_ELIGIBLE_NODE}


@given(desireds(), node_sets(), any_instances())
def test_planning_again_after_applying_gives_an_empty_plan(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> None:
    # Holds even with unplaced instances: what found no room finds none the next time either.
    world = replan(desired, nodes, world)
    assert plan(desired, nodes, world).empty


@given(desireds(min_release=1), st.integers(2, len(NODES)), st.data())
def test_lost_node_ends_with_no_instances_and_all_of_them_move(
    desired: list[AppDesired], node_count: int, data: st.DataObject
) -> None:
    nodes = [node(name, capacity=100) for name in NODES[:node_count]]
    world = replan(desired, nodes, [])
    lost = data.draw(st.sampled_from(nodes))
    were_there = {(i.app, i.name) for i in world if i.node == lost.name}

    nodes = [replace(n, ready=False) if n == lost else n for n in nodes]
    change = plan(desired, nodes, world)
    world = apply(world, change)

    assert change.unplaced == {}
    assert not [i for i in world if i.node == lost.name]
    moved = {(p.app, p.name) for p in change.place}
    assert were_there <= moved


@given(
    st.lists(st.tuples(desireds(), st.lists(st.tuples(st.booleans(), st.booleans()))), max_size=6),
    st.lists(st.integers(0, 5), min_size=len(NODES), max_size=len(NODES)),
)
def test_capacity_is_never_exceeded(
    steps: list[tuple[list[AppDesired], list[tuple[bool, bool]]]], capacities: list[int]
) -> None:
    world: list[Placed] = []
    for desired, states in steps:
        # Nodes come and go, drain and return, between the formation changes.
        ready_draining = [*states, *[(True, False)] * len(NODES)]
        nodes = [
            NodeView(name, ready, draining, capacity)
            for name, capacity, (ready, draining) in zip(
                NODES, capacities, ready_draining, strict=False
            )
        ]
        world = replan(desired, nodes, world)
        load = Counter(i.node for i in world)
        for n in nodes:
            assert load[n.name] <= n.capacity, (n, world)


@given(desireds(), node_sets(), any_instances())
def test_instance_names_stay_unique_per_app(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> None:
    change = plan(desired, nodes, world)
    touched = [(p.app, p.name) for p in change.place] + change.stop
    assert len(touched) == len(set(touched)), "one name placed or stopped twice"

    # A placement under an existing name is a move off an ineligible node; it never
    # takes the name of a healthy instance.
    eligible = {n.name for n in nodes if n.eligible}
    where = {(i.app, i.name): i.node for i in world}
    for p in change.place:
        before = where.get((p.app, p.name))
        assert before is None or before not in eligible

    after = apply(world, change)
    assert len({(i.app, i.name) for i in after}) == len(after)


@given(desireds(), node_sets(), any_instances(), st.randoms(use_true_random=False))
def test_the_plan_does_not_depend_on_input_order(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed], rng: random.Random
) -> None:
    expected = plan(desired, nodes, world)
    desired, nodes, world = list(desired), list(nodes), list(world)
    rng.shuffle(desired)
    rng.shuffle(nodes)
    rng.shuffle(world)
    assert plan(desired, nodes, world) == expected


# --- the fast placer against the straightforward one -------------------------

MANY_NODES = tuple(f"m{i:02}" for i in range(12))


@st.composite
def big_worlds(draw: st.DrawFn) -> tuple[list[AppDesired], list[NodeView], list[Placed]]:
    """Worlds with more nodes and larger formations than the others, so that the
    placer's heaps go stale, fill up and set holders aside."""
    apps = draw(st.lists(st.sampled_from(("a", "b", "c")), unique=True, min_size=1))
    big = st.dictionaries(st.sampled_from(TYPES), st.integers(0, 30), max_size=len(TYPES))
    desired = [AppDesired(app, draw(st.integers(1, 2)), draw(big)) for app in sorted(apps)]
    count = draw(st.integers(1, len(MANY_NODES)))
    nodes = [
        NodeView(name, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 12)))
        for name in MANY_NODES[:count]
    ]
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(("a", "b", "c")), st.sampled_from(TYPES), st.integers(1, 40)),
            unique=True,
            max_size=60,
        )
    )
    world = [
        Placed(app, InstanceName(type_, index), draw(st.sampled_from(MANY_NODES)), 1)
        for app, type_, index in keys
    ]
    return desired, nodes, world


@settings(max_examples=400, deadline=None)
@given(big_worlds())
def test_the_fast_placer_gives_the_plan_of_the_straightforward_one(
    world: tuple[list[AppDesired], list[NodeView], list[Placed]],
) -> None:
    desired, nodes, instances = world
    assert plan(desired, nodes, instances) == reference_plan(desired, nodes, instances)


@settings(deadline=None)
@given(desireds(), node_sets(), any_instances())
def test_the_fast_placer_agrees_on_small_odd_worlds_too(
    desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> None:
    assert plan(desired, nodes, world) == reference_plan(desired, nodes, world)


def test_the_fast_placer_agrees_at_a_few_hundred_nodes() -> None:
    rng = random.Random(15)
    nodes = [
        NodeView(f"n{i:03}", rng.random() > 0.05, rng.random() < 0.05, rng.randint(0, 40))
        for i in range(300)
    ]
    world = [
        Placed(app, InstanceName(type_, index), f"n{rng.randrange(320):03}", 1)
        for app in ("a", "b")
        for type_ in TYPES
        for index in rng.sample(range(1, 900), 300)
    ]
    desired = [
        AppDesired("a", 2, {"web": 1500, "worker": 40, "clock": 0}),
        AppDesired("b", 1, {"web": 200, "worker": 900}),
        AppDesired("c", 1, {"web": 7}),
    ]
    assert plan(desired, nodes, world) == reference_plan(desired, nodes, world)


# --- placement rules: constraints, spread, distinct hosts, memory and cores --------

ZONES = ("eu-1", "eu-2", "us-1")
RULES = st.builds(
    TypePlacement,
    constraints=st.lists(
        st.builds(
            Constraint,
            st.sampled_from(("zone", "disk")),
            st.sampled_from(("=", "!=")),
            st.sampled_from(("eu-1", "eu-2", "hdd", "ssd")),
        ),
        max_size=2,
    ).map(tuple),
    spread=st.sampled_from(("", "zone")),
    distinct_hosts=st.booleans(),
    memory=st.sampled_from((0, 256, 512)),
    cpu=st.sampled_from((0.0, 0.25, 0.5, 1.0)),
)


@st.composite
def ruled_worlds(
    draw: st.DrawFn, roomy: bool = False
) -> tuple[list[AppDesired], list[NodeView], list[Placed]]:
    apps = draw(st.lists(st.sampled_from(("a", "b")), unique=True, min_size=1))
    desired = [
        AppDesired(
            app,
            1,
            draw(st.dictionaries(st.sampled_from(TYPES), st.integers(0, 12), max_size=3)),
            draw(st.dictionaries(st.sampled_from(TYPES), RULES, max_size=3)),
        )
        for app in sorted(apps)
    ]
    nodes = [
        NodeView(
            name,
            roomy or draw(st.booleans()),
            not roomy and draw(st.booleans()),
            100 if roomy else draw(st.integers(0, 12)),
            labels=draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "zone": st.sampled_from(ZONES),
                        "disk": st.sampled_from(("hdd", "ssd")),
                    },
                )
            ),
            memory=1 << 30 if roomy else draw(st.sampled_from((0, 512, 1024, 2048))),
            cpu=64.0 if roomy else draw(st.sampled_from((0.0, 1.0, 2.0))),
        )
        for name in MANY_NODES[: draw(st.integers(1, len(MANY_NODES)))]
    ]
    keys = draw(
        st.lists(
            st.tuples(st.sampled_from(("a", "b")), st.sampled_from(TYPES), st.integers(1, 14)),
            unique=True,
            max_size=0 if roomy else 30,
        )
    )
    world = [
        Placed(app, InstanceName(type_, index), draw(st.sampled_from(MANY_NODES)), 1)
        for app, type_, index in keys
    ]
    return desired, nodes, world


def rules_of(desired: list[AppDesired]) -> dict[tuple[str, str], TypePlacement]:
    return {(d.app, t): r for d in desired for t, r in d.placement.items()}


@settings(max_examples=400, deadline=None)
@given(ruled_worlds())
def test_with_rules_the_fast_placer_gives_the_plan_of_the_straightforward_one(
    world: tuple[list[AppDesired], list[NodeView], list[Placed]],
) -> None:
    desired, nodes, instances = world
    assert plan(desired, nodes, instances) == reference_plan(desired, nodes, instances)


@settings(deadline=None)  # the reference is slow on a loaded machine
@given(ruled_worlds())
def test_constraints_and_distinct_hosts_hold_for_all_but_what_fits_nowhere(
    world: tuple[list[AppDesired], list[NodeView], list[Placed]],
) -> None:
    desired, nodes, instances = world
    change = plan(desired, nodes, instances)
    by_name = {n.name: n for n in nodes}
    rules = rules_of(desired)
    placed = {(p.app, p.name) for p in change.place}
    for p in change.place:
        r = rules.get((p.app, p.name.type), TypePlacement())
        assert r.allows(dict(by_name[p.node].labels)), f"{p} breaks {r}"
    after = apply(instances, change)
    for (app, type_), r in rules.items():
        mine = [i for i in after if (i.app, i.name.type) == (app, type_)]
        if r.distinct_hosts:
            hosts = Counter(i.node for i in mine if (i.app, i.name) in placed)
            assert all(n == 1 for n in hosts.values()), "a placement shares a host"
        breaking = [
            i for i in mine if i.node not in by_name or not r.allows(dict(by_name[i.node].labels))
        ]
        stuck = change.unplaced.get((app, type_))
        # An instance with nowhere to go stays where it is, and is counted as unplaced.
        assert len(breaking) <= (stuck.count if stuck else 0)


@settings(deadline=None)  # the reference is slow on a loaded machine
@given(ruled_worlds(roomy=True))
def test_spread_is_within_one_across_label_values_and_reservations_fit(
    world: tuple[list[AppDesired], list[NodeView], list[Placed]],
) -> None:
    desired, nodes, _ = world
    change = plan(desired, nodes, [])
    by_name = {n.name: n for n in nodes}
    for (app, type_), r in rules_of(desired).items():
        allowed = {n.labels.get(r.spread, "") for n in nodes if r.allows(dict(n.labels))}
        if not r.spread or not allowed:
            continue
        per_value = Counter(
            by_name[p.node].labels[r.spread]
            for p in change.place
            if (p.app, p.name.type) == (app, type_)
        )
        if r.distinct_hosts:
            continue  # a value with fewer hosts can run out first
        counts = [per_value.get(v, 0) for v in allowed]
        assert max(counts) - min(counts) <= 1, f"{app} {type_} over {r.spread}: {per_value}"


@settings(deadline=None)  # the reference is slow on a loaded machine
@given(ruled_worlds())
def test_reserved_memory_and_cores_never_exceed_a_nodes_by_placements(
    world: tuple[list[AppDesired], list[NodeView], list[Placed]],
) -> None:
    desired, nodes, _ = world
    change = plan(desired, nodes, [])
    rules = rules_of(desired)
    memory: Counter[str] = Counter()
    cpu: dict[str, float] = {}
    for p in change.place:
        r = rules.get((p.app, p.name.type), TypePlacement())
        memory[p.node] += r.memory
        cpu[p.node] = cpu.get(p.node, 0.0) + r.cpu
    for n in nodes:
        assert memory[n.name] <= n.memory or memory[n.name] == 0
        assert cpu.get(n.name, 0.0) <= n.cpu + 1e-9 or cpu.get(n.name, 0.0) == 0


@settings(deadline=None)  # the reference is slow on a loaded machine
@given(ruled_worlds())
def test_with_rules_planning_again_after_applying_gives_an_empty_plan(
    world: tuple[list[AppDesired], list[NodeView], list[Placed]],
) -> None:
    desired, nodes, instances = world
    after = replan(desired, nodes, instances)
    assert plan(desired, nodes, after).empty


def labelled(name: str, zone: str, memory: int = 0, cpu: float = 0.0) -> NodeView:
    return NodeView(name, True, False, 10, labels={"zone": zone}, memory=memory, cpu=cpu)


ZONED = [labelled("a", "eu-1"), labelled("b", "eu-1"), labelled("c", "eu-2"), labelled("d", "us-1")]


def ruled(rules: TypePlacement, web: int) -> list[AppDesired]:
    return [AppDesired(APP, 1, {"web": web}, {"web": rules})]


def nodes_of(change: Plan) -> list[str]:
    return [p.node for p in change.place]


def test_a_constraint_keeps_instances_on_matching_nodes() -> None:
    rules = TypePlacement(constraints=(Constraint("zone", "=", "eu-1"),))
    assert nodes_of(plan(ruled(rules, 4), ZONED, [])) == ["a", "b", "a", "b"]


def test_a_negated_constraint_keeps_them_off() -> None:
    rules = TypePlacement(constraints=(Constraint("zone", "!=", "eu-1"),))
    assert sorted(nodes_of(plan(ruled(rules, 2), ZONED, []))) == ["c", "d"]


def test_an_instance_on_a_node_its_constraints_no_longer_allow_moves() -> None:
    rules = TypePlacement(constraints=(Constraint("zone", "=", "eu-2"),))
    assert plan(ruled(rules, 1), ZONED, [at("web.1", "a")]).place == [at("web.1", "c")]


def test_no_matching_node_says_so() -> None:
    rules = TypePlacement(constraints=(Constraint("zone", "=", "mars"),))
    change = plan(ruled(rules, 2), ZONED, [])
    assert change.unplaced == {(APP, "web"): Unplaced(2, Shortfall.NO_MATCHING_NODE)}


def test_spread_fills_each_zone_before_any_zone_gets_another() -> None:
    # eu-1 has two nodes, but each zone gets one instance before any gets a second.
    change = plan(ruled(TypePlacement(spread="zone"), 3), ZONED, [])
    assert sorted(nodes_of(change)) == ["a", "c", "d"]


def test_distinct_hosts_puts_at_most_one_per_node_and_says_the_rest_find_no_room() -> None:
    change = plan(ruled(TypePlacement(distinct_hosts=True), 6), ZONED, [])
    assert sorted(nodes_of(change)) == ["a", "b", "c", "d"]
    assert change.unplaced == {(APP, "web"): full(2)}


def test_distinct_hosts_moves_a_second_instance_off_a_shared_node() -> None:
    change = plan(
        ruled(TypePlacement(distinct_hosts=True), 2), ZONED, [at("web.1", "a"), at("web.2", "a")]
    )
    assert change.place == [at("web.2", "b")]


def test_memory_and_cores_are_reserved_against_each_nodes() -> None:
    nodes = [labelled("a", "z", memory=1024, cpu=4.0), labelled("b", "z", memory=512, cpu=0.5)]
    change = plan(ruled(TypePlacement(memory=512, cpu=0.5), 5), nodes, [])
    assert Counter(nodes_of(change)) == {"a": 2, "b": 1}
    assert change.unplaced == {(APP, "web"): full(2)}
