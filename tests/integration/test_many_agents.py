"""Placement with 200 agents: simulated ones (tests/simagents.py: real TLS sessions
with the real scheduler, no processes) take 1,000 instances, and when 50 of them die
at once their work moves to the others, each instance on exactly one node."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, wait_for
from tests.simagents import SimFleet

pytestmark = pytest.mark.integration

AGENTS = 200
CAPACITY = 10
FORMATION = {"web": 600, "worker": 400}
TOTAL = sum(FORMATION.values())


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(
        agents=1, node_grace=3.0, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as started:
        yield started


async def test_200_agents_converge_and_survive_the_loss_of_50(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    # The one real agent takes nothing: the simulated ones hold the whole formation.
    assert (await paas(cluster, "nodes", "drain", "node-1")).returncode == 0
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "Procfile").write_text("web: exec sleep 100000\nworker: exec sleep 100000\n")
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    deployed = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert deployed.returncode == 0, deployed.stderr

    names = [f"sim-{i:03d}" for i in range(AGENTS)]
    fleet = SimFleet(
        cluster.scheduler_address, names, credentials=cluster.node_credentials, capacity=CAPACITY
    )
    try:
        async with asyncio.timeout(120):  # every session welcomed
            await fleet.start()
        scaled = await paas(
            cluster, "scale", *(f"{t}={n}" for t, n in FORMATION.items()), app="shop"
        )
        assert scaled.returncode == 0, scaled.stderr

        async with cluster.client() as client:

            async def converged(gone: frozenset[str]) -> Counter[str] | None:
                views = await client.list_instances("shop")
                up = [v for v in views if v.state == 3]  # UP
                held = sum(len(a.assigned) for a in fleet.agents.values())
                if len(views) != TOTAL or len(up) != TOTAL or held != TOTAL:
                    return None
                assert not {v.node for v in views} & gone
                return Counter(v.node for v in views)

            per_node = await wait_for(
                lambda: converged(frozenset()), timeout=120, what="1,000 instances up"
            )
            # Spread: 1,000 over 200 nodes is 5 each, and no node is over its capacity.
            assert max(per_node.values()) <= CAPACITY
            assert max(per_node.values()) - min(per_node.values()) <= 1, per_node
            assert set(per_node) <= set(names)

            dead = frozenset(names[::4])  # 50 of them
            await fleet.kill(dead)
            per_node = await wait_for(
                lambda: converged(dead), timeout=120, what="the dead nodes' work moved"
            )
            assert max(per_node.values()) <= CAPACITY
            # Each instance on exactly one live node, as the fleet itself was told.
            running = fleet.running()
            assert len(running) == TOTAL
            lost = [n for n in (await client.list_nodes()) if n.state == 3]  # NODE_LOST
            assert {n.name for n in lost} == dead
    finally:
        await fleet.close()
