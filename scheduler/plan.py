"""The placement plan: what to place, move and stop so the world matches the formation.

Pure: `plan(desired, nodes, instances) -> Plan` does no I/O and keeps no state.
The reconcile loop reads etcd and agent sessions, calls it, and commits the
result; nothing here may reach for a clock, a socket or etcd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from paas.common.names import InstanceName


@dataclass(frozen=True)
class AppDesired:
    """What the operator asked for one app: its current release and formation."""

    app: str
    release: int
    formation: Mapping[str, int]  # process type -> count


@dataclass(frozen=True)
class NodeView:
    """A node as placement sees it."""

    name: str
    ready: bool  # session alive, or silent for less than the grace period
    draining: bool
    capacity: int  # most instances it may hold

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


@dataclass(frozen=True)
class Plan:
    """Changes to the assignments. Empty when the world already matches."""

    # New assignments, and replacements of an existing one with the same
    # (app, name): a move to another node or a new release on the same node.
    place: list[Placed] = field(default_factory=list)
    # Assignments to delete: (app, instance name).
    stop: list[tuple[str, InstanceName]] = field(default_factory=list)
    # Instances that fit nowhere, per (app, process type).
    unplaced: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.place and not self.stop


def plan(
    desired: Sequence[AppDesired], nodes: Sequence[NodeView], instances: Sequence[Placed]
) -> Plan:
    raise NotImplementedError  # written in the plan task
