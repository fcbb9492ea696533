"""The slug GC, on the leader: old releases go, then every slug no kept release names.

    gc = SlugCollector(store, slugs, keep_releases=10, grace=600)
    gc.on_leadership(True)      # runs once now, then every GC_INTERVAL and on kick()
    gc.kick()                   # after a deploy or a destroy
    async with gc.references(): # a deploy naming a slug: no GC pass meanwhile
        ...
    await gc.collect()          # one pass now (an upload over budget first asks this)

Deleted values stay in etcd's history (and its db size) until compaction: a pass
that deleted anything compacts, so their space is reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from paas.scheduler.slugpolicy import releases_to_drop, slugs_to_drop
from paas.scheduler.slugstore import SlugStore
from paas.scheduler.store import NotLeaderError, Store, StoreError

log = logging.getLogger(__name__)

# Seconds between passes while leading, beside those after deploys and destroys.
GC_INTERVAL = 300.0


class SlugCollector:
    """Keeps the last `keep_releases` releases per app and the slugs they name."""

    def __init__(self, store: Store, slugs: SlugStore, keep_releases: int, grace: float) -> None:
        self._store = store
        self._slugs = slugs
        self._keep = max(1, keep_releases)
        self._grace = grace
        self._lock = asyncio.Lock()  # a pass, or a deploy between its check and its write
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def references(self) -> AsyncIterator[None]:
        """Hold off GC passes: what is checked stored inside stays stored."""
        async with self._lock:
            yield

    def kick(self) -> None:
        self._dirty.set()

    def on_leadership(self, leading: bool) -> None:
        if leading and self._task is None:
            self._task = asyncio.create_task(self._run())
        elif not leading and self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        self.kick()  # once when elected: a dead leader's leftovers go at once
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), GC_INTERVAL)
            self._dirty.clear()
            try:
                await self.collect()
            except NotLeaderError:
                return
            except StoreError as exc:
                log.warning("slug GC failed, retrying later: %s", exc)
            except Exception:
                log.exception("slug GC pass failed")

    async def collect(self) -> tuple[int, int]:
        """One pass; (releases deleted, slugs deleted)."""
        async with self._lock:
            # Releases first: an app created after they were read has none in them.
            releases = await self._store.all_releases()
            apps = await self._store.apps()
            current = {app.name: app.release for app in apps.values()}
            drop = releases_to_drop(releases, current, self._keep)
            # A release instances still run is kept (mid-rollout, or after one failed).
            running = {(i.app, i.release) for i in await self._store.instances()}
            running |= {(s.app, s.release) for s in await self._store.surges()}
            drop = [d for d in drop if d not in running]
            if drop:
                await self._store.delete_releases(drop)
            dropped = set(drop)
            kept = [r for r in releases if (r.app, r.version) not in dropped]
            usage = await self._slugs.usage()
            gone = slugs_to_drop(usage.slugs, kept, time.time(), self._grace)
            for digest in gone:
                await self._slugs.delete(digest)
            swept = await self._slugs.sweep()
            if drop or gone or swept:
                await self._slugs.reclaim()
                log.info(
                    "slug GC: %d release(s), %d slug(s) and %d leftover(s) deleted",
                    len(drop),
                    len(gone),
                    swept,
                )
            return len(drop), len(gone)
