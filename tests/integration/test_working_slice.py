"""The first whole path: a real etcd, a real scheduler, 3 real agents on 127.0.0.2-4,
the real CLI, real processes. Deploy an app with two process types and scale it."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

# web answers HTTP on $PORT and logs each request; worker leaves two grandchildren
# (the sleeps) under its shell, so that stopping it must take the whole group.
PROCFILE = """\
# an app with two process types
web: exec python3 -u -m http.server $PORT --bind 0.0.0.0
worker: echo "worker $DYNO up on $PAAS_APP"; sleep 1000 & sleep 1001 & wait
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "Procfile").write_text(PROCFILE)
    return tmp_path


async def ps(cluster: LocalCluster, app: str) -> list[dict[str, Any]]:
    return await ps_rows(cluster, app)


async def wait_up(
    cluster: LocalCluster, app: str, expected: dict[str, int]
) -> list[dict[str, Any]]:
    """Wait until exactly `expected` instances per type are up, and return ps."""
    rows: list[dict[str, Any]] = []

    async def formation_up() -> bool:
        nonlocal rows
        rows = await ps(cluster, app)
        up = Counter(row["type"] for row in rows if row["state"] == "up")
        total = Counter(row["type"] for row in rows)
        want = {t: n for t, n in expected.items() if n}
        return dict(up) == want and dict(total) == want

    await wait_for(formation_up, timeout=60, what=f"formation {expected} up")
    return rows


def live_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that are still alive."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def deploy_and_scale(cluster: LocalCluster, app_dir: Path, *formation: str) -> None:
    created = await paas(cluster, "apps", "create", "shop")
    assert created.returncode == 0, created.stderr
    deployed = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert deployed.returncode == 0, deployed.stderr
    scaled = await paas(cluster, "scale", *formation, app="shop")
    assert scaled.returncode == 0, scaled.stderr


async def test_scale_brings_up_the_formation_spread_evenly(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deploy_and_scale(cluster, app_dir, "web=3", "worker=2")
    rows = await wait_up(cluster, "shop", {"web": 3, "worker": 2})

    web_nodes = Counter(row["node"] for row in rows if row["type"] == "web")
    worker_nodes = Counter(row["node"] for row in rows if row["type"] == "worker")
    assert sorted(web_nodes.values()) == [1, 1, 1]
    assert sorted(worker_nodes.values()) == [1, 1]
    assert {row["name"] for row in rows} == {"web.1", "web.2", "web.3", "worker.1", "worker.2"}
    assert all(row["pid"] > 0 and psutil.pid_exists(row["pid"]) for row in rows)

    nodes = json.loads((await paas(cluster, "nodes", "--json")).stdout)
    assert sorted(n["name"] for n in nodes) == ["node-1", "node-2", "node-3"]
    assert all(n["state"] == "ready" for n in nodes)
    assert sum(n["instances"] for n in nodes) == 5


async def test_web_answers_http_on_its_port_and_logs_show_it(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deploy_and_scale(cluster, app_dir, "web=1", "worker=1")
    rows = await wait_up(cluster, "shop", {"web": 1, "worker": 1})
    web = next(row for row in rows if row["type"] == "web")

    def get() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{web['port']}/", timeout=10) as response:
            status: int = response.status
            return status

    assert await asyncio.to_thread(get) == 200

    async def request_logged() -> bool:
        logs = await paas(cluster, "logs", "-n", "200", "-p", "web", app="shop")
        return logs.returncode == 0 and '"GET / HTTP/1.1" 200' in logs.stdout

    await wait_for(request_logged, timeout=30, what="the web request in `paas logs -p web`")

    async def worker_logged() -> bool:
        logs = await paas(cluster, "logs", "-n", "200", "-p", "worker.1", app="shop")
        return "app[worker.1]: worker worker.1 up on shop" in logs.stdout

    await wait_for(worker_logged, timeout=30, what="the worker's first line in `paas logs`")
    logs = await paas(cluster, "logs", app="shop")
    assert "paas[scheduler]: Scaled to web@1 worker@1" in logs.stdout


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["web=abc"], "invalid count 'abc'"),
        (["web=-1"], "invalid count '-1'"),
        (["wbe=2"], "unknown process type 'wbe'"),
        (["web=100000"], "over the maximum"),
        (["web=2", "worker=x"], "invalid count 'x'"),
    ],
)
async def test_a_refused_scale_changes_nothing(
    cluster: LocalCluster, app_dir: Path, words: list[str], message: str
) -> None:
    await deploy_and_scale(cluster, app_dir, "web=1", "worker=1")
    before = await wait_up(cluster, "shop", {"web": 1, "worker": 1})

    refused = await paas(cluster, "scale", *words, app="shop")
    assert refused.returncode == 1
    assert message in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert refused.stdout == ""

    after = await ps(cluster, "shop")
    assert [(r["name"], r["pid"]) for r in after] == [(r["name"], r["pid"]) for r in before]


async def test_unknown_app_and_bad_procfile_are_refused(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    unknown = await paas(cluster, "scale", "web=1", app="nosuchapp")
    assert unknown.returncode == 1
    assert "unknown app 'nosuchapp'" in unknown.stderr

    (tmp_path / "Procfile").write_text("web: ok\nthis line is wrong\n")
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0
    bad = await paas(cluster, "deploy", str(tmp_path), app="shop")
    assert bad.returncode == 1
    assert "Procfile:2" in bad.stderr
    scaled = await paas(cluster, "scale", "web=1", app="shop")
    assert scaled.returncode == 1, "no release was created, so there is nothing to scale"


async def test_killed_agent_takes_its_grandchildren_with_it_and_work_moves(
    cluster: LocalCluster, app_dir: Path
) -> None:
    await deploy_and_scale(cluster, app_dir, "web=3", "worker=2")
    rows = await wait_up(cluster, "shop", {"web": 3, "worker": 2})
    victim = next(row["node"] for row in rows if row["type"] == "worker")
    doomed = [p for row in rows if row["node"] == victim for p in live_tree(row["pid"])]
    assert len(doomed) >= 4, "a web and a worker with its shell and two sleeps"

    cluster.agent_process(victim).send_signal(signal.SIGKILL)

    await wait_for(
        lambda: not alive(doomed), timeout=30, what="the killed agent's processes to die"
    )

    async def moved() -> bool:
        current = await ps(cluster, "shop")
        up = [r for r in current if r["state"] == "up"]
        return len(up) == 5 and len(current) == 5 and all(r["node"] != victim for r in up)

    # node grace of the test cluster, plus time to start the replacements
    await wait_for(moved, timeout=60, what="the formation back on the other nodes")
    nodes = {n["name"]: n for n in json.loads((await paas(cluster, "nodes", "--json")).stdout)}
    assert nodes[victim]["state"] == "lost"


async def test_scaling_to_zero_leaves_no_process(cluster: LocalCluster, app_dir: Path) -> None:
    await deploy_and_scale(cluster, app_dir, "web=2", "worker=2")
    rows = await wait_up(cluster, "shop", {"web": 2, "worker": 2})
    processes = [p for row in rows for p in live_tree(row["pid"])]
    assert len(processes) >= 8

    scaled = await paas(cluster, "scale", "web=0", "worker=0", app="shop")
    assert scaled.returncode == 0, scaled.stderr

    await wait_for(lambda: not alive(processes), timeout=30, what="every process to stop")

    async def none_listed() -> bool:
        return await ps(cluster, "shop") == []

    await wait_for(none_listed, timeout=30, what="`paas ps` to be empty")
