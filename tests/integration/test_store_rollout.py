"""The rollout's writes in etcd (store.write_rollout): a promotion keeps the new
copy's incarnation, every write is guarded by the revisions read, and the
informer's listing carries the surge copies and the releases."""

from __future__ import annotations

import dataclasses

import pytest

from paas.common.names import InstanceName
from paas.scheduler.store import (
    Assign,
    ConflictError,
    DropSurge,
    Promote,
    PutAppRelease,
    PutRelease,
    ReleaseRecord,
    StartSurge,
    Store,
    list_world,
    next_version,
    write_rollout,
)

pytestmark = pytest.mark.integration

WEB1 = InstanceName("web", 1)


async def two_releases(store: Store) -> None:
    await store.create_app("shop")
    for version in (1, 2):
        app = await store.app("shop")
        assert app is not None
        release = ReleaseRecord(
            "shop", version, "/srv", {"web": f"v{version}"}, {}, 1.0, status="rolling"
        )
        await store.add_release(app, release, {"web": 1}, (await store.formation("shop"))[1])
        if version == 1:
            await store.apply([Assign("shop", WEB1, "node-1", 1)])


async def test_a_promotion_keeps_the_new_copys_incarnation(leading_store: Store) -> None:
    store = leading_store
    await two_releases(store)
    app = await store.app("shop")
    assert app is not None
    await write_rollout(store, app, [StartSurge("shop", WEB1, "node-2", 2)])
    listing = await list_world(store)
    surge = listing.surges[("shop", WEB1)]
    old = listing.instances[("shop", WEB1)]
    assert (surge.node, surge.release) == ("node-2", 2)
    assert listing.releases[("shop", 2)].status == "rolling"

    with pytest.raises(ConflictError):
        await write_rollout(store, app, [StartSurge("shop", WEB1, "node-3", 2)])
    with pytest.raises(ConflictError):  # the instance changed since read
        await write_rollout(store, app, [Promote(surge, old.revision - 1)])

    await write_rollout(store, app, [Promote(surge, old.revision)])
    listing = await list_world(store)
    promoted = listing.instances[("shop", WEB1)]
    assert (promoted.node, promoted.release) == ("node-2", 2)
    assert promoted.incarnation == surge.incarnation, "the agent must not restart it"
    assert promoted.revision > surge.incarnation
    assert listing.surges == {}
    [again] = [i for i in await store.instances() if i.name == WEB1]
    assert again.incarnation == surge.incarnation

    # A restart's Assign is a new incarnation again.
    await store.apply([Assign("shop", WEB1, "node-2", 2)])
    [restarted] = [i for i in await store.instances() if i.name == WEB1]
    assert restarted.incarnation > surge.incarnation


async def test_a_failure_puts_the_release_before_back_and_keeps_the_version_taken(
    leading_store: Store,
) -> None:
    store = leading_store
    await two_releases(store)
    app = await store.app("shop")
    assert app is not None
    await write_rollout(store, app, [StartSurge("shop", WEB1, "node-2", 2)])
    listing = await list_world(store)
    surge = listing.surges[("shop", WEB1)]
    failed = dataclasses.replace(listing.releases[("shop", 2)], status="failed")
    app = await store.app("shop")
    assert app is not None
    await write_rollout(store, app, [DropSurge(surge), PutRelease(failed), PutAppRelease(app, 1)])
    back = await store.app("shop")
    assert back is not None and back.release == 1 and back.latest == 2
    assert next_version(back) == 3, "v2 is never made again"
    stored = await store.release("shop", 2)
    assert stored is not None and stored.status == "failed"
    assert await store.surges() == []
    # A put guarded on a release revision read before is refused.
    with pytest.raises(ConflictError):
        await write_rollout(store, back, [PutRelease(failed)])
