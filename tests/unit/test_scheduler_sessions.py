"""Node liveness as the leader sees it: ready while connected or within the grace period."""

from __future__ import annotations

import asyncio

from paas.proto import paas_pb2 as pb
from paas.scheduler.sessions import HEARTBEAT_INTERVAL, AgentSession, Sessions
from paas.scheduler.settings import settings_from, settings_problem
from tests.helpers import wait_for


def session(name: str) -> AgentSession:
    return AgentSession(pb.Hello(name=name, address="127.0.0.2:1", capacity=10))


async def test_a_connected_node_is_ready_and_a_gone_one_after_grace_is_not() -> None:
    kicks: list[int] = []
    sessions = Sessions(grace=0.2, on_change=lambda: kicks.append(1))
    sessions.reset()
    agent = session("node-1")
    sessions.attach(agent)
    assert sessions.is_ready("node-1")
    sessions.detach(agent)
    assert sessions.is_ready("node-1"), "within the grace period a node is still ready"
    before = len(kicks)
    await wait_for(lambda: len(kicks) > before, timeout=5, what="the grace timer to kick")
    assert not sessions.is_ready("node-1"), "the kick comes once the grace has passed"


async def test_after_a_leader_change_every_node_gets_a_fresh_grace() -> None:
    sessions = Sessions(grace=0.2, on_change=lambda: None)
    await wait_for(lambda: not sessions.is_ready("never-seen"), timeout=5, what="grace to pass")
    sessions.reset()
    assert sessions.is_ready("never-seen"), "a new term starts a fresh grace for everyone"


async def test_a_newer_session_replaces_the_old_one_and_the_old_detach_is_ignored() -> None:
    sessions = Sessions(grace=0.2, on_change=lambda: None)
    old, new = session("node-1"), session("node-1")
    sessions.attach(old)
    sessions.attach(new)
    sessions.detach(old)
    assert sessions.get("node-1") is new


async def test_wait_for_report_wakes_on_the_wanted_state() -> None:
    sessions = Sessions(grace=5, on_change=lambda: None)
    agent = session("node-1")
    sessions.attach(agent)
    waiter = asyncio.create_task(
        sessions.wait_for_report("node-1", "shop", "web.1", 7, {pb.UP}, within=5)
    )
    await asyncio.sleep(0)
    agent.report(pb.InstanceStatus(app="shop", name="web.1", incarnation=7, state=pb.STARTING))
    sessions.notify_report()
    await asyncio.sleep(0)
    assert not waiter.done()
    agent.report(pb.InstanceStatus(app="shop", name="web.1", incarnation=7, state=pb.UP))
    sessions.notify_report()
    status = await asyncio.wait_for(waiter, 2)
    assert status is not None and status.state == pb.UP


async def test_wait_for_report_gives_up_after_its_time() -> None:
    sessions = Sessions(grace=5, on_change=lambda: None)
    assert await sessions.wait_for_report("node-1", "a", "web.1", 1, {pb.UP}, within=0.05) is None


def test_settings_round_trip_and_bounds() -> None:
    settings = settings_from({"stopGrace": 60.0, "check": "CHECK_NONE"})
    assert settings.stop_grace == 60.0 and settings.check == pb.ProcessSettings.CHECK_NONE
    assert settings_problem(settings, 10) is None
    assert "stop_grace" in (settings_problem(pb.ProcessSettings(stop_grace=-1), 10) or "")
    assert "boot_timeout" in (settings_problem(pb.ProcessSettings(boot_timeout=1e9), 10) or "")
    fence = pb.ProcessSettings(stop_after_disconnected=10)
    assert "below the node grace" in (settings_problem(fence, 10) or "")


async def test_an_idle_session_sends_a_heartbeat_every_interval_and_a_busy_one_none() -> None:
    # A paused replica sends nothing, and the agent leaves it after its silence timeout;
    # a live one that has nothing to say must still say so, every HEARTBEAT_INTERVAL.
    agent = session("node-1")
    loop = asyncio.get_running_loop()
    outgoing = agent.outgoing()
    started = loop.time()
    first = await asyncio.wait_for(anext(outgoing), 10)
    assert first.WhichOneof("kind") == "heartbeat"
    assert loop.time() - started >= HEARTBEAT_INTERVAL * 0.9, "a beat before it was due"
    # Something to send goes at once, and is all that goes: no beat beside it.
    agent.push([pb.Assignment(app="shop", name="web.1", incarnation=1)], ["a1"])
    pushed_at = loop.time()
    second = await asyncio.wait_for(anext(outgoing), 10)
    assert second.WhichOneof("kind") == "desired"
    assert loop.time() - pushed_at < HEARTBEAT_INTERVAL * 0.9
    third = await asyncio.wait_for(anext(outgoing), 10)
    assert third.WhichOneof("kind") == "heartbeat"
    assert loop.time() - pushed_at >= HEARTBEAT_INTERVAL * 0.9, "the beat was not put off"
    agent.close()
    assert [m async for m in outgoing] == []
