"""Scheduler events per app (`paas[scheduler]: Scaled to web@10`), for the log stream.

A bounded buffer per app in memory, with live subscribers, and a copy in etcd so
that a new leader (after a failover or a restart) still shows them. `add` never
waits on etcd: it hands the event to one background writer through a bounded
queue; when etcd is slow or down the queue fills and further events are kept in
memory only, counted and logged, never blocking the caller. The writer trims
etcd to the last `keep` events per app. When this replica becomes leader it
loads every app's last `keep` events from etcd and merges them with what it
holds, by (node, seq), without duplicates.

An event's seq is the time in microseconds (kept increasing, and above every
loaded one), so that it goes on increasing across a restart of the scheduler
and a follower's cursor from before the restart never hides new events.

It must never make `add` wait, and never grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

from paas.common.logformat import PAAS_STREAM, SCHEDULER_INSTANCE
from paas.proto import paas_pb2 as pb
from paas.scheduler.store import NotLeaderError, StoreError

log = logging.getLogger(__name__)

KEEP_PER_APP = 1000
_SUBSCRIBER_QUEUE = 1000
_WRITE_QUEUE = 1000
_WRITE_BATCH = 100  # events per etcd txn
_WRITE_ATTEMPTS = 5  # then the batch is given up (etcd down for seconds means no leader)
_RETRY_FIRST, _RETRY_MAX = 0.2, 2.0
_LOAD_RETRY = 1.0


class EventStore(Protocol):
    """What EventLog needs of store.Store."""

    async def add_events(self, lines: Sequence[pb.LogLine]) -> None: ...

    async def trim_events(self, app: str, keep: int) -> int: ...

    async def events_of_all_apps(self, newest: int) -> dict[str, list[pb.LogLine]]: ...


def merge(held: Iterable[pb.LogLine], loaded: Iterable[pb.LogLine], keep: int) -> list[pb.LogLine]:
    """One app's events from memory and from etcd: each once, by seq, the last `keep`.

    An event is known by its (node, seq): the replica that made it and when."""
    by_id = {(line.node, line.seq): line for line in loaded}
    by_id.update(((line.node, line.seq), line) for line in held)
    ordered = sorted(by_id.values(), key=lambda line: (line.seq, line.node))
    return ordered[-keep:] if keep > 0 else []


def notice(app: str, text: str) -> pb.LogLine:
    """A `paas[scheduler]` line that is not an event: seq 0, so never stored, never
    skipped by a reader's cursor (a node that is unreachable, lines dropped)."""
    return pb.LogLine(
        timestamp=time.time(), app=app, instance=SCHEDULER_INSTANCE, stream=PAAS_STREAM, text=text
    )


class EventLog:
    """Scheduler events of every app: the last ones kept, in memory and in etcd, and
    new ones sent to followers.

    events = EventLog("scheduler-a", store)
    events.start()                        # the etcd writer
    events.add("shop", "Scaled to web@3")
    events.on_leadership(True)            # load what earlier leaders wrote
    events.recent("shop")
    await events.close()
    """

    def __init__(
        self,
        node: str,
        store: EventStore | None = None,
        keep: int = KEEP_PER_APP,
        queue: int = _WRITE_QUEUE,
    ) -> None:
        self._node = node
        self._store = store
        self._keep = keep
        # Trim etcd after this many writes to an app: at most keep + this are kept there.
        self._trim_every = max(1, keep // 10)
        self._events: dict[str, deque[pb.LogLine]] = {}
        self._seq = 0
        self._subscribers: dict[str, set[asyncio.Queue[pb.LogLine]]] = {}
        self._pending: asyncio.Queue[pb.LogLine] = asyncio.Queue(maxsize=queue)
        self._writer: asyncio.Task[None] | None = None
        self._loader: asyncio.Task[None] | None = None
        # Writes per app since its last trim; an app not in it is trimmed at its next write.
        self._since_trim: dict[str, int] = {}
        self.dropped = 0  # events never handed to etcd: the queue was full
        self._dropped_logged = 0
        # App -> the last seq of it that was forgotten: queued events up to it are not
        # written (they would bring a destroyed app's events back).
        self._forgotten: dict[str, int] = {}

    # ------------------------------------------------------------ in memory

    def add(self, app: str, text: str) -> None:
        now = time.time()
        self._seq = max(self._seq + 1, int(now * 1_000_000))
        line = pb.LogLine(
            timestamp=now,
            app=app,
            instance=SCHEDULER_INSTANCE,
            stream=PAAS_STREAM,
            node=self._node,
            seq=self._seq,
            text=text,
        )
        log.info("%s: %s", app, text)
        self._buffer(app).append(line)
        for queue in self._subscribers.get(app, ()):
            if queue.full():
                continue  # a follower that lags misses scheduler events, not app output
            queue.put_nowait(line)
        if self._store is not None:
            try:
                self._pending.put_nowait(line)
            except asyncio.QueueFull:
                self.dropped += 1  # the writer logs the count: loss is never silent

    def forget(self, app: str) -> None:
        """The app is destroyed: drop its events held here, and never write to etcd those
        still queued. Events added later (a new app of that name) are kept as usual."""
        self._events.pop(app, None)
        self._since_trim.pop(app, None)
        self._forgotten[app] = self._seq

    def recent(self, app: str) -> list[pb.LogLine]:
        return list(self._events.get(app, ()))

    def subscribe(self, app: str) -> asyncio.Queue[pb.LogLine]:
        queue: asyncio.Queue[pb.LogLine] = asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE)
        self._subscribers.setdefault(app, set()).add(queue)
        return queue

    def unsubscribe(self, app: str, queue: asyncio.Queue[pb.LogLine]) -> None:
        subscribers = self._subscribers.get(app)
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self._subscribers[app]

    def _buffer(self, app: str) -> deque[pb.LogLine]:
        buffer = self._events.get(app)
        if buffer is None:
            buffer = self._events[app] = deque(maxlen=self._keep)
        return buffer

    def merge_loaded(self, loaded: dict[str, list[pb.LogLine]]) -> None:
        """Take in events read from etcd: each app's buffer becomes both, each once."""
        for app, lines in loaded.items():
            held = self._events.get(app, ())
            self._events[app] = deque(merge(held, lines, self._keep), maxlen=self._keep)
            if lines:
                # New events sort after every loaded one, whatever this host's clock says.
                self._seq = max(self._seq, max(line.seq for line in lines))

    # ------------------------------------------------------------ leadership

    def on_leadership(self, leading: bool) -> None:
        """Load what earlier leaders kept when this replica starts leading; stop when
        it no longer does."""
        if self._loader is not None:
            self._loader.cancel()
            self._loader = None
        if leading and self._store is not None:
            self._loader = asyncio.create_task(self._load(self._store))
        if not leading:
            # What this replica held is etcd's now, or lost with its lead: should it lead
            # again it loads afresh, and a destroyed app's events do not come back.
            self._events.clear()

    async def _load(self, store: EventStore) -> None:
        while True:
            try:
                loaded = await store.events_of_all_apps(self._keep)
            except StoreError as exc:
                log.warning("cannot load scheduler events from etcd, retrying: %s", exc)
                await asyncio.sleep(_LOAD_RETRY)
                continue
            self.merge_loaded(loaded)
            count = sum(len(lines) for lines in loaded.values())
            log.info("loaded %d scheduler events of %d apps from etcd", count, len(loaded))
            return

    # ------------------------------------------------------------ the etcd writer

    def start(self) -> None:
        """Start writing events to etcd (needs a store and a running event loop)."""
        if self._store is not None and self._writer is None:
            self._writer = asyncio.create_task(self._write_forever(self._store))

    async def flush(self) -> None:
        """Return once every event handed to the writer so far is written or given up."""
        await self._pending.join()

    async def close(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - a bound on the flush
        """Write what is queued (for at most `timeout` seconds), then stop."""
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout)
        for task in (self._writer, self._loader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._loader = None

    async def _write_forever(self, store: EventStore) -> None:
        while True:
            batch = [await self._pending.get()]
            while len(batch) < _WRITE_BATCH and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            wanted = [line for line in batch if line.seq > self._forgotten.get(line.app, -1)]
            try:
                if wanted and await self._write(store, wanted):
                    await self._trim(store, wanted)
            except Exception:
                # A bug must not stop the writer for good: say so loudly and go on.
                log.exception("writing scheduler events to etcd failed")
            finally:
                for _ in batch:
                    self._pending.task_done()
            if self.dropped > self._dropped_logged:
                log.warning(
                    "%d scheduler events kept in memory only: the etcd writer fell behind",
                    self.dropped - self._dropped_logged,
                )
                self._dropped_logged = self.dropped

    async def _write(self, store: EventStore, batch: list[pb.LogLine]) -> bool:
        delay = _RETRY_FIRST
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                await store.add_events(batch)
                return True
            except NotLeaderError:
                # A replica that does not lead must not write; the events stay in memory.
                log.warning("%d scheduler events not kept in etcd: not the leader", len(batch))
                return False
            except StoreError as exc:
                if attempt == _WRITE_ATTEMPTS:
                    log.warning("%d scheduler events not kept in etcd: %s", len(batch), exc)
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        return False

    async def _trim(self, store: EventStore, batch: list[pb.LogLine]) -> None:
        for line in batch:
            self._since_trim[line.app] = self._since_trim.get(line.app, self._trim_every) + 1
        for app, count in list(self._since_trim.items()):
            if count < self._trim_every:
                continue
            try:
                await store.trim_events(app, self._keep)
            except StoreError as exc:
                log.warning("cannot trim the scheduler events of %s in etcd: %s", app, exc)
                continue  # tried again at the app's next write
            self._since_trim[app] = 0
