"""The log drains of an app: AddDrain, RemoveDrain, ListDrains.

What is stored is the drain's URL and token; drains.Drains runs the
forwarders and counts what they sent and dropped.
"""

from __future__ import annotations

import time
import uuid

from paas.common.drainurl import parse_drain_url, redacted
from paas.proto import paas_pb2 as pb
from paas.scheduler.drains import Drains
from paas.scheduler.errors import AlreadyExists, NotFound
from paas.scheduler.events import EventLog
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.store import ConflictError, DrainRecord, Store


class DrainsService:
    """AddDrain, RemoveDrain and ListDrains."""

    def __init__(self, store: Store, events: EventLog, drains: Drains) -> None:
        self._store = store
        self._events = events
        self._drains = drains

    async def AddDrain(self, request: pb.AddDrainRequest, context: Context) -> pb.LogDrain:
        await require_app(self._store, request.app)
        url = parse_drain_url(request.url).url
        drain = DrainRecord(
            app=request.app, url=url, token=f"d.{uuid.uuid4()}", created_at=time.time()
        )
        try:
            await self._store.add_drain(drain)
        except ConflictError:
            raise AlreadyExists(
                f"log drain {redacted(url)} is already added to {request.app} "
                "(`paas drains` lists them)"
            ) from None
        self._events.add(request.app, f"Log drain {redacted(url)} added")
        self._drains.kick()
        return self._drains.view(drain)

    async def RemoveDrain(self, request: pb.RemoveDrainRequest, context: Context) -> pb.LogDrain:
        await require_app(self._store, request.app)
        url = request.url.strip()
        drain = await self._store.remove_drain(request.app, url) if url else None
        if drain is None:
            raise NotFound(
                f"no log drain {redacted(url)!r} on {request.app} (`paas drains` lists them)"
            )
        view = self._drains.view(drain)
        await self._drains.forget(drain.app, drain.url)
        self._events.add(request.app, f"Log drain {redacted(url)} removed")
        return view

    async def ListDrains(
        self, request: pb.ListDrainsRequest, context: Context
    ) -> pb.ListDrainsResponse:
        await require_app(self._store, request.app)
        drains = await self._store.drains(request.app)
        return pb.ListDrainsResponse(drains=[self._drains.view(drain) for drain in drains])
