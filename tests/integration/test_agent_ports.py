"""Agents that share a host and their default port range: real etcd, scheduler, three
real `paas agent` processes on 127.0.0.2-4 with one --ports range, and web instances
that bind 0.0.0.0:$PORT. Every one comes up, each on a port of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from paas.agent.ports import can_bind
from paas.cli.localcluster import PORTS_PER_AGENT, LocalCluster
from paas.common.ports import free_port
from tests.helpers import paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

PROCFILE = f"web: exec {sys.executable} -u -m http.server $PORT --bind 0.0.0.0\n"
AGENT_STOP_TIMEOUT = 20.0


def shared_range() -> int:
    """The low port of a range whose first ports are free now (below the ephemeral range)."""
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(10000, 32000 - PORTS_PER_AGENT, PORTS_PER_AGENT)
        if all(can_bind(port) for port in range(low, low + 20)):
            return low
    raise RuntimeError("no free port range found")


class Agents:
    """`paas agent` processes this test starts beside the cluster's own node-1."""

    def __init__(self, cluster: LocalCluster, directory: Path, low: int) -> None:
        self.cluster = cluster
        self.directory = directory
        self.low = low
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, index: int) -> None:
        host = f"127.0.0.{index + 1}"
        argv = [
            sys.executable, "-m", "paas", "agent",
            "--join", ",".join(self.cluster.scheduler_addresses),
            "--name", f"node-{index}",
            "--listen", f"{host}:{free_port(host)}",
            "--ports", f"{self.low}-{self.low + PORTS_PER_AGENT - 1}",  # node-1's range
            "--state-dir", str(self.directory / "agents"),
            "--stop-grace", "2",
        ]  # fmt: skip
        log = os.open(self.directory / f"node-{index}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log)
        self.processes.append(process)

    async def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), AGENT_STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """etcd, a scheduler and node-1 (LocalCluster), and node-2, node-3 started here, all
    three with the same --ports range and the host's default port lock directory."""
    low = shared_range()
    async with LocalCluster(
        agents=1, port_base=low, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as cluster:
        agents = Agents(cluster, tmp_path, low)
        try:
            await agents.start(2)
            await agents.start(3)

            async def three_ready() -> bool:
                listed = await paas(cluster, "nodes", "--json")
                if listed.returncode != 0:
                    return False
                nodes: list[dict[str, Any]] = json.loads(listed.stdout)
                return sorted(n["name"] for n in nodes if n["state"] == "ready") == [
                    "node-1",
                    "node-2",
                    "node-3",
                ]

            await wait_for(three_ready, timeout=60, what="three agents ready")
            yield cluster
        finally:
            await agents.stop()


async def test_three_agents_with_one_port_range_bring_up_six_webs(
    host: LocalCluster, tmp_path: Path
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text(PROCFILE)
    for argv in (("apps", "create", "shop"), ("deploy", str(app_dir)), ("scale", "web=6")):
        done = await paas(host, *argv, app="shop")
        assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = []

    async def six_up() -> bool:
        nonlocal rows
        rows = await ps_rows(host, "shop")
        return len(rows) == 6 and all(row["state"] == "up" for row in rows)

    await wait_for(six_up, timeout=90, what="web=6 up")
    assert sorted(row["node"] for row in rows) == ["node-1"] * 2 + ["node-2"] * 2 + ["node-3"] * 2
    assert len({row["port"] for row in rows}) == 6, rows
    # None crashed on "Address already in use" meanwhile.
    assert all(row["restarts"] == 0 for row in rows), rows
