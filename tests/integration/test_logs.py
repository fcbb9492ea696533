"""Logs as one event stream that loses nothing silently, on a real cluster (etcd, a
scheduler, 3 agents, real processes): every numbered line of a busy process counted,
each instance's lines in order, history that outlives the agent's memory (its spool),
`-f` that keeps going across a crash and a move to another node and merges nodes in
time order, bytes that are not UTF-8 and over-long lines, `previous`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from paas.cli.localcluster import LocalCluster
from paas.proto import paas_pb2 as pb
from tests.helpers import paas, wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub

pytestmark = pytest.mark.integration

APP = "shop"
COUNT = 20_000  # twice the agent's in-memory buffer: history must come from the spool
# counter prints COUNT numbered lines at about 10 000 a second, then idles.
# ticker prints its time five times a second, each line numbered; chatter every 2 ms.
# mangler prints bytes that are not UTF-8 and a line of 25 000 characters.
# crasher writes 15 000 lines (more than the buffer keeps) and exits 3, again and again.
PROCFILE = f"""\
counter: python3 -u -c 'import time; [(print(f"line {{i}}"), i % 1000 == 999 and time.sleep(0.1)) for i in range({COUNT})]; time.sleep(100000)'
ticker: python3 -u -c 'import itertools, time; [(print(f"tick {{i}} {{time.time():.6f}}"), time.sleep(0.2)) for i in itertools.count(1)]'
chatter: python3 -u -c 'import itertools, time; [(print(f"chat {{i}} {{time.time():.6f}}"), time.sleep(0.002)) for i in itertools.count(1)]'
mangler: printf 'caf\\351 au lait\\n'; python3 -c 'print("x" * 25000)'; exec sleep 100000
crasher: python3 -u -c '[print(f"out {{i}}") for i in range(15000)]'; echo "the reason" >&2; sleep 0.3; exit 3
"""  # noqa: E501


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "Procfile").write_text(PROCFILE)
    return directory


async def start(cluster: LocalCluster, app_dir: Path, *formation: str) -> None:
    created = await paas(cluster, "apps", "create", APP)
    assert created.returncode == 0, created.stderr
    deployed = await paas(cluster, "deploy", str(app_dir), app=APP)
    assert deployed.returncode == 0, deployed.stderr
    scaled = await paas(cluster, "scale", *formation, app=APP)
    assert scaled.returncode == 0, scaled.stderr


async def ps(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    result = await paas(cluster, "ps", "--json", app=APP)
    rows: list[dict[str, Any]] = result.json()
    return {row["name"]: row for row in rows}


async def history(stub: SchedulerAsyncStub, **request: Any) -> list[pb.LogLine]:
    call = stub.Logs(pb.LogsRequest(app=APP, **request), timeout=60)
    return [line async for batch in call for line in batch.lines]


async def logs_json(cluster: LocalCluster, *args: str) -> list[dict[str, Any]]:
    result = await paas(cluster, "logs", "--json", *args, app=APP, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(raw) for raw in result.stdout.splitlines()]


def numbered(lines: list[dict[str, Any]], instance: str, word: str = "line") -> list[int]:
    found = (re.fullmatch(rf"{word} (\d+)", x["text"]) for x in lines if x["instance"] == instance)
    return [int(match.group(1)) for match in found if match]


class Follower:
    """A Logs follow stream read straight over gRPC, in the background."""

    def __init__(self, stub: SchedulerAsyncStub, **request: Any) -> None:
        self.lines: list[pb.LogLine] = []
        self._call = stub.Logs(pb.LogsRequest(app=APP, follow=True, **request))
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for batch in self._call:
            self.lines.extend(batch.lines)

    def texts(self, instance: str = "") -> list[str]:
        return [x.text for x in self.lines if not instance or x.instance == instance]

    def ticks(self) -> list[int]:
        found = (re.match(r"tick (\d+) ", x.text) for x in self.lines)
        return [int(match.group(1)) for match in found if match]

    async def stop(self) -> None:
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ---------------------------------------------------------------- nothing lost


async def test_every_numbered_line_of_busy_instances_is_kept_once_and_in_order(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    await start(cluster, app_dir, "counter=3")
    instances = ["counter.1", "counter.2", "counter.3"]

    async def all_written() -> bool:
        for instance in instances:
            last = await history(scheduler, process=instance, lines=1)
            if not last or last[-1].text != f"line {COUNT - 1}":
                return False
        return True

    await wait_for(all_written, timeout=120, interval=0.5, what="every counter done")
    for instance in instances:
        lines = await logs_json(cluster, "-n", str(COUNT + 100), "-p", instance)
        assert numbered(lines, instance) == list(range(COUNT)), f"{instance} lost or reordered"
        seqs = [x["seq"] for x in lines if x["instance"] == instance]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
        assert not [x for x in lines if "dropped" in x["text"] or "no longer kept" in x["text"]]


async def test_history_outlives_the_agent_that_wrote_it(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    """The agent is killed and started again before its node is lost: the instance is
    started again on the same node, and its earlier lines come from the spool."""
    await start(cluster, app_dir, "counter=1")
    node = (await wait_for(lambda: ps(cluster), what="counter placed"))["counter.1"]["node"]

    async def counted() -> bool:
        # More lines than the buffer holds: the agent reads its spool, so all is on disk.
        lines = await history(scheduler, process="counter.1", lines=COUNT + 100)
        return bool(lines) and lines[-1].text == f"line {COUNT - 1}"

    await wait_for(counted, timeout=60, interval=0.3, what="counter done")
    cluster.agent_process(node).send_signal(signal.SIGKILL)
    await cluster.agent_process(node).wait()
    killed_at = time.time()
    await cluster.restart_agent(node)

    async def running_again() -> bool:
        lines = await history(scheduler, process="counter.1", lines=5)
        return any(x.stream == "stdout" and x.timestamp > killed_at for x in lines)

    # Back within the node grace, the agent starts it again on the same node (were the
    # node lost first, it would start elsewhere; the old lines must be there either way).
    await wait_for(running_again, timeout=60, interval=0.2, what="counter.1 running again")
    lines = await history(scheduler, process="counter.1", lines=3 * COUNT)
    here = [x for x in lines if x.node == node]
    first_run = [x.text for x in here if x.run == 1 and x.stream == "stdout"]
    assert first_run == [f"line {i}" for i in range(COUNT)]
    seqs = [x.seq for x in here if x.seq]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "seq did not go on"
    assert not [x.text for x in lines if "no longer kept" in x.text or "dropped" in x.text]


# ---------------------------------------------------------------- following


async def test_following_merges_the_nodes_in_time_order(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    await start(cluster, app_dir, "chatter=3")
    rows = await wait_for(lambda: _all_up(cluster, 3), timeout=60, what="three chatters up")
    assert len({row["node"] for row in rows.values()}) == 3  # one per node
    follower = Follower(scheduler, process="chatter", lines=1)
    try:
        await wait_for(lambda: len(follower.lines) >= 3000, timeout=60, what="3000 lines")
    finally:
        await follower.stop()
    chat = [x for x in follower.lines if x.text.startswith("chat ")]
    stamps = [x.timestamp for x in chat]
    assert stamps == sorted(stamps), "lines of different nodes came out of time order"
    assert len({x.node for x in chat}) == 3
    by_instance: dict[str, list[int]] = defaultdict(list)
    for x in chat:
        by_instance[x.instance].append(int(x.text.split()[1]))
    for instance, numbers in by_instance.items():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), instance


async def _all_up(cluster: LocalCluster, count: int) -> dict[str, dict[str, Any]] | None:
    rows = await ps(cluster)
    up = {name: row for name, row in rows.items() if row["state"] == "up"}
    return up if len(up) == count else None


async def test_following_goes_on_across_a_crash_and_a_move_to_another_node(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    await start(cluster, app_dir, "ticker=1")
    first = (await wait_for(lambda: _all_up(cluster, 1), timeout=60, what="ticker up"))["ticker.1"]
    follower = Follower(scheduler, process="ticker.1", lines=1)
    try:
        await wait_for(lambda: len(follower.ticks()) >= 3, timeout=30, what="ticks")

        # A crash: the agent starts it again on the same node; its new lines follow.
        cut = len(follower.ticks())
        os.kill((await ps(cluster))["ticker.1"]["pid"], signal.SIGKILL)
        await wait_for(
            lambda: any("exited on" in t or "status" in t for t in follower.texts()),
            timeout=30,
            what="the crash in the stream",
        )
        await wait_for(
            lambda: follower.ticks()[-1] < follower.ticks()[cut - 1],
            timeout=30,
            what="ticks of the new run (they count from 1 again)",
        )

        # A move: drain the node; the ticker starts on another one and still follows.
        drained = await paas(cluster, "nodes", "drain", first["node"])
        assert drained.returncode == 0, drained.stderr

        def moved() -> bool:
            nodes = [x.node for x in follower.lines if x.text.startswith("tick ")]
            return bool(nodes) and nodes[-1] != first["node"]

        await wait_for(moved, timeout=60, what="ticks from another node")
        mark = len(follower.lines)
        await wait_for(
            lambda: len([x for x in follower.lines[mark:] if x.text.startswith("tick ")]) >= 5,
            timeout=30,
            what="more ticks from the new node",
        )
    finally:
        await follower.stop()
    per_node: dict[str, list[int]] = defaultdict(list)
    for x in follower.lines:
        if x.text.startswith("tick "):
            per_node[x.node].append(x.seq)
    for node, seqs in per_node.items():
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), f"{node}: {seqs}"


async def test_following_goes_on_when_the_node_dies_and_the_instance_moves(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    await start(cluster, app_dir, "ticker=1")
    first = (await wait_for(lambda: _all_up(cluster, 1), timeout=60, what="ticker up"))["ticker.1"]
    follower = Follower(scheduler, process="ticker.1", lines=1)
    try:
        await wait_for(lambda: len(follower.ticks()) >= 3, timeout=30, what="ticks")
        cluster.agent_process(first["node"]).send_signal(signal.SIGKILL)

        def moved() -> bool:
            nodes = [x.node for x in follower.lines if x.text.startswith("tick ")]
            return bool(nodes[-1] != first["node"])

        await wait_for(moved, timeout=60, what="ticks from the node it moved to")
    finally:
        await follower.stop()
    notices = [x.text for x in follower.lines if x.stream == "paas" and "lost node" in x.text]
    assert notices and first["node"] in notices[0]


# ---------------------------------------------------------------- odd output


async def test_bytes_that_are_not_utf8_are_shown_safely_and_long_lines_are_split(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    await start(cluster, app_dir, "mangler=1")

    async def written() -> list[pb.LogLine] | None:
        lines = [x for x in await history(scheduler, process="mangler") if x.stream == "stdout"]
        return lines if len(lines) >= 4 else None

    lines = await wait_for(written, timeout=60, what="the mangler's output")
    assert lines[0].text == "caf\ufffd au lait"
    pieces = lines[1:4]
    assert [(len(x.text), x.continued) for x in pieces] == [  # 10,000 bytes, as Heroku
        (10_000, True),
        (10_000, True),
        (25000 - 2 * 10_000, False),
    ]
    assert "".join(x.text for x in pieces) == "x" * 25000
    # The CLI prints them (rejoined); it neither crashes nor loses a piece.
    printed = await paas(cluster, "logs", "-p", "mangler", app=APP)
    assert printed.returncode == 0, printed.stderr
    assert "caf\ufffd au lait" in printed.stdout
    assert "x" * 25000 in printed.stdout


async def test_previous_is_the_whole_last_finished_run_even_beyond_the_buffer(
    cluster: LocalCluster, app_dir: Path, scheduler: SchedulerAsyncStub
) -> None:
    await start(cluster, app_dir, "crasher=1")

    async def crashed_twice() -> bool:
        rows = await ps(cluster)
        return bool(rows) and int(rows["crasher.1"]["restarts"]) >= 2

    await wait_for(crashed_twice, timeout=90, interval=0.3, what="two crashes")
    lines = await history(scheduler, process="crasher.1", previous=True, lines=20_000)
    runs = {x.run for x in lines if x.seq}
    assert len(runs) == 1, runs
    output = [x.text for x in lines if x.stream == "stdout"]
    assert output == [f"out {i}" for i in range(15_000)]
    assert [x.text for x in lines if x.stream == "stderr"] == ["the reason"]
    assert any("exited with status 3" in x.text for x in lines if x.stream == "paas")

    refused = history(scheduler, process="crasher", previous=True)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await refused
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
