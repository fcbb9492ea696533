"""The slugs this agent has unpacked, fetched from the scheduler when it lacks one.

Owns STATE_DIR/NAME/slugs/: one directory per digest, the tree the instances of
that slug run in, and beside it DIGEST.manifest (unpack.py: every entry's type,
mode, size and sha256, written before the tree is renamed into place). A slug is
ready only when its tree matches its manifest: `acquire` checks that (in a
thread) every time an instance is about to start from it, so a changed or
missing file is caught before a process runs there; a tree that does not match,
or has no manifest, is removed and the slug fetched again.

A fetch streams FetchSlug over the channel of the session (`connect` gives it;
after a change of leader, the new one's) into a temporary file while hashing,
checks the size and the sha256, and unpacks (unpack.py) through a temporary
directory and a rename. One task per digest: every instance waiting for a slug
shares its fetch, its check and its outcome. Hashing, writing and unpacking run
in threads, never on the event loop.

Past `budget` bytes of unpacked trees, the least recently used slugs that no
desired instance uses (`in_use`, the supervisor's) are removed.

It never decides what runs and never starts a process; a failure is a SlugError
whose message is the instance's event and reason.

    cache = SlugCache(state_dir / "node-1" / "slugs", node="node-1", budget=2 << 30)
    cache.connect(channel)                                  # the session's
    tree = await cache.acquire(pb.Slug(digest=..., size=...), progress=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import grpc

from paas.agent import unpack
from paas.agent.errors import SlugDiskError, SlugFetchError
from paas.common.slugs import SlugError as InvalidDigest
from paas.common.slugs import check_digest, human_size, short_digest
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 2 << 30
MANIFEST_SUFFIX = ".manifest"
# A FetchSlug stream that sends nothing for this long is given up (and retried).
FETCH_IDLE_TIMEOUT = 30.0


def _disk_error(what: str, exc: OSError) -> SlugDiskError:
    if exc.errno in unpack.DISK_ERRNOS:
        return SlugDiskError(f"no space left on device while {what}: {exc.strerror}")
    return SlugDiskError(f"{what} failed: {exc}")


class _Download:
    """A fetch's temporary file and running hash, written in a thread chunk by chunk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hash = hashlib.sha256()
        self.size = 0
        self._file: IO[bytes] = open(path, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def close(self) -> None:
        self._file.close()


class SlugCache:
    """The unpacked slugs of one agent; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        node: str,
        budget: int = DEFAULT_BUDGET,
        max_unpacked: int = unpack.DEFAULT_MAX_BYTES,
        max_members: int = unpack.DEFAULT_MAX_MEMBERS,
    ) -> None:
        self.root = root
        self.node = node
        self.budget = budget
        self.max_unpacked = max_unpacked
        self.max_members = max_members
        self.in_use: Callable[[], set[str]] = set  # digests desired instances use
        self._channel: grpc.aio.Channel | None = None
        self._tasks: dict[str, asyncio.Task[Path]] = {}
        self._watchers: dict[str, list[Callable[[str], None]]] = {}
        self._phase: dict[str, str] = {}  # digest -> what its task does now, if it fetches
        self._sizes: dict[str, int] = {}  # unpacked bytes of each slug on disk
        self._used: dict[str, float] = {}  # digest -> when an instance last acquired it
        self._scanned = False
        self._lock = asyncio.Lock()  # one change of the directory's listing at a time
        self._background: set[asyncio.Task[list[str]]] = set()
        self._closed = False

    # ------------------------------------------------------------ the scheduler

    def connect(self, channel: grpc.aio.Channel) -> None:
        """Fetch over `channel` (the open session's) from now on."""
        self._channel = channel

    def disconnect(self, channel: grpc.aio.Channel) -> None:
        """`channel` is closing: fetch over none until the next `connect`."""
        if self._channel is channel:
            self._channel = None

    async def close(self) -> None:
        """End the fetches in flight (their temporary files are removed)."""
        self._closed = True
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ instances

    def path(self, digest: str) -> Path:
        return self.root / check_digest(digest)

    async def acquire(self, slug: pb.Slug, progress: Callable[[str], None]) -> Path:
        """The tree of `slug`, intact, fetched and unpacked first if need be.

        `progress` is told (with a reason such as `fetching slug 4.2 MiB`) when the
        slug must be fetched. SlugError if it cannot be had; cancelling the caller
        leaves the shared task running for the others.
        """
        digest = check_digest(slug.digest)
        self._used[digest] = time.time()
        task = self._tasks.get(digest)
        if task is None:
            task = asyncio.create_task(self._obtain(slug), name=f"slug {short_digest(digest)}")
            self._tasks[digest] = task
            task.add_done_callback(lambda _: self._finished(digest, task))
        watchers = self._watchers.setdefault(digest, [])
        watchers.append(progress)
        if digest in self._phase:
            progress(self._phase[digest])
        try:
            return await asyncio.shield(task)
        finally:
            with contextlib.suppress(ValueError):
                watchers.remove(progress)

    def _finished(self, digest: str, task: asyncio.Task[Path]) -> None:
        if self._tasks.get(digest) is task:
            del self._tasks[digest]
            self._phase.pop(digest, None)
        if not task.cancelled() and task.exception() is None and not self._closed:
            # The cache grew: past the budget, what no instance uses goes.
            pruning = asyncio.get_running_loop().create_task(self.prune())
            self._background.add(pruning)
            pruning.add_done_callback(self._background.discard)

    def _tell(self, digest: str, phase: str) -> None:
        self._phase[digest] = phase
        for watcher in list(self._watchers.get(digest, [])):
            try:
                watcher(phase)
            except Exception:
                log.exception("a slug progress watcher failed")

    async def _obtain(self, slug: pb.Slug) -> Path:
        digest = slug.digest
        await self._scan()
        tree = self.path(digest)
        problem = await asyncio.to_thread(self._check, digest)
        if not problem:
            return tree
        if problem != "not cached":
            log.warning("slug %s: %s; fetching it again", short_digest(digest), problem)
        async with self._lock:
            await asyncio.to_thread(self._remove, digest)
        self._tell(digest, f"fetching slug {human_size(slug.size)}")
        download = await self._fetch(slug)
        try:
            self._tell(digest, f"unpacking slug {human_size(slug.size)}")
            async with self._lock:
                size = await asyncio.to_thread(self._unpack, digest, download)
            self._sizes[digest] = size
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(download.unlink)
        log.info("slug %s fetched and unpacked (%s)", short_digest(digest), human_size(size))
        return tree

    def _check(self, digest: str) -> str:
        """Why the cached tree of `digest` cannot be run ("" if it can). Blocks."""
        tree, manifest_path = self.path(digest), self._manifest(digest)
        if not tree.is_dir() and not manifest_path.exists():
            return "not cached"
        try:
            manifest = unpack.Manifest.from_json(manifest_path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return "the cached copy has no readable manifest"
        if not tree.is_dir():
            return "the cached copy's tree is gone"
        problem = unpack.verify(tree, manifest)
        if problem:
            return f"the cached copy no longer matches its digest ({problem})"
        self._sizes[digest] = manifest.size
        return ""

    def _unpack(self, digest: str, tarball: Path) -> int:
        """Unpack `tarball` as the tree of `digest`, manifest first; its size. Blocks."""
        self.root.mkdir(parents=True, exist_ok=True)
        tree = self.path(digest)
        staged = unpack.temp_sibling(tree)
        manifest = unpack.unpack(
            tarball, staged, max_bytes=self.max_unpacked, max_members=self.max_members
        )
        try:
            self._write_manifest(digest, manifest)
            os.rename(staged, tree)
        except OSError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            self._manifest(digest).unlink(missing_ok=True)
            raise _disk_error(f"unpacking slug {short_digest(digest)}", exc) from None
        return manifest.size

    def _write_manifest(self, digest: str, manifest: unpack.Manifest) -> None:
        path = self._manifest(digest)
        temp = unpack.temp_sibling(path)
        try:
            with open(temp, "w") as file:
                file.write(manifest.to_json())
                file.flush()
                os.fsync(file.fileno())
            os.rename(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def _manifest(self, digest: str) -> Path:
        return self.root / f"{digest}{MANIFEST_SUFFIX}"

    def _remove(self, digest: str) -> None:
        """Delete the tree of `digest` and its manifest (tree first: a manifest alone
        proves nothing, a tree alone is never run). Blocks."""
        tree = self.path(digest)
        if tree.exists() or tree.is_symlink():
            doomed = unpack.temp_sibling(tree)
            os.rename(tree, doomed)  # gone from its name at once, deleted after
            shutil.rmtree(doomed, ignore_errors=True)
        self._manifest(digest).unlink(missing_ok=True)
        self._sizes.pop(digest, None)

    # ------------------------------------------------------------ the fetch

    async def _fetch(self, slug: pb.Slug) -> Path:
        """FetchSlug into a temporary file, checked against size and digest; its path."""
        digest, short = slug.digest, short_digest(slug.digest)
        channel = self._channel
        if channel is None:
            raise SlugFetchError(f"cannot fetch slug {short}: no session with a scheduler")
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
            download = await asyncio.to_thread(
                _Download, unpack.temp_sibling(self.root / f"{digest}.tar.gz")
            )
        except OSError as exc:
            raise _disk_error(f"fetching slug {short}", exc) from None
        call: Any = pb_grpc.SchedulerStub(channel).FetchSlug(
            pb.FetchSlugRequest(digest=digest, node=self.node)
        )
        declared = -1
        try:
            while True:
                message = await asyncio.wait_for(call.read(), FETCH_IDLE_TIMEOUT)
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                if declared < 0:
                    declared = message.size
                    if slug.size and declared != slug.size:
                        raise SlugFetchError(
                            f"slug {short}: the scheduler sends {declared} bytes, the release "
                            f"says {slug.size}"
                        )
                if download.size + len(message.data) > max(declared, 0):
                    raise SlugFetchError(
                        f"slug {short}: the scheduler sent more than {declared} bytes"
                    )
                if message.data:
                    await asyncio.to_thread(download.write, message.data)
            if download.size != declared:
                raise SlugFetchError(
                    f"slug {short}: the scheduler sent {download.size} of {max(declared, 0)} bytes"
                )
            got = download.hash.hexdigest()
            if got != digest:
                raise SlugFetchError(
                    f"slug {short}: digest mismatch, the bytes fetched hash to {short_digest(got)}"
                )
        except grpc.aio.AioRpcError as exc:
            await self._discard(download)
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise SlugFetchError(f"slug {short}: the scheduler does not have it") from None
            raise SlugFetchError(
                f"fetching slug {short} failed: {exc.code().name}: {exc.details()}"
            ) from None
        except TimeoutError:
            await self._discard(download)
            raise SlugFetchError(
                f"fetching slug {short} failed: the scheduler sent nothing for "
                f"{FETCH_IDLE_TIMEOUT:g} s"
            ) from None
        except OSError as exc:
            await self._discard(download)
            raise _disk_error(f"fetching slug {short}", exc) from None
        except BaseException:
            await self._discard(download)
            raise
        finally:
            call.cancel()
        try:
            await asyncio.to_thread(download.close)
        except OSError as exc:
            await self._discard(download)
            raise _disk_error(f"fetching slug {short}", exc) from None
        return download.path

    @staticmethod
    async def _discard(download: _Download) -> None:
        def discard() -> None:
            with contextlib.suppress(OSError):
                download.close()
            download.path.unlink(missing_ok=True)

        await asyncio.shield(asyncio.to_thread(discard))

    # ------------------------------------------------------------ the directory

    async def _scan(self) -> None:
        """Once: forget temporaries of an earlier run, and learn the sizes of what is cached."""
        if self._scanned:
            return
        async with self._lock:
            if not self._scanned:
                await asyncio.to_thread(self._scan_now)
                self._scanned = True

    def _scan_now(self) -> None:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            path = Path(entry.path)
            if entry.name.startswith(unpack.TEMP_PREFIX):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                continue
            digest = entry.name.removesuffix(MANIFEST_SUFFIX)
            try:
                check_digest(digest)
            except InvalidDigest:
                continue  # not the cache's
            manifest = self._manifest(digest)
            if not (self.root / digest).is_dir() or not manifest.exists():
                self._remove(digest)  # half of a pair is never run
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self._sizes[digest] = unpack.Manifest.from_json(manifest.read_text()).size
                self._used.setdefault(digest, manifest.stat().st_mtime)

    def cached(self) -> dict[str, int]:
        """Digest -> unpacked bytes of every slug on disk (as far as this run knows)."""
        return dict(self._sizes)

    async def prune(self) -> list[str]:
        """Past the budget, remove the least recently used slugs no desired instance
        uses and no task is fetching; the digests removed."""
        await self._scan()
        removed: list[str] = []
        async with self._lock:
            total = sum(self._sizes.values())
            if total <= self.budget:
                return removed
            keep = self.in_use() | set(self._tasks)
            for digest in sorted(self._sizes, key=lambda d: self._used.get(d, 0.0)):
                if total <= self.budget:
                    break
                if digest in keep:
                    continue
                size = self._sizes[digest]
                try:
                    await asyncio.to_thread(self._remove, digest)
                except OSError as exc:
                    log.warning("slug %s could not be removed: %s", short_digest(digest), exc)
                    continue
                self._used.pop(digest, None)
                total -= size
                removed.append(digest)
                log.info(
                    "slug %s removed (%s): the cache passed its budget of %s",
                    short_digest(digest),
                    human_size(size),
                    human_size(self.budget),
                )
        return removed
