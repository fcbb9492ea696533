"""Scheduler failover with two replicas: killing the leader restarts nothing, loses no
node, and the other replica takes over the API and the agents' sessions."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from paas.common.formation import parse_changes
from paas.proto import paas_pb2 as pb
from tests.helpers import paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

PROCFILE = """\
web: exec python3 -u -m http.server $PORT --bind 0.0.0.0
worker: exec sleep 1000
"""


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        agents=3,
        # Agents redial every second at most; the grace after a change of leader must
        # cover that under the load of a test run.
        node_grace=5.0,
        stop_grace=2.0,
        log_to=tmp_path / "logs",
        schedulers=2,
        leader_ttl=2,
    ) as started:
        yield started


async def ps(cluster: LocalCluster) -> list[dict[str, Any]]:
    return await ps_rows(cluster, "shop")


async def all_up(cluster: LocalCluster, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def check() -> bool:
        nonlocal rows
        try:
            rows = await ps(cluster)
        except AssertionError:
            return False
        return len(rows) == count and all(r["state"] == "up" for r in rows)

    await wait_for(check, timeout=60, what=f"{count} instances up")
    return rows


async def test_killing_the_leader_restarts_nothing_and_the_follower_takes_over(
    replicated: LocalCluster, tmp_path: Path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Procfile").write_text(PROCFILE)
    assert (await paas(replicated, "apps", "create", "shop")).returncode == 0
    assert (await paas(replicated, "deploy", str(tmp_path / "app"), app="shop")).returncode == 0
    assert (await paas(replicated, "scale", "web=2", "worker=2", app="shop")).returncode == 0
    before = {r["name"]: r["pid"] for r in await all_up(replicated, 4)}

    replicated.scheduler_process(0).send_signal(signal.SIGKILL)

    # The new leader answers a scale: the API moved over.
    async def scale_accepted() -> bool:
        result = await paas(replicated, "scale", "worker=3", app="shop", timeout=20)
        return result.returncode == 0

    await wait_for(scale_accepted, timeout=30, what="the follower to accept a scale")
    after = await all_up(replicated, 5)
    unchanged = {r["name"]: r["pid"] for r in after if r["name"] in before}
    assert unchanged == before, "no running instance was restarted by the change of leader"

    nodes = json.loads((await paas(replicated, "nodes", "--json")).stdout)
    assert [n["state"] for n in nodes] == ["ready"] * 3, "no node was declared lost"


async def deploy(cluster: LocalCluster, tmp_path: Path, *formation: str) -> None:
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "Procfile").write_text(PROCFILE)
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    assert (await paas(cluster, "deploy", str(tmp_path / "app"), app="shop")).returncode == 0
    assert (await paas(cluster, "scale", *formation, app="shop")).returncode == 0


async def test_a_paused_leader_that_wakes_up_cannot_write(
    replicated: LocalCluster, tmp_path: Path
) -> None:
    await deploy(replicated, tmp_path, "web=1", "worker=2")
    await all_up(replicated, 3)
    old_leader = replicated.scheduler_process(0)
    old_leader.send_signal(signal.SIGSTOP)
    try:
        # Only the second replica can answer now.
        follower = replicated.scheduler_addresses[1]

        async def scaled() -> bool:
            result = await paas(
                follower, "scale", "worker=1", app="shop", timeout=20,
                env=replicated.credentials_env(),
            )  # fmt: skip
            return result.returncode == 0

        await wait_for(scaled, timeout=30, what="the second replica to lead and scale")
    finally:
        old_leader.send_signal(signal.SIGCONT)
    survivors = await all_up(replicated, 2)
    assert sorted(r["name"] for r in survivors) == ["web.1", "worker.1"]

    # The woken replica must have stepped down: a scale through it is redirected or
    # refused, and the formation stays what the new leader wrote.
    async def settled() -> bool:
        rows = await ps(replicated)
        return sorted(r["name"] for r in rows) == ["web.1", "worker.1"] and all(
            r["state"] == "up" for r in rows
        )

    await wait_for(settled, timeout=30, what="the formation to stay web=1 worker=1")
    log = replicated.log_path("scheduler").read_text()
    assert "leadership lost" in log or "lost leadership" in log


async def test_an_agent_paused_past_its_grace_runs_nothing_twice_when_it_wakes(
    replicated: LocalCluster, tmp_path: Path
) -> None:
    await deploy(replicated, tmp_path, "web=0", "worker=3")
    rows = await all_up(replicated, 3)
    victim = rows[0]["node"]
    paused = replicated.agent_process(victim)
    paused.send_signal(signal.SIGSTOP)
    try:

        async def moved() -> bool:
            current = await ps(replicated)
            return len(current) == 3 and all(
                r["node"] != victim and r["state"] == "up" for r in current
            )

        await wait_for(moved, timeout=60, what="the paused node's work to move")
    finally:
        paused.send_signal(signal.SIGCONT)

    # Awake again, the agent learns its desired set is empty and stops its copy.

    def no_duplicates() -> bool:
        names: list[str] = []
        for proc in psutil.process_iter(["environ"]):
            try:
                env = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if env.get("PAAS_APP") == "shop" and proc.name() == "sleep":
                names.append(str(env.get("PAAS_INSTANCE")))
        return sorted(names) == ["worker.1", "worker.2", "worker.3"]

    await wait_for(no_duplicates, timeout=60, what="one live process per instance name")


def copies_per_name(cluster: LocalCluster) -> dict[str, int]:
    """How many live processes of the app `shop` each instance name has, among those
    the agents of `cluster` started (other tests on the machine run apps named shop)."""
    agents = {cluster.agent_process(f"node-{i}").pid for i in range(1, cluster.agents + 1)}
    counts: dict[str, int] = {}
    for proc in psutil.process_iter(["environ", "name"]):
        try:
            env = proc.info["environ"] or {}
            if env.get("PAAS_APP") != "shop" or proc.info["name"] != "sleep":
                continue
            if not agents & {parent.pid for parent in proc.parents()}:
                continue
        except psutil.Error:
            continue
        name = str(env.get("PAAS_INSTANCE"))
        counts[name] = counts.get(name, 0) + 1
    return counts


async def test_a_leader_paused_for_20_s_restarts_nothing_and_runs_nothing_twice(
    tmp_path: Path,
) -> None:
    # The defaults (10 s node grace, 5 s leader lease): the agents must find the new
    # leader within the grace it gives them, and a paused leader must not hold them.
    async with LocalCluster(
        agents=3, stop_grace=2.0, log_to=tmp_path / "logs", schedulers=2
    ) as cluster:
        await deploy(cluster, tmp_path, "web=0", "worker=6")
        before = {r["name"]: r["pid"] for r in await all_up(cluster, 6)}
        leader = cluster.scheduler_process(0)
        loop = asyncio.get_running_loop()
        leader.send_signal(signal.SIGSTOP)
        try:
            paused_until = loop.time() + 20.0
            samples = 0
            while loop.time() < paused_until:
                counts = copies_per_name(cluster)
                assert all(n == 1 for n in counts.values()), f"run twice: {counts}"
                samples += 1
                await asyncio.sleep(0.25)
            assert samples > 20
            # The CLI with the paused replica first in its list answers in time.
            async with cluster.client() as client:
                started = loop.time()
                nodes = await client.list_nodes()
                assert loop.time() - started < 3.0, "the paused replica held the call"
            assert [n.state for n in nodes] == [pb.NODE_READY] * 3, "a node was lost"
        finally:
            leader.send_signal(signal.SIGCONT)
        after = {r["name"]: r["pid"] for r in await all_up(cluster, 6)}
        assert after == before, "an instance was restarted or moved by the pause"
        assert all(n == 1 for n in copies_per_name(cluster).values())


def last_session_with(cluster: LocalCluster, agent: str) -> str:
    """The scheduler address of the agent's newest "session open" line ("": none)."""
    found = re.findall(r"session open with scheduler (\S+)", cluster.log_path(agent).read_text())
    return found[-1] if found else ""


async def test_an_agent_that_dials_a_leader_as_it_loses_the_lead_is_served_by_the_new_one(
    replicated: LocalCluster, tmp_path: Path
) -> None:
    # Issue 9, hole 2: an agent whose session reached a replica just as its lease ran
    # out stayed there, its node lost, for as long as that replica followed. Here the
    # agent dials the leader while it is paused; the leader wakes with its lease gone
    # (paused past the 2 s lease) and the agent's hello waiting for it.
    cluster = replicated
    await deploy(cluster, tmp_path, "web=0", "worker=3")
    await all_up(cluster, 3)
    old, new = cluster.scheduler_addresses
    cluster.agent_process("node-2").kill()
    await cluster.agent_process("node-2").wait()
    leader = cluster.scheduler_process(0)
    loop = asyncio.get_running_loop()
    leader.send_signal(signal.SIGSTOP)
    try:
        paused_at = loop.time()
        # The agent lists the paused replica first: its connection waits there.
        restarted = asyncio.create_task(cluster.restart_agent("node-2"))
        # Past the lease, within the agent's 3 s wait for its first message.
        await asyncio.sleep(max(0.0, paused_at + cluster.leader_ttl + 0.7 - loop.time()))
    finally:
        leader.send_signal(signal.SIGCONT)
    woke_at = loop.time()
    await asyncio.wait_for(restarted, 60)
    await wait_for(
        lambda: last_session_with(cluster, "node-2") == new,
        timeout=30,
        what=f"node-2 in session with the new leader {new}",
    )
    took = loop.time() - woke_at
    assert took < 15.0, f"node-2 reached the new leader {took:.1f} s after the old one woke"
    # Served means the leader's work reaches it: a scale-up places instances there.
    assert (await paas(cluster, "scale", "worker=9", app="shop")).returncode == 0

    async def placed_on_node_2() -> bool:
        rows = await ps(cluster)
        return any(r["node"] == "node-2" and r["state"] == "up" for r in rows)

    await wait_for(placed_on_node_2, timeout=60, what="an instance up on node-2")
    assert last_session_with(cluster, "node-2") == new, "node-2 went back to the follower"
    assert old != new


async def test_an_agent_paused_past_its_silence_timeout_goes_back_to_the_leader_at_once(
    replicated: LocalCluster, tmp_path: Path
) -> None:
    # Found by bench/chaos.py: an agent paused for 6 s woke with its 5 s silence timer
    # overdue and the leader's heartbeats unread, called the leader silent and avoided
    # it for 15 s; its node was lost meanwhile and its work ran twice.
    cluster = replicated
    await deploy(cluster, tmp_path, "web=0", "worker=3")
    before = {(r["name"], r["node"], r["pid"]) for r in await all_up(cluster, 3)}
    leader = cluster.scheduler_addresses[0]
    agent = cluster.agent_process("node-1")
    log_before = cluster.log_path("node-1").read_text()
    loop = asyncio.get_running_loop()
    agent.send_signal(signal.SIGSTOP)
    try:
        # Past the agent's 5 s silence timeout and the scheduler's, within the 5 s grace
        # that follows the scheduler's.
        await asyncio.sleep(6.0)
    finally:
        agent.send_signal(signal.SIGCONT)
    woke_at = loop.time()

    def back() -> bool:
        text = cluster.log_path("node-1").read_text()[len(log_before) :]
        return f"session open with scheduler {leader}" in text

    await wait_for(back, timeout=30, what="node-1 in session with the leader again")
    took = loop.time() - woke_at
    text = cluster.log_path("node-1").read_text()[len(log_before) :]
    assert took < 4.0, f"node-1 took {took:.1f} s to reach the leader again:\n{text}"
    assert "went silent" not in text and "sent nothing" not in text, text
    after = {(r["name"], r["node"], r["pid"]) for r in await all_up(cluster, 3)}
    assert after == before, "an instance was moved or restarted"
    assert all(n == 1 for n in copies_per_name(cluster).values())


async def test_an_etcd_restart_stops_no_workload_and_the_api_comes_back(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    await deploy(cluster, tmp_path, "web=1", "worker=2")
    before = {r["name"]: r["pid"] for r in await all_up(cluster, 3)}
    processes = [psutil.Process(pid) for pid in before.values()]

    etcd = cluster.etcd_process()
    etcd.send_signal(signal.SIGKILL)
    await etcd.wait()

    # While etcd is down the API refuses with a clear error, and nothing stops.
    refused = await paas(cluster, "scale", "worker=3", app="shop", timeout=30)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    assert all(p.is_running() for p in processes)

    await cluster.restart_etcd()

    async def scaled() -> bool:
        return (await paas(cluster, "scale", "worker=3", app="shop", timeout=20)).returncode == 0

    await wait_for(scaled, timeout=60, what="the API to work again after etcd restarted")
    after = await all_up(cluster, 4)
    assert {r["name"]: r["pid"] for r in after if r["name"] in before} == before


async def test_a_singleton_stops_when_its_agent_is_cut_off_and_others_keep_running(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    (tmp_path / "app").mkdir()
    procfile = "clock: exec sleep 1001\nworker: exec sleep 1002\n"
    (tmp_path / "app" / "Procfile").write_text(procfile)
    fenced = {"clock": pb.ProcessSettings(stop_after_disconnected=1.0)}
    async with cluster.client() as client:
        await client.create_app("shop")
        await client.deploy("shop", str(tmp_path / "app"), procfile, {}, fenced)
        await client.scale("shop", parse_changes(["clock=1", "worker=3"]))
    rows = await all_up(cluster, 4)
    clock = psutil.Process(next(r["pid"] for r in rows if r["type"] == "clock"))
    workers = [psutil.Process(r["pid"]) for r in rows if r["type"] == "worker"]

    cluster.scheduler_process(0).send_signal(signal.SIGKILL)
    await wait_for(lambda: not clock.is_running(), timeout=30, what="the cut-off clock to stop")
    assert all(w.is_running() for w in workers), "types without the limit keep running"

    await cluster.restart_scheduler(0)
    after = await all_up(cluster, 4)
    assert sorted(r["pid"] for r in after if r["type"] == "worker") == sorted(
        w.pid for w in workers
    )


async def test_drain_moves_work_new_copies_first_and_undrain_takes_the_node_back(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    await deploy(cluster, tmp_path, "web=0", "worker=3")
    rows = await all_up(cluster, 3)
    victim = rows[0]["node"]
    old = [psutil.Process(r["pid"]) for r in rows if r["node"] == victim]

    drained = await paas(cluster, "nodes", "drain", victim)
    assert drained.returncode == 0, drained.stderr

    async def moved() -> bool:
        current = await ps(cluster)
        return len(current) == 3 and all(
            r["node"] != victim and r["state"] == "up" for r in current
        )

    await wait_for(moved, timeout=60, what="the drained node's work to move")
    await wait_for(lambda: not any(p.is_running() for p in old), timeout=30, what="old copies")
    nodes = {n["name"]: n for n in json.loads((await paas(cluster, "nodes", "--json")).stdout)}
    assert nodes[victim]["state"] == "draining"

    # New before old: each moved instance was up on its new node before the old copy
    # was told to stop.
    logs = await paas(cluster, "logs", "--json", "-n", "1000", app="shop")
    events = [json.loads(line) for line in logs.stdout.splitlines()]
    for instance in {r["name"] for r in rows if r["node"] == victim}:
        up = [
            e["timestamp"]
            for e in events
            if e["instance"] == instance
            and e["node"] != victim
            and e["text"] == "State changed from starting to up"
        ]
        stopping = [
            e["timestamp"]
            for e in events
            if e["instance"] == instance
            and e["node"] == victim
            and e["text"].startswith("Stopping")
        ]
        assert up and stopping, f"{instance}: both copies' lifecycle lines are in the log"
        assert max(up) <= min(stopping), f"{instance}: the old copy stopped first"

    assert (await paas(cluster, "scale", "worker=6", app="shop")).returncode == 0
    rows = await all_up(cluster, 6)
    assert all(r["node"] != victim for r in rows), "nothing new lands on a draining node"

    undrained = await paas(cluster, "nodes", "undrain", victim)
    assert undrained.returncode == 0, undrained.stderr
    assert (await paas(cluster, "scale", "worker=7", app="shop")).returncode == 0
    rows = await all_up(cluster, 7)
    assert any(r["node"] == victim for r in rows), "an undrained node takes work again"

    unknown = await paas(cluster, "nodes", "drain", "no-such-node")
    assert unknown.returncode == 1 and "unknown node" in unknown.stderr
