"""The etcd slug store on a real etcd: a dead leader's chunks are swept, a write under
way is not, and a write that fails leaves nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from paas.common.slugs import CHUNK_SIZE
from paas.scheduler.errors import StoreError
from paas.scheduler.slugstore import EtcdSlugStore
from paas.scheduler.store import Store
from tests.helpers import wait_for
from tests.integration.test_slugs import slug_keys

DIGEST = hashlib.sha256(b"x").hexdigest()


async def test_chunks_without_meta_are_swept(leading_store: Store) -> None:
    # As a leader that died between its chunks and its meta leaves them.
    await leading_store.put_slug_chunks(DIGEST, 0, [b"a" * 10, b"b" * 10])
    slugs = EtcdSlugStore(leading_store)
    assert (await slugs.usage()).leftovers == {DIGEST}
    assert await slugs.stat(DIGEST) is None
    assert await slugs.sweep() == 1
    assert await slug_keys(leading_store.endpoints[0]) == {}


async def test_a_sweep_leaves_a_write_under_way_alone(leading_store: Store) -> None:
    slugs = EtcdSlugStore(leading_store)
    first_written = asyncio.Event()
    go_on = asyncio.Event()
    data = [b"a" * CHUNK_SIZE, b"b" * CHUNK_SIZE, b"c" * 10]

    async def chunks() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(data):
            if index == 2:
                first_written.set()  # two chunks are in etcd now, without meta
                await go_on.wait()
            yield chunk

    write = asyncio.create_task(slugs.put(DIGEST, sum(map(len, data)), chunks()))
    await asyncio.wait_for(first_written.wait(), 30)
    assert len(await slug_keys(leading_store.endpoints[0])) == 2
    assert await slugs.sweep() == 0
    go_on.set()
    assert await write is True
    assert b"".join([chunk async for chunk in slugs.read(DIGEST)]) == b"".join(data)
    assert await slugs.put(DIGEST, 1, chunks()) is False  # stored once


async def test_a_failed_write_takes_its_chunks_away(leading_store: Store) -> None:
    slugs = EtcdSlugStore(leading_store)

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * CHUNK_SIZE
        yield b"b" * CHUNK_SIZE
        yield b"c"
        raise StoreError("the spool broke")

    with pytest.raises(StoreError):
        await slugs.put(DIGEST, 2 * CHUNK_SIZE + 1, broken())
    assert await slug_keys(leading_store.endpoints[0]) == {}


async def test_slug_writes_do_not_wake_the_reconcile_watch(leading_store: Store) -> None:
    woken: list[None] = []

    async def watch() -> None:
        async for change in leading_store.changes():
            woken.append(change)

    watcher = asyncio.create_task(watch())
    try:
        # Until the watch runs, write apps again and again: then it is known to be up.
        made: list[str] = []

        async def watching() -> bool:
            made.append(f"warm{len(made)}")
            await leading_store.create_app(made[-1])
            return bool(woken)

        await wait_for(watching, timeout=30, what="the watch to see an app")
        # The last warm-up app's wake-ups may still be on their way: let them land.
        await asyncio.sleep(0.2)
        before = len(woken)
        await leading_store.put_slug_chunks(DIGEST, 0, [b"a" * CHUNK_SIZE])
        await leading_store.delete_slug(DIGEST)
        await leading_store.create_app("shop")  # after the slug writes, in etcd's order
        await wait_for(lambda: len(woken) >= before + 2, timeout=30, what="the app's wake-ups")
        # Had the slug keys been watched, their two wake-ups would be here as well by now:
        # they came first, on the same stream as the app's.
        await asyncio.sleep(0.2)
        assert len(woken) == before + 2
    finally:
        watcher.cancel()
