"""Benchmark: the pure placement plan at cluster scale, against the straightforward placer.

For each cluster size (100, 1,000 and 5,000 nodes by default) it builds an empty
world of ready nodes and a formation of 20 instances per node, spread over 10
apps of 2 process types each, and times `plan()`:

- scale up: every instance placed from an empty world (placements/s);
- replan: the same formation on the world after applying that plan (must be
  empty, and should cost next to nothing);
- step: one app's web type grown by 10% on that world.

The floor, measured in the same run and on the same nodes, is the
straightforward placer (tests/unit/plan_reference.py, the placer as it was
before it was made fast: every placement scans every node). It costs O(nodes)
per placement, so it is timed on fewer placements (`--reference-placements`)
and its plan is checked equal to the fast one's on that world.

Times are CPU seconds of this process (time.process_time), so a machine busy
with other work shows less in them than in wall-clock time.

    .venv/bin/python bench/placement.py
    .venv/bin/python bench/placement.py --nodes 5000 --per-node 20 --reference-placements 2000
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paas.scheduler.plan import AppDesired, NodeView, Placed, Plan, plan
from tests.unit.plan_reference import reference_plan

APPS = 10
TYPES = ("web", "worker")
GOAL = 20_000  # placements/s at 5,000 nodes and 100,000 instances

Planner = Callable[[Sequence[AppDesired], Sequence[NodeView], Sequence[Placed]], Plan]


def formation(total: int) -> list[AppDesired]:
    """`total` instances over APPS apps of len(TYPES) types, as evenly as they divide."""
    groups = APPS * len(TYPES)
    counts = [total // groups + (1 if g < total % groups else 0) for g in range(groups)]
    return [
        AppDesired(
            f"app{a:02}",
            1,
            {t: counts[a * len(TYPES) + i] for i, t in enumerate(TYPES)},
        )
        for a in range(APPS)
    ]


def timed(
    planner: Planner, desired: list[AppDesired], nodes: list[NodeView], world: list[Placed]
) -> tuple[Plan, float]:
    gc.collect()
    start = time.process_time()
    result = planner(desired, nodes, world)
    return result, time.process_time() - start


def apply(world: list[Placed], change: Plan) -> list[Placed]:
    stopped = set(change.stop)
    placed = {(p.app, p.name): p for p in change.place}
    kept = [i for i in world if (i.app, i.name) not in stopped and (i.app, i.name) not in placed]
    return kept + list(placed.values())


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>9,.0f}/s" if seconds > 0 else "      inf/s"


def one_size(node_count: int, per_node: int, reference_placements: int) -> bool:
    total = node_count * per_node
    capacity = per_node * 3 // 2 + 1
    nodes = [NodeView(f"node-{i:05}", True, False, capacity) for i in range(node_count)]
    desired = formation(total)

    up, up_s = timed(plan, desired, nodes, [])
    world = apply([], up)
    again, again_s = timed(plan, desired, nodes, world)
    grown = [
        AppDesired(d.app, d.release, {**d.formation, "web": d.formation["web"] * 11 // 10})
        if d.app == "app00"
        else d
        for d in desired
    ]
    step, step_s = timed(plan, grown, nodes, world)

    small = formation(min(total, reference_placements))
    ref, ref_s = timed(reference_plan, small, nodes, [])
    fast_small, fast_small_s = timed(plan, small, nodes, [])

    print(f"{node_count:>6,} nodes, {total:>7,} instances (capacity {capacity} each)")
    print(
        f"  scale up  fast: {len(up.place):>7,} placements in {up_s:7.3f} s"
        f" = {rate(len(up.place), up_s)}"
    )
    print(
        f"  reference     : {len(ref.place):>7,} placements in {ref_s:7.3f} s"
        f" = {rate(len(ref.place), ref_s)}"
        f"   (fast on the same: {rate(len(fast_small.place), fast_small_s)};"
        f" {(ref_s / len(ref.place)) / (up_s / len(up.place)):,.0f}x per placement)"
    )
    print(
        f"  replan unchanged: {'empty' if again.empty else 'NOT EMPTY'} in {again_s * 1000:7.1f} ms"
    )
    print(f"  step app00 web +10%: {len(step.place):,} placements in {step_s * 1000:7.1f} ms")
    same = fast_small == ref
    if not same:
        print("  MISMATCH: the fast plan differs from the reference plan")
    return same and again.empty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1_000, 5_000])
    parser.add_argument("--per-node", type=int, default=20, help="instances per node (default 20)")
    parser.add_argument(
        "--reference-placements",
        type=int,
        default=2_000,
        help="placements the reference placer is timed on (default 2,000)",
    )
    args = parser.parse_args()
    print(
        f"paas bench placement: pure plan(), {APPS} apps x {len(TYPES)} types, "
        f"{args.per_node} instances per node, CPU seconds of one process"
    )
    ok = all(one_size(n, args.per_node, args.reference_placements) for n in args.nodes)
    print(f"goal: at least {GOAL:,} placements/s at 5,000 nodes and 100,000 instances")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
