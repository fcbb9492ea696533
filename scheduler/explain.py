"""Why an instance is where it is, or nowhere: the nodes each placement filter rules out.

Pure, like plan.py: `explain(...)` takes the same inputs as `plan()` and
counts, filter by filter in the order the placer applies them, how many of the
nodes still in the running each one rules out, as Nomad's "constraint filtered
N nodes" does, so `paas why web.7` can say

    web.7 is not placed: no node is left after the filters (12 nodes)
      lost                     1 node
      constraint zone=eu-1     8 nodes
      memory 512M              3 nodes

Counted in order, each node is ruled out by its first filter only, so the
counts add up to the nodes ruled out. It never decides anything: plan() does.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from paas.common.names import InstanceName
from paas.common.placement import Constraint, TypePlacement, show_size
from paas.scheduler.plan import NodeView, Placed

_CPU_SLACK = 1e-9  # as the placer: 0.1 + 0.2 reserved fit on a node of 0.3


@dataclass(frozen=True)
class Filtered:
    """One filter and how many nodes it ruled out (of those the earlier ones left)."""

    filter: str
    nodes: int


@dataclass(frozen=True)
class Explanation:
    """Where an instance runs (or "" when it is not placed), the nodes in all, those
    left after every filter (where another one of it could go now), and the filters
    that ruled nodes out, in order (those that ruled out none left out)."""

    instance: str
    node: str
    nodes: int
    candidates: int
    filters: list[Filtered] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: placed where, or why not."""
        total = f"{self.nodes} node{'' if self.nodes == 1 else 's'}"
        if self.node:
            return (
                f"{self.instance} runs on {self.node}; "
                f"{self.candidates} of {total} could take another"
            )
        if not self.nodes:
            return f"{self.instance} is not placed: no node has joined the cluster"
        if self.candidates:
            # Nodes are left, yet it is not placed: the next reconcile pass places it.
            return f"{self.instance} is not placed yet: {self.candidates} of {total} could take it"
        return f"{self.instance} is not placed: no node is left after the filters ({total})"


def explain(
    app: str,
    name: InstanceName,
    nodes: Sequence[NodeView],
    instances: Sequence[Placed],
    rules: Mapping[tuple[str, str], TypePlacement],
) -> Explanation:
    """Count what rules nodes out for one more instance of (app, name.type).

    `instances`: every assignment (of every app: they take room); `rules`: the
    placement rules per (app, type) that have some (what each instance of those
    reserves counts against its node). `name` itself, if placed, does not count
    against its own node, so the answer is "could it go there again"."""
    placement = rules.get((app, name.type), TypePlacement())
    here = ""
    load: Counter[str] = Counter()
    of_type: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    cpu: defaultdict[str, float] = defaultdict(float)
    for instance in instances:
        if instance.app == app and instance.name == name:
            here = instance.node
            continue
        load[instance.node] += 1
        if instance.app == app and instance.name.type == name.type:
            of_type[instance.node] += 1
        reserves = rules.get((instance.app, instance.name.type))
        if reserves is not None:
            memory[instance.node] += reserves.memory
            cpu[instance.node] += reserves.cpu

    steps: list[tuple[str, Callable[[NodeView], bool]]] = [
        ("lost", lambda n: n.ready),
        ("draining", lambda n: not n.draining),
    ]
    for constraint in placement.constraints:
        steps.append((f"constraint {constraint}", _holds(constraint)))
    if placement.spread:
        label = placement.spread
        steps.append((f"spread: no label {label}", lambda n: label in n.labels))
    steps.append(("full (capacity)", lambda n: load[n.name] < n.capacity))
    if placement.memory:
        need = placement.memory
        steps.append((f"memory {show_size(need)}", lambda n: memory[n.name] + need <= n.memory))
    if placement.cpu:
        cores = placement.cpu
        steps.append((f"cpu {cores:g}", lambda n: cpu[n.name] + cores <= n.cpu + _CPU_SLACK))
    if placement.distinct_hosts:
        steps.append(("distinct_hosts", lambda n: not of_type[n.name]))

    left = list(nodes)
    filters: list[Filtered] = []
    for label_, keeps in steps:
        kept = [n for n in left if keeps(n)]
        if len(kept) < len(left):
            filters.append(Filtered(label_, len(left) - len(kept)))
        left = kept
    return Explanation(str(name), here, len(nodes), len(left), filters)


def _holds(constraint: Constraint) -> Callable[[NodeView], bool]:
    return lambda node: constraint.holds(dict(node.labels))
