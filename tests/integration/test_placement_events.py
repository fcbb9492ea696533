"""What the app's log says when instances find no node, on a real cluster: the reason
as it is (no eligible node), not always "every node is full"."""

from __future__ import annotations

from pathlib import Path

import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.integration

PROCFILE = "worker: exec sleep 100000\n"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Procfile").write_text(PROCFILE)
    return tmp_path / "app"


async def test_a_scale_up_with_every_node_draining_says_no_node_is_eligible(
    cluster: LocalCluster, app_dir: Path
) -> None:
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    deployed = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert deployed.returncode == 0, deployed.stderr
    for node in ("node-1", "node-2", "node-3"):
        drained = await paas(cluster, "nodes", "drain", node)
        assert drained.returncode == 0, drained.stderr

    # Nothing else to do in this plan: the event must come all the same.
    scaled = await paas(cluster, "scale", "worker=2", app="shop")
    assert scaled.returncode == 0, scaled.stderr

    said = "No node for 2 worker instance(s): every node is lost or draining (3 draining)"

    async def logged() -> str | None:
        result = await paas(cluster, "logs", "-n", "200", app="shop")
        return result.stdout if said in result.stdout else None

    out = await wait_for(logged, timeout=30, what="the no-eligible-node event")
    assert "full" not in out
    assert (await paas(cluster, "ps", "--json", app="shop")).json() == []
