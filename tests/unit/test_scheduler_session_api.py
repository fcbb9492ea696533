"""The agents' Session RPC on a replica whose lead goes while an agent is attaching: the
agent is refused (and so redirected) instead of held by a follower while its node is
declared lost. Real etcd and agents: tests/integration/test_failover.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest

from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotLeading
from paas.scheduler.session_api import SessionService
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import NodeRecord


class Lead:
    """Who leads, as the election says it; flipped by the test."""

    def __init__(self) -> None:
        self.is_leader = True
        self.leader_address: str | None = None


class SlowStore:
    """The store calls Session makes, the node read held until `go` is set."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.go = asyncio.Event()
        self.written: list[NodeRecord] = []

    async def cluster_id(self) -> str:
        return "c0ffee"

    async def node(self, name: str) -> NodeRecord | None:
        self.reading.set()
        await self.go.wait()
        return None

    async def put_node(self, record: NodeRecord) -> None:
        self.written.append(record)


async def hello() -> AsyncIterator[pb.AgentMessage]:
    yield pb.AgentMessage(hello=pb.Hello(name="node-1", address="127.0.0.2:7071", capacity=4))
    await asyncio.Event().wait()  # then silent: the test ends first


async def test_a_replica_that_loses_the_lead_while_an_agent_attaches_refuses_it() -> None:
    lead, store = Lead(), SlowStore()
    sessions = Sessions(grace=10.0, on_change=lambda: None)
    service = SessionService(store, sessions, reconciler=None, leadership=lead)  # type: ignore[arg-type]
    stream = service.Session(hello(), context=None)  # type: ignore[arg-type]
    first: asyncio.Task[Any] = asyncio.ensure_future(anext(stream))
    await asyncio.wait_for(store.reading.wait(), 5)

    # The lead goes (the sessions are closed for it) while the agent registers.
    lead.is_leader, lead.leader_address = False, "127.0.0.1:7171"
    sessions.close_all()
    store.go.set()

    with pytest.raises(NotLeading) as refused:
        await asyncio.wait_for(first, 5)
    assert refused.value.leader == "127.0.0.1:7171", "the agent is told where the leader is"
    assert sessions.connected() == [], "a follower holds no session"


async def test_the_leader_attaches_the_agent_and_welcomes_it_first() -> None:
    lead, store = Lead(), SlowStore()
    store.go.set()
    sessions = Sessions(grace=10.0, on_change=lambda: None)
    service = SessionService(store, sessions, reconciler=None, leadership=lead)  # type: ignore[arg-type]

    class Peer:
        def peer(self) -> str:
            return "ipv4:127.0.0.2:5000"

    stream = service.Session(hello(), context=Peer())  # type: ignore[arg-type]
    message = await asyncio.wait_for(anext(stream), 5)
    assert message.WhichOneof("kind") == "welcome" and message.welcome.cluster_id == "c0ffee"
    assert [s.name for s in sessions.connected()] == ["node-1"]
    await cast(AsyncGenerator[pb.SchedulerMessage, None], stream).aclose()  # as gRPC does
    assert sessions.connected() == []
