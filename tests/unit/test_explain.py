"""`paas why`: the nodes each placement filter rules out, against what plan() does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from paas.common.names import InstanceName
from paas.common.placement import Constraint, TypePlacement
from paas.scheduler.explain import Filtered, explain
from paas.scheduler.plan import AppDesired, NodeView, Placed, plan

APP = "shop"
WEB = InstanceName("web", 7)


def node(name: str, capacity: int = 10, **labels: str) -> NodeView:
    return NodeView(name, ready=True, draining=False, capacity=capacity, labels=labels,
                    memory=1 << 30, cpu=2.0)  # fmt: skip


def at(name: str, node_: str, app: str = APP) -> Placed:
    return Placed(app, InstanceName.parse(name), node_, 1)


def test_each_node_is_counted_by_the_first_filter_that_rules_it_out() -> None:
    nodes = [
        NodeView("lost", ready=False, draining=False, capacity=10, labels={"zone": "eu-1"}),
        NodeView("drained", ready=True, draining=True, capacity=10, labels={"zone": "eu-1"}),
        node("us", zone="us-1"),
        node("us2", zone="us-1"),
        node("full", capacity=1, zone="eu-1"),
        node("tight", zone="eu-1"),
        node("holder", zone="eu-1"),
        node("free", zone="eu-1"),
    ]
    rules = {
        (APP, "web"): TypePlacement(
            constraints=(Constraint("zone", "=", "eu-1"),), memory=512 << 20, distinct_hosts=True
        ),
        ("other", "db"): TypePlacement(memory=768 << 20),
    }
    instances = [at("db.1", "full", app="other"), at("db.2", "tight", app="other"),
                 at("web.1", "holder")]  # fmt: skip
    found = explain(APP, WEB, nodes, instances, rules)
    assert found.filters == [
        Filtered("lost", 1),
        Filtered("draining", 1),
        Filtered("constraint zone=eu-1", 2),
        Filtered("full (capacity)", 1),
        Filtered("memory 512M", 1),
        Filtered("distinct_hosts", 1),
    ]
    assert (found.node, found.nodes, found.candidates) == ("", 8, 1)
    assert found.summary == "web.7 is not placed yet: 1 of 8 nodes could take it"


def test_a_placed_instance_does_not_count_against_its_own_node() -> None:
    rules = {(APP, "web"): TypePlacement(distinct_hosts=True)}
    found = explain(APP, WEB, [node("a"), node("b")], [at("web.7", "a"), at("web.1", "b")], rules)
    assert found.node == "a"
    assert found.filters == [Filtered("distinct_hosts", 1)]
    assert found.summary == "web.7 runs on a; 1 of 2 nodes could take another"


def test_nothing_left_and_no_nodes_say_so() -> None:
    rules = {(APP, "web"): TypePlacement(constraints=(Constraint("disk", "=", "ssd"),))}
    found = explain(APP, WEB, [node("a"), node("b")], [], rules)
    assert found.filters == [Filtered("constraint disk=ssd", 2)]
    assert found.summary == "web.7 is not placed: no node is left after the filters (2 nodes)"
    assert explain(APP, WEB, [], [], {}).summary == (
        "web.7 is not placed: no node has joined the cluster"
    )


def test_spread_rules_out_nodes_without_its_label_and_cpu_counts_reservations() -> None:
    rules = {(APP, "web"): TypePlacement(spread="zone", cpu=1.5)}
    nodes = [node("a", zone="x"), node("b"), node("c", zone="y")]
    found = explain(APP, WEB, nodes, [at("web.1", "c")], rules)
    assert found.filters == [Filtered("spread: no label zone", 1), Filtered("cpu 1.5", 1)]
    assert found.candidates == 1


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[NodeView], TypePlacement, int]:
    count = draw(st.integers(1, 8))
    nodes = [
        NodeView(
            f"n{i}",
            ready=draw(st.booleans()) or i == 0,
            draining=draw(st.sampled_from([False, False, True])),
            capacity=draw(st.integers(0, 4)),
            labels={"zone": draw(st.sampled_from(["a", "b"]))} if draw(st.booleans()) else {},
            memory=draw(st.sampled_from([0, 1 << 30, 3 << 30])),
            cpu=draw(st.sampled_from([0.0, 1.0, 2.0])),
        )
        for i in range(count)
    ]
    rules = TypePlacement(
        constraints=draw(st.sampled_from([(), (Constraint("zone", "!=", "b"),)])),
        spread=draw(st.sampled_from(["", "zone"])),
        distinct_hosts=draw(st.booleans()),
        memory=draw(st.sampled_from([0, 1 << 30])),
        cpu=draw(st.sampled_from([0.0, 0.5])),
    )
    return nodes, rules, draw(st.integers(0, 10))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_a_next_instance_is_placed_exactly_when_nodes_are_left(
    world: tuple[list[NodeView], TypePlacement, int],
) -> None:
    """Grow a type one at a time with plan(): each next instance is placed iff
    explain() leaves a candidate for it."""
    nodes, placement, steps = world
    rules = {(APP, "web"): placement} if not placement.plain else {}
    placed: list[Placed] = []
    for count in range(1, steps + 1):
        name = InstanceName("web", count)
        found = explain(APP, name, nodes, placed, rules)
        desired = [AppDesired(APP, 1, {"web": count}, placement={"web": placement})]
        result = plan(desired, nodes, placed)
        assert (name in {p.name for p in result.place}) == (found.candidates > 0), found
        if not found.candidates:
            return
        placed = sorted([*placed, *result.place], key=lambda p: p.name.index)
