"""The store's app lifecycle on a real etcd: every app has an id of its own, a destroyed
app leaves no key behind, and the cluster has one id that the first leader makes."""

from __future__ import annotations

import pytest

from paas.common.names import InstanceName
from paas.scheduler.store import (
    Assign,
    ConflictError,
    DrainProgress,
    DrainRecord,
    NotLeaderError,
    ReleaseRecord,
    Store,
)
from tests.helpers import keys_of, wait_for

pytestmark = pytest.mark.integration


async def deploy_and_place(store: Store, app: str) -> None:
    record = await store.app(app)
    assert record is not None
    release = ReleaseRecord(
        app=app, version=1, dir="/srv", commands={"web": "serve"}, env={}, created_at=1.0
    )
    await store.add_release(record, release, {"web": 2}, (await store.formation(app))[1])
    await store.apply([Assign(app, InstanceName("web", i), "node-1", 1) for i in (1, 2)])


async def test_a_recreated_app_of_the_same_name_is_another_app(leading_store: Store) -> None:
    first = await leading_store.create_app("shop")
    assert len(first.id) == 32
    await deploy_and_place(leading_store, "shop")
    stored = await leading_store.app("shop")
    assert stored is not None and stored.id == first.id, "a deploy keeps the app's id"

    assert await leading_store.destroy_app(stored) == 2
    second = await leading_store.create_app("shop")
    assert second.id != first.id
    assert (await leading_store.app("shop")) is not None


async def test_destroying_an_app_leaves_no_key_of_it_and_spares_the_others(
    etcd: str, leading_store: Store
) -> None:
    store = leading_store
    for name in ("shop", "shop2"):
        await store.create_app(name)
        await deploy_and_place(store, name)
        drain = DrainRecord(app=name, url="syslog://127.0.0.1:9", token="d.x", created_at=1.0)
        await store.add_drain(drain)
        await store.save_drain_progress(drain, DrainProgress(cursors={}, since=1.0))
    assert len(await keys_of(etcd, "shop")) >= 7

    shop = await store.app("shop")
    assert shop is not None
    assert await store.destroy_app(shop) == 2

    assert await keys_of(etcd, "shop") == []
    assert await store.app("shop") is None
    assert [r.app for r in await store.instances()] == ["shop2", "shop2"]
    assert len(await keys_of(etcd, "shop2")) >= 7, "an app whose name starts the same stays"


async def test_an_app_changed_since_it_was_read_is_not_destroyed(leading_store: Store) -> None:
    stale = await leading_store.create_app("shop")
    stale = await leading_store.app("shop") or stale
    await deploy_and_place(leading_store, "shop")
    with pytest.raises(ConflictError):
        await leading_store.destroy_app(stale)
    assert await leading_store.app("shop") is not None


async def test_the_cluster_id_is_made_once_and_read_by_every_replica(
    etcd: str, leading_store: Store
) -> None:
    made = await leading_store.cluster_id()
    assert len(made) == 32
    follower = Store([etcd])
    try:
        assert await follower.cluster_id() == made, "an existing id is read, not remade"
        with pytest.raises(NotLeaderError):
            await follower.create_app("shop")
    finally:
        await follower.close()


async def test_a_follower_cannot_make_the_cluster_id(etcd: str) -> None:
    follower = Store([etcd])
    try:

        async def answers() -> bool:
            return await follower.apps() == {}

        await wait_for(answers, timeout=30, what="etcd to answer")
        with pytest.raises(NotLeaderError):
            await follower.cluster_id()
    finally:
        await follower.close()


async def test_an_assignment_read_before_a_destroy_cannot_bring_the_app_back(
    etcd: str, leading_store: Store
) -> None:
    read = await leading_store.create_app("shop")
    read = await leading_store.app("shop") or read
    assert read.create_revision > 0
    late = Assign("shop", InstanceName("web", 1), "node-1", 1, read.create_revision)
    await leading_store.destroy_app(read)
    with pytest.raises(ConflictError):
        await leading_store.apply([late])  # a reconcile pass that read the world before
    assert await keys_of(etcd, "shop") == []

    await leading_store.create_app("shop")  # another app of the same name
    with pytest.raises(ConflictError):
        await leading_store.apply([late])
    assert [r.app for r in await leading_store.instances()] == []
    current = await leading_store.app("shop")
    assert current is not None and current.create_revision != read.create_revision
    await leading_store.apply(
        [Assign("shop", InstanceName("web", 1), "node-1", 1, current.create_revision)]
    )
    assert [str(r.name) for r in await leading_store.instances()] == ["web.1"]
