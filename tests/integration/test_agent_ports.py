"""Agents that share a host and their default port range: real etcd, scheduler, three
real `paas agent` processes on 127.0.0.2-4 with one --ports range, and web instances
that bind 0.0.0.0:$PORT. Every one comes up, each on a port of its own."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from paas.agent.ports import can_bind, default_lock_dir
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

    async def start(self, index: int, lock_dir: Path | None = None) -> None:
        host = f"127.0.0.{index + 1}"
        self.cluster.issue_node_credentials(f"node-{index}", self.directory / "agents")
        argv = [
            sys.executable, "-m", "paas", "agent",
            "--join", ",".join(self.cluster.scheduler_addresses),
            "--name", f"node-{index}",
            "--listen", f"{host}:{free_port(host)}",
            "--ports", f"{self.low}-{self.low + PORTS_PER_AGENT - 1}",  # node-1's range
            "--state-dir", str(self.directory / "agents"),
            "--stop-grace", "2",
        ]  # fmt: skip
        if lock_dir is not None:
            argv += ["--port-lock-dir", str(lock_dir)]
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


async def nodes_ready(cluster: LocalCluster, count: int) -> None:
    async def ready() -> bool:
        listed = await paas(cluster, "nodes", "--json")
        if listed.returncode != 0:
            return False
        nodes: list[dict[str, Any]] = json.loads(listed.stdout)
        return len([n for n in nodes if n["state"] == "ready"]) == count

    await wait_for(ready, timeout=60, what=f"{count} agents ready")


async def deploy_web(cluster: LocalCluster, directory: Path, count: int) -> list[dict[str, Any]]:
    """Deploy PROCFILE as app shop, scale web=`count`, and return ps once all are up."""
    app_dir = directory / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text(PROCFILE)
    for argv in (("apps", "create", "shop"), ("deploy", str(app_dir)), ("scale", f"web={count}")):
        done = await paas(cluster, *argv, app="shop")
        assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = []

    async def all_up() -> bool:
        nonlocal rows
        rows = await ps_rows(cluster, "shop")
        return len(rows) == count and all(row["state"] == "up" for row in rows)

    await wait_for(all_up, timeout=90, what=f"web={count} up")
    return rows


def locked(path: Path) -> bool:
    """Whether someone holds the flock of `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


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
            await nodes_ready(cluster, 3)
            yield cluster
        finally:
            await agents.stop()


async def test_three_agents_with_one_port_range_bring_up_six_webs(
    host: LocalCluster, tmp_path: Path
) -> None:
    rows = await deploy_web(host, tmp_path, 6)
    assert sorted(row["node"] for row in rows) == ["node-1"] * 2 + ["node-2"] * 2 + ["node-3"] * 2
    assert len({row["port"] for row in rows}) == 6, rows
    # None crashed on "Address already in use" meanwhile.
    assert all(row["restarts"] == 0 for row in rows), rows
    # Each port stays locked in the host's directory while its instance keeps it.
    assert all(locked(default_lock_dir() / f"{row['port']}.lock") for row in rows)


async def test_an_agent_locks_its_ports_in_the_directory_it_is_given(tmp_path: Path) -> None:
    low = shared_range()
    lock_dir = tmp_path / "port-locks"
    async with LocalCluster(
        agents=1, port_base=low, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as cluster:
        agents = Agents(cluster, tmp_path, low + PORTS_PER_AGENT)
        try:
            await agents.start(2, lock_dir=lock_dir)
            await nodes_ready(cluster, 2)
            rows = await deploy_web(cluster, tmp_path, 2)
            port = next(row["port"] for row in rows if row["node"] == "node-2")
            assert locked(lock_dir / f"{port}.lock")
            done = await paas(cluster, "scale", "web=0", app="shop")
            assert done.returncode == 0, done.stderr
            await wait_for(
                lambda: not locked(lock_dir / f"{port}.lock"), what="the port's lock released"
            )
        finally:
            await agents.stop()
