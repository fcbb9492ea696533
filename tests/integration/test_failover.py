"""Scheduler failover with two replicas: killing the leader restarts nothing, loses no
node, and the other replica takes over the API and the agents' sessions."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, wait_for

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
    result = await paas(cluster, "ps", "--json", app="shop")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


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
