"""The scheduler's etcd client against a real 3-member etcd cluster: losing a member,
even the one it talks to, loses no read and no write."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from paas.cli.localcluster import etcd_binary
from paas.common.ports import free_port
from paas.scheduler.store import Store
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def members(tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    ports = [(free_port(), free_port()) for _ in range(3)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for i, (client, peer) in enumerate(ports):
            argv = [
                etcd_binary(),
                "--name", f"m{i}",
                "--data-dir", str(tmp_path / f"m{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--unsafe-no-fsync",
            ]  # fmt: skip
            log = (tmp_path / f"m{i}.log").open("wb")
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            started.append((f"127.0.0.1:{client}", process))
        yield started
    finally:
        for _, process in started:
            process.kill()
            process.wait()


async def test_the_store_survives_losing_the_member_it_talks_to(
    members: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    store = Store([endpoint for endpoint, _ in members], timeout=3)
    try:

        async def healthy() -> bool:
            return await store.apps() == {}

        await wait_for(healthy, timeout=30, what="the etcd cluster to serve")
        store.set_leadership(0)
        # Writes need leadership; take it the way the election does, by hand here.
        await store.client.put(b"/paas/leader", b'{"id": "t", "address": "t"}')
        found = await store.client.get(b"/paas/leader")
        store.set_leadership(found.create_revision)
        await store.create_app("before")

        members[0][1].kill()  # the first endpoint: the one the channel picked
        members[0][1].wait()

        async def writes() -> bool:
            await store.create_app("after")
            return True

        await wait_for(writes, timeout=30, what="a write after losing a member")
        assert set(await store.apps()) == {"before", "after"}
    finally:
        await store.close()
