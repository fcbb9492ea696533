"""A watch-fed cache of what the reconcile loop reads from etcd: an informer.

It lists apps, formations, instances and nodes once (store.list_world, at one
revision), then applies every watch event from the next revision on, a whole
watch response at a time so that a txn is never half seen; when the watch
breaks or its revision was compacted it lists again. So a reconcile pass
reads memory, not etcd, and a cluster of 100,000 instances is not re-read for
every change.

It owns the cache and nothing else: it never writes, and it decides nothing.
Releases are not cached here (reconcile keeps its own cache of them: they
never change once written).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from paas.scheduler.store import Listing, Store, StoreError, apply_change, list_world, watch_world

log = logging.getLogger(__name__)

RELIST_DELAY = 0.5  # seconds between a broken watch and the next listing


class Informer:
    """The cache: `listing` as of `revision`, kept current while `run` runs.

    informer = Informer(store, on_change=reconciler.kick)
    task = asyncio.create_task(informer.run())
    await informer.caught_up(0)        # listed once
    informer.listing.instances          # read, never written, by the caller
    """

    def __init__(self, store: Store, on_change: Callable[[], None]) -> None:
        self._store = store
        self._on_change = on_change
        self.listing = Listing(0, {}, {}, {}, {})
        self.listings = 0  # how many times it listed: 1, and one more per broken watch
        self._moved = asyncio.Condition()

    @property
    def revision(self) -> int:
        return self.listing.revision

    async def run(self) -> None:
        """List, then watch, until cancelled; list again whenever the watch breaks."""
        while True:
            try:
                listing = await list_world(self._store)
                self.listings += 1
                await self._advance(listing)
                async for revision, changes in watch_world(self._store, listing.revision):
                    for change in changes:
                        apply_change(listing, change)
                    await self._advance(listing, revision, bool(changes))
            except StoreError as exc:
                log.warning("%s; listing again", exc)
            await asyncio.sleep(RELIST_DELAY)

    async def caught_up(self, revision: int) -> None:
        """Return once the cache holds everything up to `revision` (and has listed)."""
        async with self._moved:
            await self._moved.wait_for(lambda: self.listings > 0 and self.revision >= revision)

    async def _advance(self, listing: Listing, revision: int = 0, changed: bool = True) -> None:
        listing.revision = max(listing.revision, revision)
        self.listing = listing
        async with self._moved:
            self._moved.notify_all()
        if changed:
            self._on_change()
