"""Scheduler events per app (`paas[scheduler]: Scaled to web@10`), for the log stream.

A bounded buffer per app in the leader's memory, with live subscribers. The
events are also logged; they are not durable: a new leader starts with none.
Their seq is the time in microseconds (kept increasing), so that it goes on
increasing across a restart of the scheduler and a follower's cursor from
before the restart never hides new events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque

from paas.common.logformat import PAAS_STREAM, SCHEDULER_INSTANCE
from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

_KEEP_PER_APP = 1000
_SUBSCRIBER_QUEUE = 1000


class EventLog:
    """Scheduler events of every app: the last ones kept, new ones sent to followers."""

    def __init__(self, node: str) -> None:
        self._node = node
        self._events: dict[str, deque[pb.LogLine]] = defaultdict(
            lambda: deque(maxlen=_KEEP_PER_APP)
        )
        self._seq = 0
        self._subscribers: dict[str, set[asyncio.Queue[pb.LogLine]]] = defaultdict(set)

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
        self._events[app].append(line)
        for queue in self._subscribers[app]:
            if queue.full():
                continue  # a follower that lags misses scheduler events, not app output
            queue.put_nowait(line)

    def recent(self, app: str) -> list[pb.LogLine]:
        return list(self._events.get(app, ()))

    def subscribe(self, app: str) -> asyncio.Queue[pb.LogLine]:
        queue: asyncio.Queue[pb.LogLine] = asyncio.Queue(maxsize=_SUBSCRIBER_QUEUE)
        self._subscribers[app].add(queue)
        return queue

    def unsubscribe(self, app: str, queue: asyncio.Queue[pb.LogLine]) -> None:
        self._subscribers[app].discard(queue)
