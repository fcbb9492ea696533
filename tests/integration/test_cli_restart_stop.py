"""`paas restart` and `paas stop` against a real cluster: real processes get new pids,
come back up, and the old ones are gone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.integration

PROCFILE = """\
web: exec python3 -u -m http.server $PORT --bind 0.0.0.0
worker: echo "worker $DYNO up"; exec sleep 1000
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Procfile").write_text(PROCFILE)
    return tmp_path / "app"


async def ps(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    result = await paas(cluster, "ps", "--json", app="shop")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


async def wait_up(cluster: LocalCluster, expected: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Exactly `expected` instances per type, all up; ps by name."""
    rows: dict[str, dict[str, Any]] = {}

    async def all_up() -> bool:
        nonlocal rows
        rows = await ps(cluster)
        types = Counter(row["type"] for row in rows.values())
        return dict(types) == expected and all(r["state"] == "up" for r in rows.values())

    await wait_for(all_up, timeout=60, what=f"{expected} all up")
    return rows


async def start_shop(cluster: LocalCluster, app_dir: Path) -> dict[str, dict[str, Any]]:
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    deployed = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert deployed.returncode == 0, deployed.stderr
    scaled = await paas(cluster, "scale", "web=3", "worker=1", app="shop")
    assert scaled.returncode == 0, scaled.stderr
    return await wait_up(cluster, {"web": 3, "worker": 1})


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_restarting_one_instance_gives_it_a_new_process_and_leaves_the_rest(
    cluster: LocalCluster, app_dir: Path
) -> None:
    before = await start_shop(cluster, app_dir)

    result = await paas(cluster, "restart", "web.1", app="shop")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Restarting web.1 of shop\n"

    async def web1_new_and_up() -> bool:
        row = (await ps(cluster))["web.1"]
        return row["state"] == "up" and row["pid"] not in (0, before["web.1"]["pid"])

    await wait_for(web1_new_and_up, timeout=60, what="web.1 up under a new pid")
    await wait_for(lambda: gone(before["web.1"]["pid"]), timeout=30, what="the old web.1 gone")
    after = await wait_up(cluster, {"web": 3, "worker": 1})
    for name in ("web.2", "web.3", "worker.1"):
        assert after[name]["pid"] == before[name]["pid"], f"{name} was not to restart"


async def test_restarting_a_type_restarts_each_of_its_instances(
    cluster: LocalCluster, app_dir: Path
) -> None:
    before = await start_shop(cluster, app_dir)
    old_web = {name: row["pid"] for name, row in before.items() if row["type"] == "web"}

    result = await paas(cluster, "restart", "web", app="shop")
    assert result.returncode == 0, result.stderr
    assert "Restarting 3 instances of shop one at a time" in result.stdout
    assert "web.1, web.2, web.3" in result.stdout

    async def all_web_new_and_up() -> bool:
        rows = await ps(cluster)
        web = {name: row for name, row in rows.items() if row["type"] == "web"}
        return (
            web.keys() == old_web.keys()
            and all(row["state"] == "up" for row in web.values())
            and all(row["pid"] not in (0, old_web[name]) for name, row in web.items())
        )

    # Rolling: each waits for the one before to be up, so allow for three starts.
    await wait_for(all_web_new_and_up, timeout=90, what="every web up under a new pid")
    await wait_for(
        lambda: all(gone(pid) for pid in old_web.values()), timeout=30, what="old webs gone"
    )
    after = await ps(cluster)
    assert after["worker.1"]["pid"] == before["worker.1"]["pid"], "worker was not to restart"


async def test_a_stopped_instance_is_replaced_by_the_formation(
    cluster: LocalCluster, app_dir: Path
) -> None:
    before = await start_shop(cluster, app_dir)
    old_pid = before["worker.1"]["pid"]
    old_process = psutil.Process(old_pid)

    result = await paas(cluster, "stop", "worker.1", app="shop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Stopping worker.1 of shop;")

    await wait_for(lambda: not old_process.is_running() or gone(old_pid), timeout=30,
                   what="the old worker.1 process gone")  # fmt: skip

    async def replaced() -> bool:
        row = (await ps(cluster)).get("worker.1")
        return row is not None and row["state"] == "up" and row["pid"] not in (0, old_pid)

    await wait_for(replaced, timeout=60, what="a new worker.1 up")
    after = await wait_up(cluster, {"web": 3, "worker": 1})
    assert psutil.pid_exists(after["worker.1"]["pid"])


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["stop", "nosuch.9"], "error: no instance nosuch.9 in shop"),
        (["stop", "web"], "error: invalid instance name 'web'"),
        (["restart", "nosuch"], "error: no instance of shop matches 'nosuch'"),
        (["restart", "web.9"], "error: no instance of shop matches 'web.9'"),
    ],
)
async def test_stopping_or_restarting_what_is_not_there_is_refused(
    cluster: LocalCluster, app_dir: Path, words: list[str], message: str
) -> None:
    before = await start_shop(cluster, app_dir)

    refused = await paas(cluster, *words, app="shop")
    assert refused.returncode == 1
    assert refused.stderr.startswith(message), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stdout == ""
    after = await ps(cluster)
    assert {n: r["pid"] for n, r in after.items()} == {n: r["pid"] for n, r in before.items()}
