"""Code travels in a slug (issue 10): `paas deploy DIR` packs and uploads DIR, every
agent runs the instances in its own unpacked copy, so deleting DIR afterwards changes
nothing that runs; an unchanged tree is not uploaded twice.
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from paas.cli.localcluster import LocalCluster
from tests.helpers import paas, ps_rows, wait_for

pytestmark = pytest.mark.integration

MESSAGE = "served from the slug, not from DIR\n"
PROCFILE = "web: exec python3 -u -m http.server $PORT --bind 0.0.0.0\n"


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        text: str = response.read().decode()
        return text


async def web_rows_up(cluster: LocalCluster, count: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    async def all_up() -> bool:
        nonlocal rows
        rows = [row for row in await ps_rows(cluster, "shop") if row["type"] == "web"]
        return len(rows) == count and all(row["state"] == "up" for row in rows)

    await wait_for(all_up, timeout=90, what=f"{count} web instances up")
    return rows


async def test_every_instance_runs_the_slug_after_dir_is_deleted(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    app_dir = tmp_path / "app"
    (app_dir / "static").mkdir(parents=True)
    (app_dir / "Procfile").write_text(PROCFILE)
    (app_dir / "static" / "message.txt").write_text(MESSAGE)
    (app_dir / "secret.txt").write_text("left out\n")
    (app_dir / ".slugignore").write_text("secret.txt\n")
    assert (await paas(cluster, "apps", "create", "shop")).returncode == 0

    first = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert first.returncode == 0, first.stderr
    packed, uploaded, deployed = first.stdout.splitlines()
    assert packed.startswith("Packed ") and "(3 files)" in packed
    assert uploaded.startswith("Uploaded ")
    digest = packed.split()[4]
    assert deployed == f"Deployed shop v1 from slug {digest} (web)"

    again = await paas(cluster, "deploy", str(app_dir), app="shop")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1:] == [
        f"Already uploaded slug {digest}: nothing to send",
        f"Deployed shop v2 from slug {digest} (web)",
    ], "an unchanged tree uploads no bytes"

    shutil.rmtree(app_dir)
    scaled = await paas(cluster, "scale", "web=3", app="shop")
    assert scaled.returncode == 0, scaled.stderr
    rows = await web_rows_up(cluster, 3)
    assert len({row["node"] for row in rows}) == 3, "one per agent: three unpacked copies"
    for row in rows:
        body = await wait_for_answer(row["port"], "/static/message.txt")
        assert body == MESSAGE, f"{row['name']} on {row['node']}"
        with pytest.raises(urllib.error.HTTPError):
            await asyncio.to_thread(get, row["port"], "/secret.txt")


async def wait_for_answer(port: int, path: str) -> str:
    answer = ""

    async def answered() -> bool:
        nonlocal answer
        try:
            answer = await asyncio.to_thread(get, port, path)
        except (OSError, urllib.error.URLError):
            return False
        return True

    await wait_for(answered, timeout=30, what=f"an answer on port {port}")
    return answer
