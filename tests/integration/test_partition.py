"""A real network partition: one agent in its own Linux network namespace, joined to
the host by a veth pair that the test takes down and up again.

Cut off, the agent keeps its instances running; the scheduler declares its node
lost after the grace period and runs the instances elsewhere. Healed, the agent
stops the copies that were moved away: one live process per instance name.
The namespace, its veth pair and its addresses are this test's own; nothing
else is reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

NETNS = f"paas-test-{os.getpid()}"
HOST_IF, NS_IF = f"ph{os.getpid() % 100000}", f"pn{os.getpid() % 100000}"
# Addresses of this test's own namespace pair, reachable only through its veth.
HOST_IP, NS_IP = "10.213.77.1", "10.213.77.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def island() -> Iterator[str]:
    """A network namespace linked to the host by a veth pair; skips where it cannot."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot make a network namespace")
    try:
        _ip("netns", "add", NETNS)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _ip("link", "set", NS_IF, "netns", NETNS)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", HOST_IF)
        _ip("link", "set", HOST_IF, "up")
        _ip("netns", "exec", NETNS, "ip", "addr", "add", f"{NS_IP}/30", "dev", NS_IF)
        _ip("netns", "exec", NETNS, "ip", "link", "set", NS_IF, "up")
        _ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        yield NETNS
    finally:
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


@pytest.fixture
async def cluster_with_island(
    island: str, tmp_path: Path
) -> AsyncIterator[tuple[LocalCluster, asyncio.subprocess.Process]]:
    async with LocalCluster(
        agents=1,
        node_grace=3.0,
        stop_grace=2.0,
        log_to=tmp_path / "logs",
        scheduler_host="0.0.0.0",
        scheduler_sans=(HOST_IP,),
    ) as cluster:
        port = cluster.scheduler_addresses[0].rsplit(":", 1)[1]
        cluster.issue_node_credentials("island", tmp_path / "island-state")
        log = (tmp_path / "logs" / "island.log").open("wb")
        agent = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", island,
            sys.executable, "-m", "paas", "agent",
            "--join", f"{HOST_IP}:{port}",
            "--name", "island",
            "--listen", f"{NS_IP}:7071",
            "--ports", "29000-29099",
            "--state-dir", str(tmp_path / "island-state"),
            "--stop-grace", "2",
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield cluster, agent
        finally:
            await asyncio.to_thread(_ip, "link", "set", HOST_IF, "up")
            if agent.returncode is None:
                agent.terminate()
                try:
                    await asyncio.wait_for(agent.wait(), 20)
                except TimeoutError:
                    agent.kill()
                    await agent.wait()


async def nodes(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    result = await paas(cluster, "nodes", "--json")
    assert result.returncode == 0, result.stderr
    return {n["name"]: n for n in json.loads(result.stdout)}


async def ps(cluster: LocalCluster) -> list[dict[str, Any]]:
    return await ps_rows(cluster, "shop")


def live_copies() -> list[str]:
    """PAAS_INSTANCE of every live `sleep` of the app shop on this machine."""
    names = []
    for proc in psutil.process_iter(["name", "environ"]):
        try:
            env = proc.info["environ"] or {}
            if proc.info["name"] == "sleep" and env.get("PAAS_APP") == "shop":
                if proc.status() != psutil.STATUS_ZOMBIE:
                    names.append(str(env.get("PAAS_INSTANCE")))
        except psutil.Error:
            continue
    return sorted(names)


async def test_a_partitioned_agent_keeps_running_and_stops_moved_copies_when_healed(
    cluster_with_island: tuple[LocalCluster, asyncio.subprocess.Process], tmp_path: Path
) -> None:
    cluster, _agent = cluster_with_island

    async def island_ready() -> bool:
        return (await nodes(cluster)).get("island", {}).get("state") == "ready"

    await wait_for(island_ready, timeout=60, what="the agent in the namespace to join")

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Procfile").write_text("worker: exec sleep 1003\n")
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    assert (await paas(cluster, "deploy", str(tmp_path / "app"), app="shop")).returncode == 0
    assert (await paas(cluster, "scale", "worker=2", app="shop")).returncode == 0

    async def spread() -> list[dict[str, Any]] | None:
        rows = await ps(cluster)
        ok = len(rows) == 2 and all(r["state"] == "up" for r in rows)
        return rows if ok and {r["node"] for r in rows} == {"node-1", "island"} else None

    rows = await wait_for(spread, timeout=60, what="one worker on each node")
    cut_off = psutil.Process(next(r["pid"] for r in rows if r["node"] == "island"))

    _ip("link", "set", HOST_IF, "down")  # the partition

    async def moved() -> bool:
        current = await ps(cluster)
        return len(current) == 2 and all(
            r["node"] == "node-1" and r["state"] == "up" for r in current
        )

    await wait_for(moved, timeout=60, what="the cut-off node's work to run elsewhere")
    assert (await nodes(cluster))["island"]["state"] == "lost"
    assert cut_off.is_running(), "a partition never stops the workload on the far side"

    _ip("link", "set", HOST_IF, "up")  # healed

    await wait_for(island_ready, timeout=60, what="the agent to rejoin")
    await wait_for(lambda: not cut_off.is_running(), timeout=60, what="the moved copy to stop")
    await wait_for(
        lambda: live_copies() == ["worker.1", "worker.2"],
        timeout=30,
        what="one live process per instance name",
    )
