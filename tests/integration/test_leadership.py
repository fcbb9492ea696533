"""Leader election and the leadership guard, against a real etcd: a replica that lost
the election key can no longer write, whatever it still believes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from paas.common.names import InstanceName
from paas.scheduler.leader import Leadership
from paas.scheduler.store import LEADER_KEY, Assign, NotLeaderError, Store
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def stores(etcd: str) -> AsyncIterator[tuple[Store, Store]]:
    a, b = Store([etcd]), Store([etcd])
    yield a, b
    await a.close()
    await b.close()


async def campaign(store: Store, name: str) -> tuple[Leadership, asyncio.Task[None]]:
    leadership = Leadership(store, name, f"{name}:7070", ttl=2, on_change=lambda _: None)
    task = asyncio.create_task(leadership.run())
    return leadership, task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_one_replica_leads_and_the_other_knows_where(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first, first_task = await campaign(a, "a")
    await wait_for(lambda: first.is_leader, timeout=20, what="a to lead")
    second, second_task = await campaign(b, "b")
    await wait_for(lambda: second.leader_address == "a:7070", timeout=20, what="b to see a")
    assert not second.is_leader
    try:
        with pytest.raises(NotLeaderError):
            await b.create_app("shop")
        await a.create_app("shop")
        assert (await b.app("shop")) is not None, "followers read what the leader wrote"
    finally:
        await stop(first_task)
        await stop(second_task)


async def test_a_deposed_leader_cannot_write(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first, first_task = await campaign(a, "a")
    await wait_for(lambda: first.is_leader, timeout=20, what="a to lead")
    # Freeze a's view (as a paused process would keep it) and take the key away.
    stale_guard = a._leader_revision
    await stop(first_task)
    a.set_leadership(stale_guard)
    second, second_task = await campaign(b, "b")
    try:
        await wait_for(lambda: second.is_leader, timeout=20, what="b to take over")
        await b.create_app("shop")  # an Assign lands only while its app exists
        with pytest.raises(NotLeaderError):
            await a.apply([Assign("shop", InstanceName("web", 1), "node-1", 1)])
        assert await b.instances() == [], "the deposed leader's write did not land"
        await b.apply([Assign("shop", InstanceName("web", 1), "node-1", 1)])
        assert [str(i.name) for i in await b.instances()] == ["web.1"]
    finally:
        await stop(second_task)


async def test_leadership_passes_on_when_the_leader_stops(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first, first_task = await campaign(a, "a")
    await wait_for(lambda: first.is_leader, timeout=20, what="a to lead")
    second, second_task = await campaign(b, "b")
    try:
        await stop(first_task)  # a clean stop revokes the lease
        await wait_for(lambda: second.is_leader, timeout=20, what="b to lead after a stopped")
        found = await b.client.get(LEADER_KEY.encode())
        assert found is not None and b"b:7070" in found.value
    finally:
        await stop(second_task)
