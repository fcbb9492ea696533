"""Loss under overload is counted and said, never silent: one agent's supervisor and log
hub with real processes that print as fast as they can, and buffers, spool backlogs and
followers made tiny on purpose. Each test accounts for every line: it was kept, or a
notice counts it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from paas.agent.config import AgentConfig
from paas.agent.logbuffer import LogHub, LogLine
from paas.agent.membership import Membership
from paas.agent.ports import PortPool, can_bind
from paas.agent.servicer import AgentService, process_matcher, read_history
from paas.agent.spool import Encoded, Spool
from paas.agent.supervisor import State, Supervisor, install_child_watcher
from paas.common.grpcutil import CHANNEL_OPTIONS, SERVER_OPTIONS
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import AgentAsyncStub

pytestmark = pytest.mark.integration

APP = "shop"
LINES = 50_000
# Prints LINES numbered lines as fast as it can, then idles (so it is not restarted).
FLOOD = (
    f"{sys.executable} -c 'import sys, time; "
    f'sys.stdout.writelines(f"line {{i}}\\n" for i in range({LINES})); sys.stdout.flush(); '
    "time.sleep(100000)'"
)
# The same lines padded to 500 bytes (25 MB in all): far more than gRPC's windows and
# the socket's buffers hold between an agent and a follower that reads nothing.
PAD = " " + "x" * 490
WIDE_FLOOD = FLOOD.replace("line {i}", "line {i}" + PAD)


def free_range(width: int = 10) -> tuple[int, int]:
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(20000, 32000 - width)
        if all(can_bind(port) for port in range(low, low + width)):
            return low, low + width - 1
    raise RuntimeError("no free port range found")


class Node:
    """A supervisor with a log hub (and maybe a spool) of its own, no scheduler."""

    def __init__(self, config: AgentConfig, logs: LogHub) -> None:
        self.config = config
        self.logs = logs
        self.supervisor = Supervisor(config, logs, PortPool(*config.ports))

    def run(self, name: str, command: str) -> None:
        self.supervisor.apply(
            pb.DesiredSet(
                generation=1,
                instances=[
                    pb.Assignment(
                        app=APP,
                        name=name,
                        type=name.rpartition(".")[0],
                        incarnation=1,
                        release=1,
                        command=command,
                        dir="/tmp",
                    )
                ],
            )
        )

    def up(self, name: str) -> bool:
        instance = self.supervisor.instance(APP, name)
        return instance is not None and instance.state is State.UP


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """Start a node whose buffer keeps 100 lines; with `spool_backlog`, it has a spool
    whose backlog holds that many bytes. Stopped (every process) at teardown."""
    install_child_watcher()
    nodes: list[Node] = []

    async def start(spool_backlog: int = 0) -> Node:
        spool = (
            Spool(tmp_path / "logs", "node-1", backlog_bytes=spool_backlog)
            if spool_backlog
            else None
        )
        config = AgentConfig(
            join=["127.0.0.1:1"],
            name="node-1",
            state_dir=tmp_path,
            ports=free_range(),
            log_buffer_lines=100,
            stop_grace=2.0,
        )
        logs = LogHub(config.name, config.log_buffer_lines, spool=spool)
        await logs.open()
        nodes.append(Node(config, logs))
        return nodes[-1]

    try:
        yield start
    finally:
        for started in nodes:
            await started.supervisor.close()
            await started.logs.close()
        if sys.version_info < (3, 12):
            asyncio.get_event_loop_policy().set_child_watcher(None)  # type: ignore[arg-type]


def flooded(node: Node, pad: str = "") -> bool:
    buffer = node.logs.buffer(APP, "flood.1")
    return any(line.text == f"line {LINES - 1}{pad}" for line in buffer.lines())


def counted(lines: Sequence[LogLine | pb.LogLine], pattern: str) -> int:
    """The sum of the counts that notices matching `pattern` (with its count as group 1) give."""
    found = (re.match(pattern, line.text) for line in lines if line.seq == 0)
    return sum(int(match.group(1)) for match in found if match)


async def test_a_tiny_buffer_without_a_spool_says_how_many_earlier_lines_are_gone(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    node.run("flood.1", FLOOD)
    await wait_for(lambda: flooded(node), what="the flood written")
    lines, _ = await read_history(node.logs, APP, process_matcher(""), 1000)
    notice, *kept = lines
    assert len(kept) == 100
    assert notice.seq == 0 and notice.stream == "paas"
    lost = counted([notice], r"(\d+) earlier lines of flood\.1 are no longer kept")
    assert lost + len(kept) == node.logs.buffer(APP, "flood.1").last_seq


async def test_a_spool_that_falls_behind_counts_what_it_did_not_write_and_says_where(
    start_node: NodeFactory,
) -> None:
    node = await start_node(spool_backlog=4096)
    node.run("flood.1", FLOOD)
    await wait_for(lambda: flooded(node), what="the flood written")
    spool = node.logs.spool
    assert spool is not None and spool.dropped_total > 0
    lines, _ = await read_history(node.logs, APP, process_matcher(""), 100_000)
    numbers = [int(line.text.split()[1]) for line in lines if line.text.startswith("line ")]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))
    unwritten = counted(lines, r"(\d+) lines not written to disk")
    assert unwritten == spool.dropped_total
    # Every line the process wrote (and every lifecycle line) is there, or a notice
    # stands where it is missing and counts it (some it counts may still be in memory).
    expected, noticed, missing = 1, False, 0
    for line in lines:
        if not line.seq:
            noticed = True
            continue
        if line.seq > expected:
            assert noticed, f"seq {expected} to {line.seq - 1} missing without a notice"
            missing += line.seq - expected
        expected, noticed = line.seq + 1, False
    assert expected - 1 == node.logs.buffer(APP, "flood.1").last_seq
    assert 0 < missing <= unwritten


async def test_a_slow_disk_makes_the_process_wait_instead_of_lines_being_dropped(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write to disk takes 20 ms and the backlog holds 4 MiB (some 16,000 short
    lines), so the flood outruns the disk writer: the pipe's reader waits for it, the
    process waits on its pipe, and every line reaches the spool (none dropped)."""
    real_write = Spool._write

    def slow_write(self: Spool, batch: list[Encoded]) -> None:
        time.sleep(0.02)
        real_write(self, batch)

    monkeypatch.setattr(Spool, "_write", slow_write)
    node = await start_node(spool_backlog=4 << 20)
    node.run("flood.1", FLOOD)
    await wait_for(lambda: flooded(node), timeout=120, what="the flood written")
    spool = node.logs.spool
    assert spool is not None
    await spool.flush()
    assert spool.dropped_total == 0
    lines, _ = await read_history(node.logs, APP, process_matcher(""), 100_000)
    numbers = [int(line.text.split()[1]) for line in lines if line.text.startswith("line ")]
    assert numbers == list(range(LINES)), "every line from the spool, once, in order"
    assert not [line for line in lines if not line.seq], "no notice of a loss"


@contextlib.asynccontextmanager
async def serving(node: Node) -> AsyncIterator[AgentAsyncStub]:
    """The node's ReadLogs over real gRPC (a membership welcomed into a cluster)."""
    membership = Membership(node.config.state_dir / node.config.name, node.logs)
    await membership.welcome("cluster-1")
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_AgentServicer_to_server(AgentService(node.logs, membership), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as ch:
            yield pb_grpc.AgentStub(ch)
    finally:
        await server.stop(None)


async def follow_until(
    stream: AsyncIterator[pb.LogBatch], done: Callable[[list[pb.LogLine]], bool]
) -> list[pb.LogLine]:
    got: list[pb.LogLine] = []
    async with asyncio.timeout(120):
        async for batch in stream:
            got.extend(batch.lines)
            if done(got):
                return got
    raise AssertionError("the stream ended")


def last_line(lines: list[pb.LogLine], pad: str = "") -> bool:
    return any(line.text == f"line {LINES - 1}{pad}" for line in lines)


async def test_a_follower_that_reads_nothing_for_a_while_gets_every_line_in_order(
    start_node: NodeFactory,
) -> None:
    node = await start_node(spool_backlog=64 << 20)
    async with serving(node) as agent:
        call = agent.ReadLogs(pb.LogsRequest(app=APP, follow=True, lines=1))
        stream = call.__aiter__()
        node.run("flood.1", FLOOD)
        # Following (its first lines came): the rest comes while it reads nothing.
        first = await asyncio.wait_for(anext(stream), 60)
        await wait_for(lambda: flooded(node), what="the flood written, the follower unread")
        got = [*first.lines, *await follow_until(stream, last_line)]
        call.cancel()
    assert [line.text for line in got if line.seq == 0] == [], "nothing left retention"
    numbers = [int(line.text.split()[1]) for line in got if line.text.startswith("line ")]
    assert numbers == list(range(LINES)), "every line, once, in order"
    seqs = [line.seq for line in got if line.instance == "flood.1"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_a_follower_behind_retention_is_told_exactly_what_left_it_then_gets_the_rest(
    start_node: NodeFactory,
) -> None:
    node = await start_node()  # no spool: the buffer's 100 lines are all that is kept
    async with serving(node) as agent:
        call = agent.ReadLogs(pb.LogsRequest(app=APP, follow=True, lines=1))
        stream = call.__aiter__()
        node.run("flood.1", WIDE_FLOOD)
        first = await asyncio.wait_for(anext(stream), 60)
        await wait_for(lambda: flooded(node, PAD), what="the flood written, the follower unread")
        got = [*first.lines, *await follow_until(stream, lambda lines: last_line(lines, PAD))]
        call.cancel()
    flood = [line for line in got if line.instance == "flood.1"]
    lost = counted(flood, r"(\d+) lines of flood\.1 were no longer kept")
    assert lost > 0
    had = [line.seq for line in flood if line.seq]
    assert had == sorted(had) and len(had) == len(set(had))
    assert len(had) + lost == had[-1] - had[0] + 1, "the notices count exactly the gaps"
    assert had[-100:] == list(range(had[-1] - 99, had[-1] + 1)), "what is kept all comes"
