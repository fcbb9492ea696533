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
