"""Restarts: a new incarnation of an instance on its node, one or a rolling series.

A rolling restart goes one instance at a time, the next once the last is up
again (or ROLLING_STEP_TIMEOUT passed), in a background task of its own;
`stop(app)` ends an app's before it is destroyed, `close` all of them when the
replica stops.
"""

from __future__ import annotations

import asyncio
import contextlib

from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import NotFound
from paas.scheduler.events import EventLog
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import Sessions
from paas.scheduler.store import Assign, InstanceRecord, Store, StoreError

# A rolling restart waits this long for each instance to be up before the next.
ROLLING_STEP_TIMEOUT = 120.0


class Restarts:
    """Restarts instances: at once (`reassign`) or rolling, in the background (`roll`)."""

    def __init__(
        self, store: Store, sessions: Sessions, reconciler: Reconciler, events: EventLog
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler
        self._events = events
        self._rolling: dict[str, set[asyncio.Task[None]]] = {}  # by app

    def close(self) -> None:
        for tasks in self._rolling.values():
            for task in tasks:
                task.cancel()

    async def stop(self, app: str) -> None:
        """End the app's rolling restarts, before the app is destroyed: a late step
        would assign an instance of an app that no longer exists."""
        tasks = self._rolling.pop(app, set())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reassign(self, record: InstanceRecord) -> int:
        """Give the instance a new incarnation on its node: the agent restarts it."""
        app = await self._store.app(record.app)
        if app is None:
            raise NotFound(f"app {record.app!r} is gone")
        await self._store.apply(
            [Assign(record.app, record.name, record.node, record.release, app.create_revision)]
        )
        self._reconciler.kick()
        for current in await self._store.instances(record.app):
            if current.app == record.app and current.name == record.name:
                return current.incarnation
        return 0

    def roll(self, app: str, records: list[InstanceRecord]) -> None:
        """Restart `records` one at a time, in a task of its own."""
        task = asyncio.create_task(self._rolling_restart(app, records))
        tasks = self._rolling.setdefault(app, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _rolling_restart(self, app: str, records: list[InstanceRecord]) -> None:
        for record in records:
            try:
                incarnation = await self.reassign(record)
            except NotFound:
                return  # destroyed: nothing of the app may be written any more
            except StoreError as exc:
                with contextlib.suppress(StoreError):
                    if await self._store.app(app) is None:
                        return  # destroyed meanwhile (the reassign's guard failed)
                self._events.add(app, f"Rolling restart stopped at {record.name}: {exc}")
                return
            status = await self._sessions.wait_for_report(
                record.node, app, str(record.name), incarnation, {pb.UP}, ROLLING_STEP_TIMEOUT
            )
            if status is None:
                self._events.add(
                    app,
                    f"{record.name} was not up within {ROLLING_STEP_TIMEOUT:.0f}s of its "
                    "restart; going on with the next",
                )
