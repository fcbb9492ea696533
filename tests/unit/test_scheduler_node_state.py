"""A node's state is decided once (Sessions.node_state): placement takes instances to a
node exactly when `paas nodes` calls it ready, and `paas ps` calls its instances lost
exactly when it calls the node lost."""

from __future__ import annotations

import itertools

import pytest

from paas.proto import paas_pb2 as pb
from paas.scheduler.reconcile import _node_view
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.store import NodeRecord
from tests.helpers import wait_for


async def sessions_with(connected: bool, within_grace: bool) -> Sessions:
    sessions = Sessions(grace=0.1, on_change=lambda: None)
    agent = AgentSession(pb.Hello(name="node-1", address="127.0.0.2:1", capacity=4))
    sessions.attach(agent)
    if not connected:
        sessions.detach(agent)
        if not within_grace:
            await wait_for(lambda: not sessions.is_ready("node-1"), timeout=5, what="grace")
    return sessions


@pytest.mark.parametrize(
    ("connected", "within_grace", "draining"),
    list(itertools.product([True, False], [True, False], [True, False])),
)
async def test_placement_agrees_with_the_node_state(
    connected: bool, within_grace: bool, draining: bool
) -> None:
    sessions = await sessions_with(connected, within_grace)
    record = NodeRecord(name="node-1", address="127.0.0.2:1", capacity=4, draining=draining)
    state = sessions.node_state("node-1", draining)
    view = _node_view(record, sessions)
    assert view.eligible == (state == pb.NODE_READY)
    assert view.ready == (state != pb.NODE_LOST)
    if connected or within_grace:
        assert state == (pb.NODE_DRAINING if draining else pb.NODE_READY)
    else:
        assert state == pb.NODE_LOST


async def test_a_node_s_view_is_built_again_exactly_when_what_it_is_made_of_changes() -> None:
    """The reconcile loop keeps the views of thousands of nodes from pass to pass: one is
    rebuilt when its record, its readiness or the room its runs take changes."""
    import dataclasses

    from paas.scheduler.reconcile import ViewCache, _node_views
    from paas.scheduler.store import World

    sessions = await sessions_with(connected=True, within_grace=True)
    one = NodeRecord(name="node-1", address="127.0.0.2:1", capacity=4)
    two = NodeRecord(name="node-2", address="127.0.0.3:1", capacity=4)
    world = World(apps={}, formations={}, releases={}, instances=[], nodes={"node-1": one})
    world.nodes["node-2"] = two
    cache: ViewCache = {}
    first = _node_views(world, sessions, {}, cache)
    again = _node_views(world, sessions, {}, cache)
    assert [a is b for a, b in zip(first, again, strict=True)] == [True, True]
    # node-2 has no session: lost once the grace is over; node-1 drains; a run on node-1.
    await wait_for(lambda: not sessions.is_ready("node-2"), timeout=5, what="node-2's grace")
    world.nodes["node-1"] = dataclasses.replace(one, draining=True)
    changed = {view.name: view for view in _node_views(world, sessions, {}, cache)}
    assert changed["node-1"].draining and not changed["node-2"].ready
    busy = {view.name: view for view in _node_views(world, sessions, {"node-1": 3}, cache)}
    assert busy["node-1"].capacity == 1 and busy["node-2"] is changed["node-2"]
    del world.nodes["node-2"]
    assert [view.name for view in _node_views(world, sessions, {"node-1": 3}, cache)] == ["node-1"]
    assert set(cache) == {"node-1"}
