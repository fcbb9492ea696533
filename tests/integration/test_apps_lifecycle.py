"""An app's whole life on a real cluster: `paas apps destroy` stops its processes and
leaves nothing of it in etcd or in the agents' log spools; a re-created app of the same
name starts clean; and agents that keep their state directory into a new cluster never
show the old cluster's lines."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.integration


def app_dir(root: Path, word: str) -> Path:
    """An app whose workers print `word` once, then sleep."""
    directory = root / f"app-{word}"
    directory.mkdir()
    (directory / "Procfile").write_text(f'worker: echo "{word} from $DYNO"; exec sleep 1000\n')
    return directory


async def ps(cluster: LocalCluster) -> list[dict[str, Any]]:
    result = await paas(cluster, "ps", "--json", app="shop")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


async def start_shop(cluster: LocalCluster, directory: Path, word: str) -> list[dict[str, Any]]:
    """Create shop, deploy `directory`, run two workers; once both said `word`, their rows."""
    created = await paas(cluster, "apps", "create", "shop")
    assert created.returncode == 0, created.stderr
    deployed = await paas(cluster, "deploy", str(directory), app="shop")
    assert deployed.returncode == 0, deployed.stderr
    scaled = await paas(cluster, "scale", "worker=2", app="shop")
    assert scaled.returncode == 0, scaled.stderr

    async def both_up() -> list[dict[str, Any]] | None:
        rows = await ps(cluster)
        up = Counter(row["type"] for row in rows if row["state"] == "up")
        return rows if up == {"worker": 2} else None

    rows: list[dict[str, Any]] = await wait_for(both_up, timeout=60, what="two workers up")

    async def said() -> bool:
        text = (await paas(cluster, "logs", "-n", "1000", app="shop")).stdout
        return text.count(f"{word} from worker.") == 2

    await wait_for(said, timeout=30, what=f"both workers' '{word}' lines in the log")
    return rows


def spool_holds(state_dir: Path, text: bytes) -> list[Path]:
    """The files under the agents' state directory that contain `text`, but for the
    slug cache (STATE_DIR/NAME/slugs: the app's code, Procfile included, stays cached
    within the cache's budget, as a slug may serve another app)."""
    return [
        path
        for path in state_dir.rglob("*")
        if path.is_file()
        and "slugs" not in path.relative_to(state_dir).parts[1:2]
        and text in path.read_bytes()
    ]


async def test_destroy_stops_everything_and_a_new_app_of_the_name_starts_clean(
    tmp_path: Path,
) -> None:
    async with LocalCluster(
        agents=2, data_dir=tmp_path / "data", node_grace=3.0, stop_grace=2.0
    ) as cluster:
        rows = await start_shop(cluster, app_dir(tmp_path, "first-life"), "first-life")
        pids = [row["pid"] for row in rows]
        assert all(psutil.pid_exists(pid) for pid in pids)

        for words in (["apps", "destroy", "shop"], ["apps", "destroy", "shop", "--confirm", "shp"]):
            refused = await paas(cluster, *words)
            assert refused.returncode != 0, f"paas {' '.join(words)} was not refused"
            assert "confirm" in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert [row["pid"] for row in await ps(cluster)] == pids, "a refusal changed nothing"

        destroyed = await paas(cluster, "apps", "destroy", "shop", "--confirm", "shop")
        assert destroyed.returncode == 0, destroyed.stderr
        await wait_for(
            lambda: not any(psutil.pid_exists(pid) for pid in pids),
            timeout=30,
            what="the destroyed app's processes to end",
        )
        listed = await paas(cluster, "apps", "--json")
        assert "shop" not in [app["name"] for app in listed.json()]
        gone = await paas(cluster, "ps", app="shop")
        assert gone.returncode == 1 and "unknown app" in gone.stderr, gone.stderr
        state_dir = cluster.data_dir / "agents"
        await wait_for(
            lambda: not spool_holds(state_dir, b"first-life"),
            timeout=30,
            what="the agents to delete the destroyed app's spooled lines",
        )

        await start_shop(cluster, app_dir(tmp_path, "second-life"), "second-life")
        logs = (await paas(cluster, "logs", "-n", "1000", app="shop")).stdout
        assert "first-life" not in logs, logs
        assert logs.count("App created") == 1, "the old app's events went with it"
        releases = [line for line in logs.splitlines() if "Release v" in line and "created" in line]
        assert len(releases) == 1 and "Release v1 " in releases[0], releases


async def test_agents_that_keep_their_state_into_a_new_cluster_show_none_of_the_old_one(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with LocalCluster(agents=2, data_dir=data, node_grace=3.0, stop_grace=2.0) as old:
        await start_shop(old, app_dir(tmp_path, "old-cluster"), "old-cluster")
    assert spool_holds(data / "agents", b"old-cluster"), "the old lines were spooled"

    # A new etcd (a new cluster), the same agents' names and state directory.
    shutil.rmtree(data / "etcd")
    (data / "etcd-ports.json").unlink(missing_ok=True)
    async with LocalCluster(agents=2, data_dir=data, node_grace=3.0, stop_grace=2.0) as new:
        await start_shop(new, app_dir(tmp_path, "new-cluster"), "new-cluster")
        logs = await paas(new, "logs", "-n", "1000", app="shop")
        assert logs.returncode == 0, logs.stderr
        assert "old-cluster" not in logs.stdout, logs.stdout
