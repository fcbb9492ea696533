"""spread + distinct_hosts: when the two rules cannot both hold for a formation."""

from __future__ import annotations

import itertools

import pytest

from paas.common.placement import Constraint, TypePlacement, spread_conflict

BOTH = TypePlacement(spread="zone", distinct_hosts=True)


def zones(**counts: int) -> list[dict[str, str]]:
    return [{"zone": zone} for zone, n in counts.items() for _ in range(n)]


@pytest.mark.parametrize(
    ("count", "nodes", "holds"),
    [
        (4, zones(a=2, b=2), True),
        (5, zones(a=3, b=2), True),
        (5, zones(a=2, b=2), False),  # 5 over 2 zones: one needs 3 nodes
        (6, zones(a=3, b=1, c=3), False),  # each zone needs 2
        (6, zones(a=2, b=2, c=2), True),
        (1, zones(a=1, b=0, c=5), True),
        (0, zones(a=1), True),
    ],
)
def test_it_holds_exactly_when_each_zone_has_nodes_for_its_share(
    count: int, nodes: list[dict[str, str]], holds: bool
) -> None:
    assert (spread_conflict(BOTH, count, nodes) is None) == holds


def test_the_answer_matches_a_search_over_every_split() -> None:
    """Brute force: some split of `count` over the zones, each within one of the
    others and each at most its node count."""
    for counts in itertools.product(range(4), repeat=3):
        nodes = zones(a=counts[0], b=counts[1], c=counts[2])
        present = [c for c in counts if c]
        for count in range(1, 10):
            possible = any(
                sum(split) == count
                and max(split) - min(split) <= 1
                and all(s <= c for s, c in zip(split, present, strict=True))
                for split in itertools.product(range(count + 1), repeat=len(present))
            )
            found = spread_conflict(BOTH, count, nodes)
            assert (found is None) == (possible or not present), (counts, count, found)


def test_one_rule_alone_or_a_constraint_out_of_the_way_is_no_conflict() -> None:
    assert spread_conflict(TypePlacement(spread="zone"), 9, zones(a=1)) is None
    assert spread_conflict(TypePlacement(distinct_hosts=True), 9, zones(a=1)) is None
    ruled = TypePlacement(
        spread="zone", distinct_hosts=True, constraints=(Constraint("zone", "!=", "c"),)
    )
    assert spread_conflict(ruled, 4, zones(a=2, b=2, c=0)) is None
    said = spread_conflict(BOTH, 6, zones(a=3, b=1, c=3))
    assert said == (
        "spread = 'zone' and distinct_hosts = true cannot both hold for 6 instances: "
        "3 value(s) of zone need 2 node(s) each, and zone=b has 1"
    )
