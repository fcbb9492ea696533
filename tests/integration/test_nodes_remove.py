"""`paas nodes remove`: a node that is gone for good is forgotten and its work placed
elsewhere; a connected, unknown or misnamed node is refused with one line and
nothing changes."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from paas.cli.localcluster import LocalCluster
from paas.scheduler.store import PREFIX
from tests.helpers import etcd_keys, paas, ps_rows, wait_for

pytestmark = pytest.mark.integration


async def node_keys(cluster: LocalCluster) -> dict[str, bytes]:
    keys = await etcd_keys(cluster.etcd_endpoint)
    return {key: value for key, value in keys.items() if key.startswith(f"{PREFIX}nodes/")}


async def nodes(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    listed = (await paas(cluster, "nodes", "--json")).json()
    return {node["name"]: node for node in listed}


async def test_a_lost_node_is_forgotten_and_a_connected_one_is_refused(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    (tmp_path / "Procfile").write_text("worker: exec sleep 1000\n")
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    assert (await paas(cluster, "deploy", str(tmp_path), app="shop")).returncode == 0
    assert (await paas(cluster, "scale", "worker=3", app="shop")).returncode == 0

    async def spread() -> list[dict[str, Any]] | None:
        rows = await ps_rows(cluster, "shop")
        up = [row for row in rows if row["state"] == "up"]
        return up if len(up) == 3 and len({row["node"] for row in up}) == 3 else None

    await wait_for(spread, timeout=60, what="worker=3 up, one per node")
    before = await node_keys(cluster)

    unknown = await paas(cluster, "nodes", "remove", "node-9")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().count("\n") == 0 and "unknown node 'node-9'" in unknown.stderr
    misnamed = await paas(cluster, "nodes", "remove", "no/such")
    assert misnamed.returncode != 0 and "no/such" in misnamed.stderr
    connected = await paas(cluster, "nodes", "remove", "node-1")
    assert connected.returncode == 1
    assert "node-1 is ready, not lost" in connected.stderr
    assert connected.stderr.strip().count("\n") == 0
    assert await node_keys(cluster) == before
    assert set(await nodes(cluster)) == {"node-1", "node-2", "node-3"}

    cluster.agent_process("node-1").send_signal(signal.SIGKILL)

    async def lost() -> bool:
        return bool((await nodes(cluster))["node-1"]["state"] == "lost")

    await wait_for(lost, timeout=30, what="node-1 lost")
    removed = await paas(cluster, "nodes", "remove", "node-1")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("Removed node node-1")
    assert set(await nodes(cluster)) == {"node-2", "node-3"}
    assert f"{PREFIX}nodes/node-1" not in await node_keys(cluster)

    async def elsewhere() -> bool:
        rows = await ps_rows(cluster, "shop")
        up = [row for row in rows if row["state"] == "up"]
        return len(rows) == 3 and len(up) == 3 and all(row["node"] != "node-1" for row in up)

    await wait_for(elsewhere, timeout=60, what="worker=3 up on node-2 and node-3")

    # The host comes back after all: its agent joins afresh and takes work again.
    await cluster.restart_agent("node-1")
    assert (await nodes(cluster))["node-1"]["state"] == "ready"
