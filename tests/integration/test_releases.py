"""Numbered releases and rollback (issue 13): `paas rollback [vN]` makes a new release
with vN's code and config (not its formation) and the old code runs again; `paas
releases` and `releases info` show what each release is and who made it; a version
never made, no longer kept (--keep-releases) or without code is refused, changing
nothing. Real etcd, scheduler, agents and processes, TLS on; --no-wait, since
nothing moves a release out of "rolling" until rollouts land.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

KEEP = 4


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two agents, and a scheduler that keeps KEEP releases per app."""
    async with LocalCluster(
        agents=2,
        node_grace=3.0,
        stop_grace=2.0,
        log_to=tmp_path / "logs",
        scheduler_args=["--keep-releases", str(KEEP)],
    ) as started:
        yield started


def tree(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "Procfile").write_text(
        f'worker: echo "code={name} GREETING=[$GREETING]"; exec sleep 3600\n'
    )
    # Rollouts are not what is tested here: a new copy replaces its old one at once.
    (directory / "paas.toml").write_text("[types.worker]\nmin_healthy = 0\n")
    return directory


async def ok(cluster: LocalCluster, *args: str, app: str = "shop") -> str:
    result = await paas(cluster, *args, app=app)
    assert result.returncode == 0, f"paas {' '.join(args)}: {result.stderr}"
    return result.stdout


async def releases(cluster: LocalCluster, app: str = "shop") -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(
        await ok(cluster, "releases", "-n", "1000", "--json", app=app)
    )
    return listed


async def runs(cluster: LocalCluster, version: int, says: str) -> None:
    """Wait until every worker runs release `version`, is up, and the log's last line of
    a worker's start is `says`."""

    async def there() -> bool:
        rows = [row for row in await ps_rows(cluster, "shop") if row["type"] == "worker"]
        if not (rows and all(r["release"] == version and r["state"] == "up" for r in rows)):
            return False
        lines = (await ok(cluster, "logs", "-n", "10000", "-p", "worker")).splitlines()
        said = [line.split(": ", 1)[1] for line in lines if ": code=" in line]
        return bool(said) and said[-1] == says

    await wait_for(there, timeout=90, what=f"workers on v{version} saying {says}")


async def refused(cluster: LocalCluster, *args: str, problem: str, app: str = "shop") -> None:
    result = await paas(cluster, *args, app=app)
    assert result.returncode == 1, (args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert problem in lines[0], (args, lines[0])


async def test_rollback_restores_code_and_config_and_keeps_the_formation(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    one, two = tree(tmp_path, "one"), tree(tmp_path, "two")
    await ok(cluster, "apps", "create", "shop")
    await ok(cluster, "deploy", str(one))  # v1
    await ok(cluster, "scale", "worker=2")
    await ok(cluster, "config", "set", "GREETING=first", "--no-wait")  # v2
    await ok(cluster, "deploy", str(two))  # v3
    await ok(cluster, "config", "set", "GREETING=second", "--no-wait")  # v4
    await runs(cluster, 4, "code=two GREETING=[second]")
    slug_of_one = (await releases(cluster))[-1]["slug"]

    said = await ok(cluster, "rollback", "--no-wait")  # the one before: v3
    assert said.strip() == "Rollback to v3 of shop: v5"
    await runs(cluster, 5, "code=two GREETING=[first]")

    await ok(cluster, "rollback", "v2", "--no-wait")
    await runs(cluster, 6, "code=one GREETING=[first]")
    rows = [row for row in await ps_rows(cluster, "shop") if row["type"] == "worker"]
    assert len(rows) == 2, "a rollback keeps the app's formation"

    listed = await releases(cluster)
    newest = listed[0]
    assert newest["version"] == 6 and newest["description"] == "Rollback to v2"
    assert newest["by"] == "admin" and newest["previous"] == 5
    assert newest["slug"] == slug_of_one and listed[1]["slug"] != slug_of_one
    assert newest["commands"] == {"worker": 'echo "code=one GREETING=[$GREETING]"; exec sleep 3600'}

    table = (await ok(cluster, "releases", "-n", "2")).splitlines()
    assert table[0].split() == ["version", "description", "by", "created", "(UTC)", "status"]
    body = [line.split() for line in table[1:] if line.strip() and not line.startswith("─")]
    assert [row[0] for row in body] == ["v6", "v5"]
    assert body[0][1:5] == ["Rollback", "to", "v2", "admin"]

    info = (await ok(cluster, "releases", "info", "v6")).splitlines()
    assert "version:     v6" in info and "description: Rollback to v2" in info
    assert "by:          admin" in info and "previous:    v5" in info
    assert any(line.startswith("code:        slug ") for line in info), info
    assert '  worker: echo "code=one GREETING=[$GREETING]"; exec sleep 3600' in info
    assert info[-1] == "config vars: GREETING", "keys, not values"


async def test_rollback_and_releases_info_refuse_what_is_not_there_changing_nothing(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    one = tree(tmp_path, "one")
    await ok(cluster, "apps", "create", "bare")
    await ok(cluster, "config", "set", "A=1", "--no-wait", app="bare")
    await ok(cluster, "config", "set", "A=2", "--no-wait", app="bare")
    await refused(cluster, "rollback", "--no-wait", problem="v1 of bare has no code", app="bare")

    await ok(cluster, "apps", "create", "shop")
    await refused(cluster, "rollback", problem="shop has no releases yet")
    await ok(cluster, "deploy", str(one))  # v1
    await refused(cluster, "rollback", problem="shop has only v1")
    for n in range(2, KEEP + 3):  # v2 .. v6: v1 and v2 are past --keep-releases
        await ok(cluster, "config", "set", f"N={n}", "--no-wait")

    async def collected() -> bool:
        return [r["version"] for r in await releases(cluster)] == [6, 5, 4, 3]

    await wait_for(collected, timeout=60, what="the releases past --keep-releases to go")
    await refused(
        cluster,
        "rollback",
        "v1",
        problem=f"release v1 of shop is no longer kept (the scheduler keeps the last {KEEP})",
    )
    await refused(cluster, "rollback", "v99", problem="shop has no release v99")
    await refused(cluster, "rollback", "vx", problem="invalid release version 'vx'")
    await refused(cluster, "rollback", "v0", problem="invalid release version 'v0'")
    await refused(cluster, "releases", "info", "v99", problem="shop has no release v99")
    await refused(cluster, "releases", "info", "v1", problem="release v1 of shop is no longer kept")
    await refused(cluster, "releases", "info", "five", problem="invalid release version 'five'")
    assert [r["version"] for r in await releases(cluster)] == [6, 5, 4, 3], "nothing made"
    assert [r["version"] for r in await releases(cluster, "bare")] == [2, 1]
