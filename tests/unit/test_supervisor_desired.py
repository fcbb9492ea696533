"""Supervisor.apply without a process: the desired set, level-triggered, on the fake
seam (fakehost.py). Real processes: tests/integration/test_agent_supervisor.py."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from paas.agent.config import AgentConfig
from paas.agent.logbuffer import LogHub
from paas.agent.ports import PortPool
from paas.agent.states import State
from paas.agent.supervisor import Supervisor
from paas.common.ports import free_range
from paas.proto import paas_pb2 as pb
from tests.unit.fakehost import FakeClock, FakeProcesses

APP = "shop"


class Node:
    """A Supervisor on the fake seam, and the desired sets it was given."""

    def __init__(self, lock_dir: Path) -> None:
        self.clock = FakeClock()
        self.processes = FakeProcesses(self.clock)
        config = AgentConfig(join=[], name="node-1", usage_interval=0, stop_grace=5.0)
        self.ports = PortPool(*free_range(8), lock_dir)
        self.supervisor = Supervisor(
            config, LogHub("node-1", 100), self.ports, processes=self.processes, clock=self.clock
        )
        self.generation = 0

    def apply(self, *assignments: pb.Assignment, generation: int | None = None) -> bool:
        self.generation = generation if generation is not None else self.generation + 1
        desired = pb.DesiredSet(generation=self.generation, instances=list(assignments))
        return self.supervisor.apply(desired)

    def state(self, name: str) -> State | None:
        instance = self.supervisor.instance(APP, name)
        return instance.state if instance else None

    async def until(self, name: str, state: State | None) -> None:
        await self.clock.run_until(lambda: self.state(name) is state)

    async def close(self) -> None:
        await self.clock.run_until(lambda: True)
        closing = asyncio.ensure_future(self.supervisor.close())
        await self.clock.run_until(closing.done)
        await closing


def worker(name: str, incarnation: int = 1) -> pb.Assignment:
    return pb.Assignment(
        app=APP, name=name, type="worker", incarnation=incarnation, command=f"run {name}"
    )


@pytest.fixture
async def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "locks")


async def test_apply_starts_each_missing_instance_once(node: Node) -> None:
    assert node.apply(worker("worker.1"), worker("worker.2"))
    await node.until("worker.2", State.UP)
    await node.until("worker.1", State.UP)
    node.apply(worker("worker.1"), worker("worker.2"))  # the same set again: nothing new
    await node.clock.run_until(lambda: True)
    assert sorted(c.command for c in node.processes.children) == ["run worker.1", "run worker.2"]
    await node.close()


async def test_a_newer_incarnation_replaces_the_old_one_on_the_same_port(node: Node) -> None:
    node.apply(worker("worker.1", 1))
    await node.until("worker.1", State.UP)
    old = node.processes.children[-1]
    node.apply(worker("worker.1", 2))
    await node.clock.run_until(
        lambda: (
            (i := node.supervisor.instance(APP, "worker.1")) is not None
            and i.incarnation == 2
            and i.state is State.UP
        )
    )
    new = node.processes.children[-1]
    assert node.processes.signals(old.pid) == [(signal.SIGTERM, node.processes.sent[0].at)]
    assert old.returncode == -signal.SIGTERM and new.returncode is None
    assert new.env["PORT"] == old.env["PORT"]
    await node.close()


async def test_an_instance_left_out_is_stopped_and_gives_its_port_back(node: Node) -> None:
    node.apply(worker("worker.1"))
    await node.until("worker.1", State.UP)
    assert len(node.ports) == 1
    node.apply()
    await node.until("worker.1", None)
    assert node.processes.children[0].returncode == -signal.SIGTERM
    assert len(node.ports) == 0
    await node.close()


async def test_a_stale_incarnation_never_starts(node: Node) -> None:
    node.apply(worker("worker.1", 3))
    await node.until("worker.1", State.UP)
    node.apply(worker("worker.1", 2))  # older than one already seen
    await node.clock.run_until(lambda: True)
    instance = node.supervisor.instance(APP, "worker.1")
    assert instance is not None and instance.incarnation == 3
    assert len(node.processes.children) == 1
    await node.close()


async def test_a_new_cluster_starts_its_incarnations_over(node: Node) -> None:
    node.apply(worker("worker.1", 300))
    await node.until("worker.1", State.UP)
    node.apply(generation=2)
    await node.until("worker.1", None)
    node.supervisor.new_cluster()  # another etcd: its revisions count from the start
    node.apply(worker("worker.1", 4))
    await node.until("worker.1", State.UP)
    instance = node.supervisor.instance(APP, "worker.1")
    assert instance is not None and instance.incarnation == 4
    await node.close()


async def test_the_same_incarnation_of_another_app_id_is_another_order(node: Node) -> None:
    # Two clusters whose etcds reached the same revision: the app id tells them apart.
    old = worker("worker.1", 7)
    old.app_id = "old-cluster-app"
    node.apply(old)
    await node.until("worker.1", State.UP)
    node.supervisor.new_cluster()
    new = worker("worker.1", 7)
    new.app_id = "new-cluster-app"
    node.apply(new)
    await node.clock.run_until(
        lambda: (
            (i := node.supervisor.instance(APP, "worker.1")) is not None
            and i.app_id == "new-cluster-app"
            and i.state is State.UP
        )
    )
    assert [c.returncode for c in node.processes.children] == [-signal.SIGTERM, None]
    await node.close()


async def test_an_older_generation_is_ignored_until_a_new_session(node: Node) -> None:
    node.apply(worker("worker.1"), generation=5)
    await node.until("worker.1", State.UP)
    assert not node.apply(generation=4)
    assert node.state("worker.1") is State.UP
    node.supervisor.new_session()
    assert node.apply(generation=1)
    await node.until("worker.1", None)
    await node.close()


async def test_close_stops_everything_and_takes_no_more(node: Node) -> None:
    node.apply(worker("worker.1"), worker("worker.2"))
    await node.until("worker.2", State.UP)
    await node.close()
    assert all(child.returncode == -signal.SIGTERM for child in node.processes.children)
    assert not node.apply(worker("worker.3"))
    assert node.supervisor.statuses() == []


def web(name: str, release: int, incarnation: int, health: str = "") -> pb.Assignment:
    return pb.Assignment(
        app=APP,
        name=name,
        type="web",
        incarnation=incarnation,
        release=release,
        command=f"serve v{release}",
        settings=pb.ProcessSettings(health=health),
    )


def copy_of(node: Node, name: str, release: int) -> State | None:
    instance = node.supervisor.instance(APP, name, release)
    return instance.state if instance else None


async def test_two_releases_of_one_name_run_side_by_side_each_on_its_own_port(
    node: Node,
) -> None:
    node.apply(web("web.1", 4, 10))
    await node.clock.run_until(lambda: bool(node.processes.children))
    old = node.processes.children[0]
    node.processes.listening.add(int(old.env["PORT"]))
    await node.clock.run_until(lambda: copy_of(node, "web.1", 4) is State.UP)

    # The rollout's new copy of web.1 (release 5) beside the old one.
    node.apply(web("web.1", 4, 10), web("web.1", 5, 20))
    await node.clock.run_until(lambda: len(node.processes.children) == 2)
    new = node.processes.children[1]
    assert new.command == "serve v5" and new.env["PAAS_INSTANCE"] == "web.1"
    assert new.env["PORT"] != old.env["PORT"]
    node.processes.listening.add(int(new.env["PORT"]))
    await node.clock.run_until(lambda: copy_of(node, "web.1", 5) is State.UP)
    assert old.returncode is None, "the old copy keeps serving while the new one boots"
    statuses = {(s.name, s.release): s.state for s in node.supervisor.statuses()}
    assert statuses == {("web.1", 4): pb.UP, ("web.1", 5): pb.UP}

    # Promoted: the set holds only the new copy (same incarnation): the old one stops,
    # the new one is not restarted.
    node.apply(web("web.1", 5, 20))
    await node.clock.run_until(lambda: copy_of(node, "web.1", 4) is None)
    assert old.returncode == -signal.SIGTERM
    assert new.returncode is None and len(node.processes.children) == 2
    assert copy_of(node, "web.1", 5) is State.UP
    await node.close()


async def test_the_copies_of_one_name_share_its_log_buffer_until_the_last_goes(
    node: Node,
) -> None:
    node.apply(web("web.1", 4, 10), web("web.1", 5, 20))
    await node.clock.run_until(lambda: len(node.processes.children) == 2)
    old, new = node.processes.children
    assert node.supervisor.logs.buffer(APP, "web.1") is (
        node.supervisor.instance(APP, "web.1", 4).buffer  # type: ignore[union-attr]
    )
    old.write("from the old copy\n")
    new.write("from the new copy\n")
    node.apply(web("web.1", 5, 20))
    await node.clock.run_until(lambda: copy_of(node, "web.1", 4) is None)
    buffer = node.supervisor.instance(APP, "web.1", 5).buffer  # type: ignore[union-attr]
    new.write("still live\n")
    await node.clock.run_until(lambda: True)
    texts = [line.text for line in buffer.tail(100)]
    assert "from the old copy" in texts and "still live" in texts
    await node.close()


async def test_a_health_path_must_answer_before_the_copy_is_up(node: Node) -> None:
    node.apply(web("web.1", 1, 1, health="/healthz"))
    await node.clock.run_until(lambda: bool(node.processes.children))
    child = node.processes.children[0]
    port = int(child.env["PORT"])
    node.processes.listening.add(port)  # accepting is not enough with a health path
    await node.clock.advance(5.0)
    assert copy_of(node, "web.1", 1) is State.STARTING
    node.processes.healthy.add((port, "/healthz"))
    await node.clock.run_until(lambda: copy_of(node, "web.1", 1) is State.UP)
    await node.close()


async def test_a_health_path_that_never_answers_is_a_boot_timeout(node: Node) -> None:
    assignment = web("web.1", 1, 1, health="/healthz")
    assignment.settings.boot_timeout = 10.0
    node.apply(assignment)
    await node.clock.run_until(lambda: bool(node.processes.children))
    node.processes.listening.add(int(node.processes.children[0].env["PORT"]))
    await node.clock.run_until(
        lambda: (i := node.supervisor.instance(APP, "web.1")) is not None and i.restarts > 0
    )
    instance = node.supervisor.instance(APP, "web.1")
    assert instance is not None
    assert "GET /healthz" in instance.ended.failure  # type: ignore[union-attr]
    await node.close()
