"""Pushing desired sets: only the agents whose set changed are sent anything."""

from __future__ import annotations

from dataclasses import replace

from paas.common.names import InstanceName
from paas.proto import paas_pb2 as pb
from paas.scheduler.events import EventLog
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import AgentSession, Sessions
from paas.scheduler.store import (
    AppRecord,
    InstanceRecord,
    NodeRecord,
    ReleaseRecord,
    Store,
    World,
)

NODES = ("n1", "n2", "n3")


def world(instances: list[InstanceRecord]) -> World:
    release = ReleaseRecord("shop", 1, "/srv", {"web": "serve"}, {}, 1.0)
    return World(
        apps={"shop": AppRecord("shop", 1.0, 1, id="id-shop")},
        formations={"shop": {"web": len(instances)}},
        releases={"shop": release},
        instances=instances,
        nodes={n: NodeRecord(n, "127.0.0.2:1", 10) for n in NODES},
        history={("shop", 1): release},
    )


def web(index: int, node: str, incarnation: int = 5) -> InstanceRecord:
    return InstanceRecord("shop", InstanceName("web", index), node, 1, incarnation)


def desired_of(session: AgentSession) -> list[str]:
    return [a.name for a in session._desired or []]


async def test_only_agents_whose_desired_set_changed_are_pushed() -> None:
    sessions = Sessions(grace=5, on_change=lambda: None)
    agents = {n: AgentSession(pb.Hello(name=n, address="127.0.0.2:1", capacity=10)) for n in NODES}
    for agent in agents.values():
        sessions.attach(agent)
    # The store is never reached: _push works from the world it is given.
    reconciler = Reconciler(Store(["127.0.0.1:1"]), sessions, EventLog("a"))
    instances = [web(i, NODES[i % 3]) for i in range(1, 10)]

    reconciler._push(world(instances))
    assert reconciler.pushes == 3
    assert desired_of(agents["n2"]) == ["web.1", "web.4", "web.7"]

    reconciler._push(world(list(instances)))
    assert reconciler.pushes == 3, "an unchanged world sends nothing"

    # web.1 moves from n2 to n3: two sets change, n1's does not.
    moved = [web(1, "n3", incarnation=9), *instances[1:]]
    reconciler._push(world(moved))
    assert reconciler.pushes == 5
    assert desired_of(agents["n2"]) == ["web.4", "web.7"]
    assert desired_of(agents["n3"]) == ["web.1", "web.2", "web.5", "web.8"]

    # A restart (a new incarnation) on the same node is a change too.
    restarted = [replace(moved[0], incarnation=10), *moved[1:]]
    reconciler._push(world(restarted))
    assert reconciler.pushes == 6

    # An agent that reconnects gets its set again though nothing changed.
    again = AgentSession(pb.Hello(name="n1", address="127.0.0.2:1", capacity=10))
    sessions.attach(again)
    reconciler._push(world(restarted))
    assert reconciler.pushes == 7
    assert desired_of(again) == ["web.3", "web.6", "web.9"]
