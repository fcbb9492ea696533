"""StatSlug, UploadSlug, FetchSlug: slugs in and out of the slug store.

An upload is checked before anything is written: the app exists, the size is
within --max-slug-size and, with what is stored (after a GC pass if need be)
and what other uploads under way reserved, within --slug-budget. The bytes are
spooled to an unnamed temporary file (never held in memory), counted and hashed
as they come; only a stream whose size and sha256 match what its first message
declared is written to the store. Anything else (a mismatch, a short stream, a
cancelled client, a lost leadership) ends with the file gone and nothing stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any

import grpc

from paas.common.errors import InvalidInput
from paas.common.slugs import CHUNK_SIZE, human_size
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound, NotLeading, OverBudget
from paas.scheduler.guard import LeaderView
from paas.scheduler.lookup import require_app
from paas.scheduler.sluggc import SlugCollector
from paas.scheduler.slugpolicy import budget_problem
from paas.scheduler.slugstore import SlugStore
from paas.scheduler.store import Store
from paas.scheduler.validate import check_request

Context = grpc.aio.ServicerContext[Any, Any]


class _Spool:
    """An upload's bytes on disk, counted and hashed as they come."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()
        self._hash = hashlib.sha256()
        self.size = 0

    def _add(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    async def add(self, data: bytes) -> None:
        self.size += len(data)
        await asyncio.to_thread(self._add, data)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        await asyncio.to_thread(self._file.seek, 0)
        while True:
            chunk = await asyncio.to_thread(self._file.read, CHUNK_SIZE)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._file.close()


class SlugsService:
    """StatSlug, UploadSlug and FetchSlug."""

    def __init__(
        self,
        store: Store,
        slugs: SlugStore,
        gc: SlugCollector,
        leadership: LeaderView,
        max_size: int,
        budget: int,
    ) -> None:
        self._store = store
        self._slugs = slugs
        self._gc = gc
        self._leadership = leadership
        self._max_size = max_size
        self._budget = budget
        self._reserved: dict[int, int] = {}  # upload under way -> bytes it may add
        self._uploads = itertools.count()

    async def StatSlug(self, request: pb.StatSlugRequest, context: Context) -> pb.StatSlugResponse:
        record = await self._slugs.stat(request.digest)
        return pb.StatSlugResponse(
            known=record is not None,
            size=record.size if record else 0,
            max_size=self._max_size,
        )

    async def UploadSlug(
        self, requests: AsyncIterator[pb.SlugUpload], context: Context
    ) -> pb.UploadSlugResponse:
        first = await anext(aiter(requests), None)
        if first is None:
            raise InvalidInput("an upload must name the app and the slug in its first message")
        check_request(first)
        if not first.app or not first.HasField("slug"):
            raise InvalidInput("an upload must name the app and the slug in its first message")
        digest, size = first.slug.digest, first.slug.size
        await require_app(self._store, first.app)
        if await self._slugs.stat(digest) is not None:
            return pb.UploadSlugResponse(slug=first.slug, existed=True)
        if size > self._max_size:
            raise InvalidInput(
                f"slug of {human_size(size)} is over the limit of "
                f"{human_size(self._max_size)} (--max-slug-size)"
            )
        token = next(self._uploads)
        spool: _Spool | None = None
        try:
            # Checked against what other uploads reserved; reserved before any await, so
            # two uploads at once cannot both take the last room.
            reserved = sum(self._reserved.values())
            self._reserved[token] = size
            await self._check_budget(size, reserved)
            spool = _Spool()
            async for message in _and_the_rest(first, requests):
                if message is not first:
                    check_request(message)
                    if message.app or message.HasField("slug"):
                        raise InvalidInput("only the first message of an upload names the slug")
                if spool.size + len(message.data) > size:
                    raise InvalidInput(f"the upload sends more than the {size} bytes it declared")
                await spool.add(message.data)
                if not self._leadership.is_leader:
                    raise NotLeading(self._leadership.leader_address)
            if spool.size != size:
                raise InvalidInput(
                    f"short upload: got {spool.size} of the {size} bytes declared; nothing stored"
                )
            if spool.digest != digest:
                raise InvalidInput(
                    f"slug digest mismatch: the bytes have sha256 {spool.digest}, not {digest}; "
                    "nothing stored"
                )
            stored = await self._slugs.put(digest, size, spool.chunks())
        finally:
            if spool is not None:
                spool.close()
            del self._reserved[token]
        return pb.UploadSlugResponse(slug=first.slug, existed=not stored)

    async def _check_budget(self, size: int, reserved: int) -> None:
        usage = await self._slugs.usage()
        if budget_problem(size, usage.slugs, [], self._budget, reserved) is None:
            return
        await self._gc.collect()  # what no kept release names may make room
        usage = await self._slugs.usage()
        releases = await self._store.all_releases()
        problem = budget_problem(size, usage.slugs, releases, self._budget, reserved)
        if problem is not None:
            raise OverBudget(f"{problem} (--slug-budget)")

    async def FetchSlug(
        self, request: pb.FetchSlugRequest, context: Context
    ) -> AsyncIterator[pb.SlugData]:
        record = await self._slugs.stat(request.digest)
        if record is None:
            raise NotFound(f"slug {request.digest} is not stored")
        first = True
        async for chunk in self._slugs.read(request.digest):
            yield pb.SlugData(size=record.size if first else 0, data=chunk)
            first = False


async def _and_the_rest(
    first: pb.SlugUpload, rest: AsyncIterator[pb.SlugUpload]
) -> AsyncIterator[pb.SlugUpload]:
    yield first
    async for message in rest:
        yield message
