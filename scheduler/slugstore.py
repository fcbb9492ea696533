"""Where slugs are kept: the `SlugStore` interface and its etcd implementation.

A slug is content-addressed: stored once under its digest however many releases
name it. `put` takes bytes already verified (size and sha256, by the upload) and
makes the slug exist only once every byte is stored, so a reader never sees half
a slug. The etcd store writes the chunks in leadership-guarded txns (several per
txn, below etcd's request limit) and the meta key last; a write that fails is
undone as far as leadership allows, and `sweep` removes what a dead leader left.
Another backend (S3-compatible, say) implements the same Protocol.

It never decides what to keep: sluggc.py does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from paas.common.slugs import CHUNK_SIZE
from paas.scheduler.errors import ConflictError, NotFound, StoreError
from paas.scheduler.store import SlugRecord, Store, chunks_per_txn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlugUsage:
    """What is stored: every whole slug, and digests with leftovers but no meta."""

    slugs: dict[str, SlugRecord]
    leftovers: set[str]

    @property
    def total(self) -> int:
        return sum(record.size for record in self.slugs.values())


class SlugStore(Protocol):
    """What the scheduler needs of a place that keeps slugs."""

    async def stat(self, digest: str) -> SlugRecord | None:
        """The slug if stored whole, else None."""
        ...

    async def put(self, digest: str, size: int, chunks: AsyncIterable[bytes]) -> bool:
        """Store verified bytes under `digest`; False (and nothing written) if it was
        stored already."""
        ...

    def read(self, digest: str) -> AsyncIterator[bytes]:
        """The slug's bytes in order, one chunk at a time; NotFound if not stored."""
        ...

    async def delete(self, digest: str) -> None: ...

    async def usage(self) -> SlugUsage: ...

    async def sweep(self) -> int:
        """Remove leftovers no write of ours is making; how many digests went."""
        ...

    async def reclaim(self) -> None:
        """Let the backend reuse the space of what was deleted (etcd: compact)."""
        ...


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a slug of `size` bytes takes."""
    return -(-size // chunk_size)


class EtcdSlugStore:
    """Slugs in etcd, under the keys store.py owns for them."""

    def __init__(self, store: Store, chunk_size: int = CHUNK_SIZE) -> None:
        self._store = store
        self._chunk_size = chunk_size
        self._per_txn = chunks_per_txn(chunk_size)
        # One lock per digest being written or deleted here: a sweep never deletes a
        # chunk set this leader is writing, nor two writes of one digest interleave.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, digest: str) -> asyncio.Lock:
        return self._locks.setdefault(digest, asyncio.Lock())

    def _release_lock(self, digest: str) -> None:
        lock = self._locks.get(digest)
        if lock is not None and not lock.locked():
            del self._locks[digest]

    async def stat(self, digest: str) -> SlugRecord | None:
        return await self._store.slug(digest)

    async def put(self, digest: str, size: int, chunks: AsyncIterable[bytes]) -> bool:
        try:
            async with self._lock(digest):
                if await self._store.slug(digest) is not None:
                    return False
                try:
                    count = await self._write(digest, chunks)
                    record = SlugRecord(digest, size, count, time.time())
                    await self._store.put_slug_meta(record)
                except BaseException:
                    # Shielded: a cancelled upload still takes its chunks away.
                    await asyncio.shield(self._undo(digest))
                    raise
                return True
        finally:
            self._release_lock(digest)

    async def _write(self, digest: str, chunks: AsyncIterable[bytes]) -> int:
        # Leftovers of this digest from a dead write go first: a chunk set is one write's.
        await self._store.delete_slug(digest)
        batch: list[bytes] = []
        written = 0
        async for chunk in chunks:
            batch.append(chunk)
            if len(batch) == self._per_txn:
                await self._store.put_slug_chunks(digest, written, batch)
                written += len(batch)
                batch = []
        if batch:
            await self._store.put_slug_chunks(digest, written, batch)
            written += len(batch)
        return written

    async def _undo(self, digest: str) -> None:
        try:
            if await self._store.slug(digest) is None:
                await self._store.delete_slug(digest)
        except StoreError as exc:
            # A lost leader cannot delete: the next one sweeps them (no meta, no slug).
            log.warning("slug %s: chunks of a failed write are left to sweep: %s", digest, exc)

    async def read(self, digest: str) -> AsyncIterator[bytes]:
        record = await self._store.slug(digest)
        if record is None:
            raise NotFound(f"slug {digest} is not stored")
        for index in range(record.chunks):
            chunk = await self._store.slug_chunk(digest, index)
            if chunk is None:
                raise NotFound(f"slug {digest} was deleted while it was read")
            yield chunk

    async def delete(self, digest: str) -> None:
        try:
            async with self._lock(digest):
                await self._store.delete_slug(digest)
        finally:
            self._release_lock(digest)

    async def usage(self) -> SlugUsage:
        slugs, leftovers = await self._store.slugs()
        return SlugUsage(slugs, leftovers)

    async def sweep(self) -> int:
        _, leftovers = await self._store.slugs()
        swept = 0
        for digest in sorted(leftovers):
            lock = self._lock(digest)
            if lock.locked():
                continue  # being written by us now
            try:
                async with lock:
                    if await self._store.slug(digest) is None:
                        await self._store.delete_slug(digest)
                        swept += 1
            finally:
                self._release_lock(digest)
        return swept

    async def reclaim(self) -> None:
        with contextlib.suppress(ConflictError):
            await self._store.compact()
