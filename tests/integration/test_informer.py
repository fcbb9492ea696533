"""The informer and the batched commit on a real etcd: the cache follows puts and
deletes whole txns at a time, a compacted watch is listed again, and commits are
split into txns etcd accepts, each refused if a key changed since it was read."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from paas.common.names import InstanceName
from paas.scheduler.informer import Informer
from paas.scheduler.store import (
    Assign,
    ConflictError,
    NodeRecord,
    Store,
    StoreError,
    Unassign,
    commit,
    list_world,
    watch_world,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


async def test_the_cache_follows_writes_and_lists_again_after_a_compaction(
    leading_store: Store,
) -> None:
    store = leading_store
    await store.create_app("shop")
    await store.put_node(NodeRecord(name="n1", address="127.0.0.1:1", capacity=3))
    kicks: list[int] = []
    informer = Informer(store, on_change=lambda: kicks.append(1))
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.caught_up(0), 30)
        assert set(informer.listing.apps) == {"shop"}
        assert set(informer.listing.nodes) == {"n1"}

        done = await commit(
            store, [Assign("shop", InstanceName("web", i), "n1", 1) for i in range(1, 4)], 0
        )
        await asyncio.wait_for(informer.caught_up(done.revision), 30)
        instances = informer.listing.instances
        assert sorted(str(name) for _, name in instances) == ["web.1", "web.2", "web.3"]
        assert all(r.incarnation == done.revision for r in instances.values())

        gone = await commit(store, [Unassign("shop", InstanceName("web", 2))], done.revision)
        await asyncio.wait_for(informer.caught_up(gone.revision), 30)
        assert sorted(str(name) for _, name in informer.listing.instances) == ["web.1", "web.3"]
        assert kicks, "every change says: look again"

        # A watch from a compacted revision breaks, and the informer lists anew.
        await store.client.compact(gone.revision)
        with pytest.raises(StoreError, match="compacted"):
            async for _ in watch_world(store, done.revision - 1):
                pass
        listings = informer.listings
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        task = asyncio.create_task(informer.run())
        await wait_for(lambda: informer.listings > listings, what="a new listing")
        assert sorted(str(name) for _, name in informer.listing.instances) == ["web.1", "web.3"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_big_commit_is_split_into_txns_etcd_accepts(leading_store: Store) -> None:
    store = leading_store
    apps = [f"app{a}" for a in range(40)]
    for app in apps:
        await store.create_app(app)
    read = (await list_world(store)).revision
    # 40 apps in each chunk would overflow 128 compares if chunks were cut by keys alone.
    changes = [Assign(app, InstanceName("web", i), "n1", 1) for i in range(1, 11) for app in apps]
    done = await commit(store, changes, read)
    listing = await list_world(store)
    assert len(listing.instances) == 400
    assert done.txns >= 400 // 127 + 1, "at most 128 operations in each txn"
    assert done.revision == listing.revision


async def test_a_key_changed_since_the_read_refuses_the_commit(leading_store: Store) -> None:
    store = leading_store
    await store.create_app("shop")
    read = (await commit(store, [Assign("shop", InstanceName("web", 1), "n1", 1)], 0)).revision
    # Someone else moves web.1 after the plan was made from `read`.
    await commit(store, [Assign("shop", InstanceName("web", 1), "n2", 1)], read)
    with pytest.raises(ConflictError):
        await commit(
            store,
            [
                Assign("shop", InstanceName("web", 2), "n1", 1),
                Assign("shop", InstanceName("web", 1), "n3", 1),
            ],
            read,
        )
    listing = await list_world(store)
    assert {str(n): r.node for (_, n), r in listing.instances.items()} == {"web.1": "n2"}
