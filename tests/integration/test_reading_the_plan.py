"""Reading the plan on a real cluster: `paas scale --plan` changes nothing and says
what would happen, `paas ps` shows what fits nowhere and why, `paas why` counts the
nodes each filter rules out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import etcd_keys, paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

PROCFILE = "worker: exec sleep 100000\nweb: exec sleep 100000\n"
PAAS_TOML = """
[types.worker]
constraints = ["zone=eu-1"]
check = "none"

[types.web]
check = "none"
"""


@pytest.fixture
async def labelled(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Three agents: node-1 and node-2 in zone eu-1 (capacity 2 each), node-3 in us-1."""
    agent_args = {
        "node-1": ["--label", "zone=eu-1", "--capacity", "2"],
        "node-2": ["--label", "zone=eu-1", "--capacity", "2"],
        "node-3": ["--label", "zone=us-1", "--capacity", "4"],
    }
    async with LocalCluster(
        agents=3, node_grace=3.0, stop_grace=2.0, log_to=tmp_path / "logs", agent_args=agent_args
    ) as started:
        yield started


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text(PROCFILE)
    (app / "paas.toml").write_text(PAAS_TOML)
    return app


async def test_scale_plan_changes_nothing_and_ps_and_why_tell_what_fits_nowhere(
    labelled: LocalCluster, app_dir: Path
) -> None:
    cluster = labelled
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    deployed = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert deployed.returncode == 0, deployed.stderr
    scaled = await paas(cluster, "scale", "web=0", "worker=3", app="shop")
    assert scaled.returncode == 0, scaled.stderr

    async def three_up() -> list[str] | None:
        rows = await ps_rows(cluster, "shop")
        nodes = sorted(r["node"] for r in rows if r["state"] == "up")
        return nodes if len(nodes) == 3 else None

    nodes = await wait_for(three_up, timeout=60, what="3 workers up")
    assert set(nodes) <= {"node-1", "node-2"}  # the constraint holds
    keys_before = await etcd_keys(cluster.etcd_endpoint)

    # Two more workers: one fits (eu-1 has room for 4 in all), one fits nowhere.
    planned = await paas(cluster, "scale", "--plan", "worker+2", app="shop")
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    assert lines[0] == "Plan for shop: worker=5 (nothing changed):", planned.stdout
    placed = [line.split() for line in lines if line.strip().startswith("place")]
    assert len(placed) == 1 and placed[0][1] == "worker.4", planned.stdout
    assert placed[0][3] in {"node-1", "node-2"}
    assert any(
        "unplaced 1 worker:" in line and "meets its placement rules" not in line for line in lines
    ), planned.stdout

    # Scaling a plan down stops the highest of the node holding the most.
    down = await paas(cluster, "scale", "--plan", "worker=1", app="shop")
    assert down.returncode == 0, down.stderr
    assert sum(1 for line in down.stdout.splitlines() if line.strip().startswith("stop")) == 2

    # Nothing was written: the formation, the assignments, every key are as before.
    assert await etcd_keys(cluster.etcd_endpoint) == keys_before
    assert sorted(r["name"] for r in await ps_rows(cluster, "shop")) == [
        "worker.1",
        "worker.2",
        "worker.3",
    ]

    scaled = await paas(cluster, "scale", "worker=5", app="shop")
    assert scaled.returncode == 0, scaled.stderr

    async def unplaced_row() -> str | None:
        shown = await paas(cluster, "ps", app="shop")
        for line in shown.stdout.splitlines():
            if line.startswith("worker.5") and "unplaced:" in line:
                return line
        return None

    row = await wait_for(unplaced_row, timeout=60, what="worker.5 shown as unplaced")
    assert "full" in row

    why = await paas(cluster, "why", "worker.5", app="shop")
    assert why.returncode == 0, why.stderr
    said = why.stdout.splitlines()
    assert said[0] == "worker.5 is not placed: no node is left after the filters (3 nodes)"
    assert [re.split(r"\s{2,}", line.strip()) for line in said[1:]] == [
        ["constraint zone=eu-1", "1 node"],
        ["full (capacity)", "2 nodes"],
        ["left", "0 of 3"],
    ], said

    placed_why = await paas(cluster, "why", "worker.1", app="shop")
    assert placed_why.returncode == 0, placed_why.stderr
    assert placed_why.stdout.startswith("worker.1 runs on node-"), placed_why.stdout


async def test_why_refuses_what_the_formation_does_not_ask_for(
    labelled: LocalCluster, app_dir: Path
) -> None:
    cluster = labelled
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    assert (await paas(cluster, "deploy", str(app_dir), app="shop")).returncode == 0
    for argv, said in [
        (["why", "worker.9"], "is not one of them"),
        (["why", "db.1"], "no process type 'db'"),
        (["why", "worker"], "name one instance"),
        (["why", "worker.0"], "worker.0"),
    ]:
        result = await paas(cluster, *argv, app="shop")
        assert result.returncode == 1, (argv, result.stdout)
        assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            argv,
            result.stderr,
        )


async def test_a_deploy_whose_spread_and_distinct_hosts_cannot_both_hold_is_refused(
    labelled: LocalCluster, tmp_path: Path
) -> None:
    cluster = labelled
    app = tmp_path / "spread"
    app.mkdir()
    (app / "Procfile").write_text("worker: exec sleep 100000\n")
    (app / "paas.toml").write_text('[types.worker]\ncheck = "none"\n')
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    assert (await paas(cluster, "deploy", str(app), app="shop")).returncode == 0
    assert (await paas(cluster, "scale", "worker=4", app="shop")).returncode == 0

    # Two zones, 4 workers: 2 per zone, one per node; us-1 has only node-3.
    (app / "paas.toml").write_text(
        '[types.worker]\ncheck = "none"\nspread = "zone"\ndistinct_hosts = true\n'
    )
    refused = await paas(cluster, "deploy", str(app), app="shop")
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.strip().splitlines() == [
        "error: paas.toml [types.worker]: spread = 'zone' and distinct_hosts = true cannot "
        "both hold for 4 instances: 2 value(s) of zone need 2 node(s) each, and zone=us-1 has 1"
    ]
    releases = await paas(cluster, "releases", "--json", app="shop")
    assert [r["version"] for r in releases.json()] == [1]

    # With 3 workers (2 + 1) it holds.
    assert (await paas(cluster, "scale", "worker=3", app="shop")).returncode == 0
    deployed = await paas(cluster, "deploy", str(app), app="shop")
    assert deployed.returncode == 0, deployed.stderr
