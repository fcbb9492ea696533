"""The agent against a fake scheduler over real gRPC: hello, desired sets, statuses,
heartbeats, the leader redirect, reconnecting, the log API and a clean stop on SIGTERM.
Every test ends with no process left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import pytest

from paas.agent.config import AgentConfig
from paas.agent.errors import AgentError
from paas.agent.logbuffer import LogHub
from paas.agent.membership import Membership
from paas.agent.ports import PortPool
from paas.agent.processes import group_alive, install_child_watcher
from paas.agent.reaper import Reaper
from paas.agent.server import run_agent
from paas.agent.session import Session
from paas.agent.supervisor import Supervisor
from paas.common import ports
from paas.common.grpcutil import CHANNEL_OPTIONS, LEADER_METADATA_KEY
from paas.common.ports import free_port
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import child_pids, children_since

pytestmark = pytest.mark.integration

T = TypeVar("T")
APP = "shop"
# Says something every 0.1 s, so a follower of its logs always has something new.
TICKER = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
SLEEPERS = "echo sleepers up; sleep 1000 & sleep 1001 & wait"
CLUSTER = "cluster-a"
APP_ID = "app-shop-1"


async def eventually(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> T:
    """Poll `condition` every 50 ms until it is truthy; fail naming `what` after `timeout`."""

    async def check() -> T | None:
        return condition()

    return await eventually_async(check, what, timeout)


async def eventually_async(
    condition: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float = 20.0,  # noqa: ASYNC109
) -> T:
    """`eventually` for an async condition."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def live(pids: list[int]) -> list[int]:
    result = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                result.append(pid)
        except psutil.NoSuchProcess:
            pass
    return result


def free_range(width: int = 20) -> tuple[int, int]:
    return ports.free_range(width)


def worker(
    name: str, command: str, incarnation: int = 1, app_id: str = APP_ID, app: str = APP
) -> pb.Assignment:
    return pb.Assignment(
        app=app,
        name=name,
        type=name.rpartition(".")[0],
        incarnation=incarnation,
        release=1,
        command=command,
        dir="/tmp",
        app_id=app_id,
    )


class FakeScheduler(pb_grpc.SchedulerServicer):
    """Scheduler.Session only: records what agents send, sends what the test pushes.

    Each session opens with a Welcome naming `cluster_id` (none if it is "", as a
    scheduler from before cluster ids). With `leader` set it is a follower and
    refuses every session, naming the leader. It heartbeats every `heartbeat` seconds
    when it has nothing else to send, as the real one does; None plays a scheduler
    that has stopped answering (paused) but keeps the stream open.
    """

    def __init__(
        self, leader: str = "", cluster_id: str = CLUSTER, heartbeat: float | None = 1.0
    ) -> None:
        self.leader = leader
        self.cluster_id = cluster_id
        self.heartbeat = heartbeat
        self.hellos: list[pb.Hello] = []
        self.messages: list[pb.AgentMessage] = []
        self.refused = 0
        self._outgoing: asyncio.Queue[pb.SchedulerMessage] = asyncio.Queue()

    def push(
        self, *assignments: pb.Assignment, generation: int, live_apps: list[str] | None = None
    ) -> None:
        """A desired set; `live_apps` by default APP_ID and the app id of each assignment."""
        live = live_apps
        if live is None:
            live = sorted({APP_ID, *(a.app_id for a in assignments)})
        self._outgoing.put_nowait(
            pb.SchedulerMessage(
                desired=pb.DesiredSet(
                    generation=generation, instances=list(assignments), live_apps=live
                )
            )
        )

    def welcome(self, cluster_id: str) -> None:
        """A Welcome in the open session (a real scheduler sends one first, only)."""
        self._outgoing.put_nowait(pb.SchedulerMessage(welcome=pb.Welcome(cluster_id=cluster_id)))

    def statuses(self, name: str) -> list[pb.InstanceStatus]:
        return [m.status for m in self.messages if m.HasField("status") and m.status.name == name]

    def reported(self, name: str, state: int) -> pb.InstanceStatus | None:
        found = [s for s in self.statuses(name) if s.state == state]
        return found[-1] if found else None

    def hello(self) -> pb.Hello | None:
        return self.hellos[-1] if self.hellos else None

    def heartbeats(self) -> int:
        return sum(m.HasField("heartbeat") for m in self.messages)

    async def Session(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Any
    ) -> AsyncIterator[pb.SchedulerMessage]:
        if self.leader:
            self.refused += 1
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"not the leader; the leader is {self.leader}",
                trailing_metadata=((LEADER_METADATA_KEY, self.leader),),
            )
        first = await anext(request_iterator)
        assert first.HasField("hello"), first
        self.hellos.append(first.hello)
        if self.cluster_id:
            yield pb.SchedulerMessage(welcome=pb.Welcome(cluster_id=self.cluster_id))

        async def read() -> None:
            async for message in request_iterator:
                self.messages.append(message)

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                getter = asyncio.create_task(self._outgoing.get())
                await asyncio.wait(
                    {getter, reader}, timeout=self.heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                getter.cancel()
                try:
                    item: pb.SchedulerMessage | None = await getter
                except asyncio.CancelledError:
                    item = None
                if item is not None:
                    yield item
                elif reader.done():
                    break
                elif self.heartbeat is not None:
                    # As the real scheduler does: an agent ends a silent session.
                    yield pb.SchedulerMessage(heartbeat=pb.Heartbeat(time=time.time()))
        finally:
            reader.cancel()


def fake_scheduler(
    leader: str = "", cluster_id: str = CLUSTER, heartbeat: float | None = 1.0
) -> FakeScheduler:
    # Only Session is served.
    return FakeScheduler(leader, cluster_id, heartbeat)  # type: ignore[abstract]


class Servers:
    """Fake schedulers on 127.0.0.1, each stoppable and restartable on the same port."""

    def __init__(self) -> None:
        self.running: dict[str, grpc.aio.Server] = {}

    async def start(self, servicer: FakeScheduler, address: str = "127.0.0.1:0") -> str:
        server = grpc.aio.server()
        pb_grpc.add_SchedulerServicer_to_server(servicer, server)
        port = server.add_insecure_port(address)
        await server.start()
        bound = f"127.0.0.1:{port}"
        self.running[bound] = server
        return bound

    async def stop(self, address: str) -> None:
        await self.running.pop(address).stop(0)

    async def stop_all(self) -> None:
        for address in list(self.running):
            await self.stop(address)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    found = Servers()
    try:
        yield found
    finally:
        await found.stop_all()


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[..., AgentConfig]:
    def make(*join: str, **overrides: Any) -> AgentConfig:
        settings: dict[str, Any] = {
            "join": list(join),
            "name": "node-1",
            "listen": "127.0.0.1:0",
            "state_dir": tmp_path / "state",
            "ports": free_range(),
            "stop_grace": 2.0,
            "heartbeat_interval": 0.2,
            "restart_base": 0.1,
            "labels": {"zone": "a"},
            "own_all_children": False,  # pytest has children of its own
            "insecure": True,  # the fake scheduler speaks plaintext
        }
        settings.update(overrides)
        return AgentConfig(**settings)

    return make


@pytest.fixture
async def no_leftovers() -> AsyncIterator[set[int]]:
    """A set for the test to fill with the pids it saw; at the end none of their groups runs."""
    pgids: set[int] = set()
    before = child_pids()
    try:
        yield pgids
    finally:
        try:
            await eventually(
                lambda: not any(group_alive(pgid) for pgid in pgids), "every group to be gone"
            )
            await eventually(
                lambda: not children_since(before), "no child process of the test left"
            )
        finally:
            for pgid in pgids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            if sys.version_info < (3, 12):  # asyncio's default watcher again for later tests
                asyncio.get_event_loop_policy().set_child_watcher(None)  # type: ignore[arg-type]


async def read_logs(address: str, **request: Any) -> list[pb.LogLine]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.AgentStub(channel)
        call = stub.ReadLogs(pb.LogsRequest(app=APP, **request))
        return [line async for batch in call for line in batch.lines]


async def joined_logs(address: str, **request: Any) -> list[pb.LogLine]:
    """`read_logs` for a polled condition: until the agent has taken its Welcome (and
    deleted what it held of another cluster), it answers UNAVAILABLE, which is "not
    yet" (no lines), not a failure."""
    try:
        return await read_logs(address, **request)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return []


async def test_the_agent_says_hello_runs_its_desired_set_and_serves_its_logs(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    agent = asyncio.create_task(run_agent(config_for(address)))
    try:
        hello = await eventually(scheduler.hello, "hello")
        assert hello.name == "node-1"
        assert hello.capacity == 256 and dict(hello.labels) == {"zone": "a"}
        assert hello.address.startswith("127.0.0.1:") and not hello.address.endswith(":0")
        assert list(hello.running) == []

        scheduler.push(
            worker("worker.1", TICKER), worker("clock.1", "echo clock $DYNO; sleep 1000"),
            generation=1,
        )  # fmt: skip
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        clock = await eventually(lambda: scheduler.reported("clock.1", pb.UP), "clock.1 up")
        no_leftovers.update({up.pid, clock.pid})
        assert up.port and up.incarnation == 1
        await eventually(lambda: scheduler.heartbeats() >= 2, "heartbeats")

        async def five_lines() -> list[pb.LogLine] | None:
            found = await joined_logs(hello.address, lines=5, process="worker")
            return found if len(found) == 5 else None

        lines = await eventually_async(five_lines, "5 lines of worker")
        assert {line.instance for line in lines} == {"worker.1"}
        assert all(line.node == "node-1" and line.app == APP for line in lines)
        stamps = [line.timestamp for line in lines]
        assert stamps == sorted(stamps)

        async def clock_said_hello() -> bool:
            found = await joined_logs(hello.address, process="clock.1")
            return any(line.text == "clock clock.1" for line in found)

        await eventually_async(clock_said_hello, "clock.1's line in ReadLogs")
        everything = await read_logs(hello.address, lines=1000)
        assert {line.instance for line in everything} == {"worker.1", "clock.1"}
        assert all(line.instance == "clock.1" for line in await read_logs(
            hello.address, process="clock"
        ))  # fmt: skip

        # Following: the backlog, then live lines with increasing seq.
        async with grpc.aio.insecure_channel(hello.address, options=CHANNEL_OPTIONS) as channel:
            stream = pb_grpc.AgentStub(channel).ReadLogs(
                pb.LogsRequest(app=APP, process="worker.1", lines=1, follow=True)
            )
            seen: list[pb.LogLine] = []
            async for batch in stream:
                seen.extend(batch.lines)
                if len(seen) >= 4:
                    break
            stream.cancel()
        seqs = [line.seq for line in seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) >= 4

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_logs(hello.address, lines=-1)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
    assert not live([up.pid, clock.pid])
    await eventually(lambda: scheduler.reported("worker.1", pb.STOPPED), "worker.1 stopped")


async def test_a_follower_sends_the_agent_to_the_leader(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    leader = fake_scheduler()
    leader_address = await servers.start(leader)
    follower = fake_scheduler(leader=leader_address)
    follower_address = await servers.start(follower)

    install_child_watcher()
    config = config_for(follower_address)
    supervisor = Supervisor(config, LogHub(config.name, 100), PortPool(*config.ports))
    session = Session(config, supervisor, "127.0.0.1:1")
    task = asyncio.create_task(session.run())
    try:
        await eventually(lambda: leader.hellos, "hello at the leader")
        await eventually(lambda: session.scheduler == leader_address, "the session to open")
        assert follower.refused >= 1 and not follower.hellos
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()


async def test_a_scheduler_that_stops_answering_is_left_for_the_next_within_seconds(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    # A paused leader: the stream stays open, nothing comes (not even a heartbeat).
    paused = fake_scheduler(heartbeat=None)
    paused_address = await servers.start(paused)
    other = fake_scheduler()
    other_address = await servers.start(other)
    install_child_watcher()
    config = config_for(paused_address, other_address, scheduler_silence=2.0)
    supervisor = Supervisor(config, LogHub(config.name, 100), PortPool(*config.ports))
    session = Session(config, supervisor, "127.0.0.1:1")
    task = asyncio.create_task(session.run())
    try:
        await eventually(lambda: paused.hellos, "hello at the first scheduler")
        paused.push(worker("worker.1", SLEEPERS), generation=1)
        up = await eventually(lambda: paused.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        loop = asyncio.get_running_loop()
        silent_since = loop.time()
        hello = await eventually(other.hello, "hello at the next scheduler")
        # Its silence (2 s here, 5 by default) and a redial; gRPC alone took a minute.
        assert loop.time() - silent_since < 2.0 + 5.0
        assert [(s.name, s.pid) for s in hello.running] == [("worker.1", up.pid)]
        assert live([up.pid]) == [up.pid], "the workload never stopped"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()


async def test_the_workload_keeps_running_while_the_scheduler_is_away(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    first = fake_scheduler()
    address = await servers.start(first)
    install_child_watcher()
    config = config_for("127.0.0.1:1", address)  # the first address answers nothing
    reaper = Reaper(config.state_dir / config.name)
    await reaper.start()
    supervisor = Supervisor(config, LogHub(config.name, 100), PortPool(*config.ports), reaper)
    session = Session(config, supervisor, "127.0.0.1:1")
    task = asyncio.create_task(session.run())
    try:
        await eventually(lambda: first.hellos, "hello")
        first.push(worker("worker.1", SLEEPERS), generation=7)
        up = await eventually(lambda: first.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)

        await servers.stop(address)
        await eventually(lambda: not session.connected, "the session to notice")
        assert live([up.pid]) == [up.pid]

        second = fake_scheduler()  # a new scheduler where the old one was
        await servers.start(second, address)
        hello = await eventually(second.hello, "hello again")
        assert [(s.name, s.state, s.pid) for s in hello.running] == [("worker.1", pb.UP, up.pid)]

        # Its generations start from 1 again; the same assignment keeps the same process.
        second.push(worker("worker.1", SLEEPERS), worker("worker.2", SLEEPERS), generation=1)
        other = await eventually(lambda: second.reported("worker.2", pb.UP), "worker.2 up")
        no_leftovers.add(other.pid)
        instance = supervisor.instance(APP, "worker.1")
        assert instance is not None and instance.pid == up.pid

        second.push(worker("worker.2", SLEEPERS), generation=2)
        await eventually(lambda: second.reported("worker.1", pb.STOPPED), "worker.1 stopped")
        assert not live([up.pid])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()
        await reaper.close()


async def test_paas_agent_stops_its_instances_on_sigterm_and_leaves_nothing(
    servers: Servers, tmp_path: Path, no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    low, high = free_range()
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "agent",
        "--join", address, "--name", "node-9", "--listen", f"127.0.0.1:{free_port()}",
        "--ports", f"{low}-{high}", "--state-dir", str(tmp_path / "state"), "--insecure",
        "--stop-grace", "5",
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(lambda: scheduler.hellos, "hello", timeout=30)
        scheduler.push(worker("worker.1", SLEEPERS), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)

        def family() -> list[int] | None:
            """The instance and its children, once it has started them (it is up at
            once: on a loaded machine its children may come a moment later)."""
            children = psutil.Process(up.pid).children(recursive=True)
            found = [up.pid, *(p.pid for p in children)]
            return found if len(found) >= 3 else None

        pids = await eventually(family, "the instance's children", timeout=30)

        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0
        assert not live(pids)
        stopped = scheduler.reported("worker.1", pb.STOPPED)
        assert stopped is not None and stopped.last_exit == "signal 15 (SIGTERM)"
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


async def test_read_logs_serves_the_previous_run_lines_since_a_time_and_after_a_cursor(
    servers: Servers,
    config_for: Callable[..., AgentConfig],
    no_leftovers: set[int],
    tmp_path: Path,
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    agent = asyncio.create_task(run_agent(config_for(address, restart_base=60.0)))
    marker = tmp_path / "ran-once"
    # The first run says so and crashes; the second one keeps running.
    command = (
        f"if [ -e {marker} ]; then echo second run; {TICKER}; "
        f"else touch {marker}; echo first run; exit 1; fi"
    )
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(worker("worker.1", command), generation=1)

        async def second_run_lines() -> list[pb.LogLine] | None:
            found = await joined_logs(hello.address, process="worker.1", lines=1000)
            return found if any(line.text == "tick 2" for line in found) else None

        everything = await eventually_async(second_run_lines, "the second run's ticks")
        no_leftovers.update(s.pid for s in scheduler.statuses("worker.1") if s.pid)
        assert {line.node for line in everything} == {"node-1"}

        previous = await read_logs(hello.address, process="worker.1", previous=True)
        texts = [line.text for line in previous]
        assert "first run" in texts and "Process exited with status 1" in texts
        assert "second run" not in texts
        assert {line.run for line in previous} == {1}

        second = next(line for line in everything if line.text == "second run")
        since = await read_logs(hello.address, process="worker.1", since=second.timestamp)
        assert since[0].text == "second run" and "first run" not in [x.text for x in since]

        cursor = pb.LogCursor(node="node-1", instance="worker.1", seq=second.seq)
        after = await read_logs(hello.address, process="worker.1", after=[cursor])
        assert after[0].seq == second.seq + 1

        # A follower resuming at its cursor gets only what came after it.
        last = everything[-1]
        async with grpc.aio.insecure_channel(hello.address, options=CHANNEL_OPTIONS) as channel:
            stream = pb_grpc.AgentStub(channel).ReadLogs(
                pb.LogsRequest(
                    app=APP,
                    process="worker.1",
                    follow=True,
                    after=[pb.LogCursor(node="node-1", instance="worker.1", seq=last.seq)],
                )
            )
            first = (await anext(aiter(stream))).lines[0]
            stream.cancel()
        assert first.seq > last.seq

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_logs(hello.address, process="worker", previous=True)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent


async def test_a_second_sigterm_ends_the_agent_at_once_and_the_reaper_ends_the_rest(
    servers: Servers, tmp_path: Path, no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    low, high = free_range()
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "agent",
        "--join", address, "--name", "node-9", "--listen", f"127.0.0.1:{free_port()}",
        "--ports", f"{low}-{high}", "--state-dir", str(tmp_path / "state"), "--insecure",
        "--stop-grace", "600",
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(scheduler.hello, "hello", timeout=30)
        scheduler.push(worker("worker.1", "trap '' TERM; sleep 1000 & wait"), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        pids = [up.pid, *(p.pid for p in psutil.Process(up.pid).children(recursive=True))]

        agent.send_signal(signal.SIGTERM)  # a graceful stop that would take 600 s
        await eventually(lambda: scheduler.reported("worker.1", pb.STOPPING), "stopping")
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == -signal.SIGTERM
        await eventually(lambda: not live(pids), "the reaper to end the rest")
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


async def test_an_agent_that_cannot_listen_says_so(
    config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_for("127.0.0.1:1", listen=f"127.0.0.1:{port}")
        with pytest.raises(AgentError, match=f"cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(run_agent(config), 30)


# ---------------------------------------------------------------- hostile commands

# Commands a careless or hostile Procfile may hold, one instance each.
HOSTILE = {
    "missing.1": "no-such-command-paas-test --serve",  # exit 127, every time
    "quick.1": "exit 1",  # exits at once, every time
    "flood.1": "timeout 5 yes; exec sleep 1000",  # a few seconds of output as fast as it goes
    "stubborn.1": "trap '' TERM; sleep 1000 & wait",  # ignores SIGTERM, its child too
    "forker.1": "for i in $(seq 100); do sleep 1000 & done; wait",  # a hundred children
}
STUBBORN_GRACE = 1.0
# What the agent's resident memory may grow by while it runs them: its buffers are
# bounded (10 000 lines per instance, a 16 MiB spool backlog); a few MiB here.
RSS_GROWTH_LIMIT = 64 << 20


def hostile(name: str, command: str) -> pb.Assignment:
    assignment = worker(name, command)
    if name.startswith("stubborn"):
        assignment.settings.stop_grace = STUBBORN_GRACE
    return assignment


def processes_of(pid: int, at_least: int = 1) -> list[int] | None:
    """`pid` and its descendants, once they are `at_least` processes."""
    try:
        found = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return None
    return found if len(found) >= at_least else None


async def test_hostile_commands_leave_the_agent_responsive_and_its_memory_bounded(
    servers: Servers, tmp_path: Path, no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    low, high = free_range()
    listen = f"127.0.0.1:{free_port()}"
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", "agent",
        "--join", address, "--name", "node-9", "--listen", listen,
        "--ports", f"{low}-{high}", "--state-dir", str(tmp_path / "state"), "--insecure",
        "--stop-grace", "10",
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually(scheduler.hello, "hello", timeout=30)
        memory = psutil.Process(agent.pid)
        before = memory.memory_info().rss
        scheduler.push(*(hostile(name, cmd) for name, cmd in HOSTILE.items()), generation=1)

        flood = await eventually(lambda: scheduler.reported("flood.1", pb.UP), "flood.1 up")
        stubborn = await eventually(lambda: scheduler.reported("stubborn.1", pb.UP), "stubborn")
        forker = await eventually(lambda: scheduler.reported("forker.1", pb.UP), "forker.1 up")
        no_leftovers.update({flood.pid, stubborn.pid, forker.pid})
        forked = await eventually(
            lambda: processes_of(forker.pid, 101),
            "the shell and its hundred sleeps",
        )
        stubborn_processes = await eventually(
            lambda: processes_of(stubborn.pid, 2),
            "the stubborn shell and its sleep",
        )

        # While `yes` floods, every ReadLogs answers (well under a second when idle; the
        # bound leaves room for a CI machine at a load of 8, where it takes about 1 s;
        # a stalled event loop would hit the 10 s timeout) and memory stays bounded.
        def flooding() -> bool:
            return (
                any("yes" in p.name() for p in psutil.Process(flood.pid).children(recursive=True))
                or psutil.Process(flood.pid).name() == "yes"
            )

        latencies: list[float] = []
        peak = before
        flood_seqs: list[int] = []
        loop = asyncio.get_running_loop()
        while flooding() or len(latencies) < 5:
            started = loop.time()
            lines = await asyncio.wait_for(
                read_logs(listen, process="flood.1", lines=1), timeout=10
            )
            latencies.append(loop.time() - started)
            if lines:
                flood_seqs.append(lines[-1].seq)
            peak = max(peak, memory.memory_info().rss)
        assert max(latencies) < 4.0, f"ReadLogs took up to {max(latencies):.2f} s"
        assert flood_seqs[-1] > 100_000, "the flood was read"
        assert peak - before < RSS_GROWTH_LIMIT, f"RSS grew by {(peak - before) >> 20} MiB"

        # The crashing ones are handled by the rules: crashed with a reason, backing off.
        missing = await eventually(
            lambda: scheduler.reported("missing.1", pb.BACKOFF), "missing.1 backing off"
        )
        assert missing.last_exit == "exit 127"
        assert any("no-such-command-paas-test: command not found" in t for t in missing.last_lines)
        texts = [line.text for line in await read_logs(listen, process="missing.1")]
        assert any(t.startswith("exit 127: command not found") for t in texts)

        def quick_backing_off() -> pb.InstanceStatus | None:
            found = scheduler.reported("quick.1", pb.BACKOFF)
            return found if found is not None and found.restarts >= 2 else None

        quick = await eventually(quick_backing_off, "quick.1 restarted with backoff")
        assert quick.reason.startswith("restarting in ") and quick.last_exit == "exit 1"
        assert len(await read_logs(listen, process="quick.1", lines=5)) == 5

        # Stopping ends every one of them; the stubborn one by SIGKILL after its grace.
        stopping = loop.time()
        scheduler.push(generation=2)
        for name in HOSTILE:
            await eventually(lambda n=name: scheduler.reported(n, pb.STOPPED), f"{name} stopped")  # type: ignore[misc]
        assert loop.time() - stopping >= STUBBORN_GRACE
        assert not live(forked) and not live(stubborn_processes)
        texts = [line.text for line in await read_logs(listen, process="stubborn.1")]
        assert "Stopping remaining processes with SIGKILL" in texts
        stopped = scheduler.reported("stubborn.1", pb.STOPPED)
        assert stopped is not None and stopped.last_exit == "signal 9 (SIGKILL)"

        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 30) == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()


# ---------------------------------------------------------------- which cluster, which app


def spool_bytes(state: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(state.glob("*/logs/*.log")))


async def test_logs_are_refused_until_a_scheduler_has_welcomed_the_agent(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler(cluster_id="")  # says no Welcome of itself
    address = await servers.start(scheduler)
    agent = asyncio.create_task(run_agent(config_for(address)))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(worker("worker.1", TICKER), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)  # the workload runs all the same
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read_logs(hello.address)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not joined yet" in (refused.value.details() or "")

        # Welcomed at last (no cluster recorded): what it kept before is of an unknown
        # cluster and is not served; what its scheduler starts from now on is.
        scheduler.welcome(CLUSTER)
        scheduler.push(worker("worker.1", TICKER), worker("worker.2", TICKER), generation=2)

        async def ticks() -> list[pb.LogLine] | None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                found = await read_logs(hello.address, lines=1000)
                return found if any(x.text.startswith("tick") for x in found) else None
            return None

        served = await eventually_async(ticks, "the logs served once welcomed")
        no_leftovers.update(s.pid for s in scheduler.statuses("worker.2") if s.pid)
        assert {x.instance for x in served if x.text.startswith("tick")} == {"worker.2"}
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent


async def test_an_agent_on_the_state_dir_of_another_cluster_serves_none_of_its_logs(
    servers: Servers,
    config_for: Callable[..., AgentConfig],
    no_leftovers: set[int],
    tmp_path: Path,
) -> None:
    config = config_for("")

    async def run_on(cluster_id: str, *assignments: pb.Assignment) -> list[str]:
        """Start the agent on the same state dir for a scheduler of `cluster_id`; once
        its logs are served, stop it; the texts it served."""
        scheduler = fake_scheduler(cluster_id=cluster_id)
        address = await servers.start(scheduler)
        agent = asyncio.create_task(run_agent(replace(config, join=[address])))
        try:
            hello = await eventually(scheduler.hello, "hello")
            if assignments:
                scheduler.push(*assignments, generation=1)

            async def served() -> tuple[list[str]] | None:
                with contextlib.suppress(grpc.aio.AioRpcError):  # not joined yet
                    found = [x.text for x in await read_logs(hello.address, lines=1000)]
                    return (found,) if not assignments or "said in a" in found else None
                return None

            (texts,) = await eventually_async(served, f"logs served for {cluster_id}")
            no_leftovers.update(s.pid for s in scheduler.statuses("worker.1") if s.pid)
            return texts
        finally:
            agent.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await agent
            await servers.stop(address)

    await run_on("cluster-a", worker("worker.1", "echo said in a; sleep 1000"))
    assert "said in a" in await run_on("cluster-a")  # the same cluster: its logs are kept
    assert b"said in a" in spool_bytes(tmp_path / "state")
    served = await run_on("cluster-b")  # a new cluster, the same node name and state dir
    assert "said in a" not in served
    assert b"said in a" not in spool_bytes(tmp_path / "state")  # deleted, not only hidden
    cluster_file = tmp_path / "state" / "node-1" / "cluster-id"
    assert cluster_file.read_text().strip() == "cluster-b"


async def test_an_app_is_known_by_its_id_and_the_logs_of_apps_gone_are_deleted(
    servers: Servers,
    config_for: Callable[..., AgentConfig],
    no_leftovers: set[int],
    tmp_path: Path,
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    agent = asyncio.create_task(run_agent(config_for(address)))
    try:
        hello = await eventually(scheduler.hello, "hello")

        async def texts(**request: Any) -> list[str]:
            return [x.text for x in await read_logs(hello.address, lines=1000, **request)]

        async def saying(text: str, **request: Any) -> list[str] | None:
            try:
                found = await texts(**request)
            except grpc.aio.AioRpcError as exc:
                # Until the agent has taken the Welcome (deleting what it held before), it
                # answers UNAVAILABLE: not yet.
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return None
            return found if text in found else None

        first = worker("worker.1", "echo first app; sleep 1000", app_id="id-1")
        scheduler.push(first, generation=1, live_apps=["id-1"])
        await eventually_async(lambda: saying("first app"), "the first app's line")
        # The app is destroyed and made again under its name: another id, the same web.1.
        second = worker("worker.1", "echo second app; sleep 1000", incarnation=2, app_id="id-2")
        scheduler.push(second, generation=2, live_apps=["id-1", "id-2"])
        mine = await eventually_async(
            lambda: saying("second app", app_id="id-2"), "the second app's line"
        )
        no_leftovers.update(s.pid for s in scheduler.statuses("worker.1") if s.pid)
        assert "first app" not in mine
        theirs = await texts(app_id="id-1")
        assert "first app" in theirs and "second app" not in theirs
        by_name = await texts()  # the app that has the name now
        assert "second app" in by_name and "first app" not in by_name

        scheduler.push(second, generation=3, live_apps=["id-2"])  # id-1 is gone for good

        async def first_app_gone() -> bool:
            return b"first app" not in spool_bytes(tmp_path / "state")

        await eventually_async(first_app_gone, "the first app's lines deleted")
        assert await texts(app_id="id-1") == []
        assert "second app" in await texts(app_id="id-2")
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent


async def test_a_follower_is_ended_when_the_agent_joins_another_cluster(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler()
    address = await servers.start(scheduler)
    agent = asyncio.create_task(run_agent(config_for(address)))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(worker("worker.1", TICKER), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        async with grpc.aio.insecure_channel(hello.address, options=CHANNEL_OPTIONS) as channel:
            stream = pb_grpc.AgentStub(channel).ReadLogs(
                pb.LogsRequest(app=APP, process="worker.1", follow=True)
            )
            lines = aiter(stream)
            await anext(lines)  # following
            scheduler.welcome("cluster-b")  # etcd was replaced under the same scheduler
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await asyncio.wait_for(anext(lines), 10)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "joined another cluster" in (ended.value.details() or "")
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent


async def test_a_welcome_the_agent_cannot_take_keeps_the_session_and_serves_no_logs(
    servers: Servers, config_for: Callable[..., AgentConfig], no_leftovers: set[int]
) -> None:
    scheduler = fake_scheduler(cluster_id="not/a/cluster id")
    address = await servers.start(scheduler)
    agent = asyncio.create_task(run_agent(config_for(address)))
    try:
        hello = await eventually(scheduler.hello, "hello")
        scheduler.push(worker("worker.1", TICKER), generation=1)
        up = await eventually(lambda: scheduler.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)  # the workload runs: only the logs are held back

        async def refusal() -> str | None:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await read_logs(hello.address)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            details = refused.value.details() or ""
            return details if "its last welcome failed" in details else None  # not yet taken

        details = await eventually_async(refusal, "the refusal of a failed welcome")
        assert "no usable cluster id" in details
        beats = scheduler.heartbeats()
        await eventually(lambda: scheduler.heartbeats() > beats, "the session still open")
        assert len(scheduler.hellos) == 1
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent


async def test_only_desired_sets_of_a_welcomed_session_delete_logs(
    servers: Servers,
    config_for: Callable[..., AgentConfig],
    no_leftovers: set[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scheduler that sends no Welcome (one from before cluster ids) is not trusted
    with deleting logs, even after an earlier session was welcomed."""
    first = fake_scheduler()
    address = await servers.start(first)
    install_child_watcher()
    config = config_for(address)
    supervisor = Supervisor(config, LogHub(config.name, 100), PortPool(*config.ports))
    membership = Membership(config.state_dir / config.name, supervisor.logs)
    pruned: list[pb.DesiredSet] = []
    monkeypatch.setattr(membership, "prune", pruned.append)
    session = Session(config, supervisor, "127.0.0.1:1", membership)
    task = asyncio.create_task(session.run())
    try:
        await eventually(lambda: first.hellos, "hello")
        first.push(worker("worker.1", SLEEPERS), generation=1)
        up = await eventually(lambda: first.reported("worker.1", pb.UP), "worker.1 up")
        no_leftovers.add(up.pid)
        assert membership.joined and [len(d.instances) for d in pruned] == [1]

        await servers.stop(address)
        second = fake_scheduler(cluster_id="")
        await servers.start(second, address)
        await eventually(second.hello, "hello again")
        second.push(generation=1, live_apps=[])  # "no app exists", from an unwelcomed session
        await eventually(lambda: second.reported("worker.1", pb.STOPPED), "worker.1 stopped")
        assert len(pruned) == 1  # applied to the workload, not to the logs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()
