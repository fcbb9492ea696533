"""The formation: Scale, how many instances of each process type an app runs.

A scale is one compare-and-swap of the formation against the app's current
release; the reconcile loop does the placing.
"""

from __future__ import annotations

from paas.common.formation import Change, Op, apply_changes, describe
from paas.proto import paas_pb2 as pb
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.events import EventLog
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.rollout import RELEASE_PHASE
from paas.scheduler.store import AppRecord, Store

_OPS = {
    pb.FormationChange.SET: Op.SET,
    pb.FormationChange.ADD: Op.ADD,
    pb.FormationChange.SUB: Op.SUB,
}


class FormationService:
    """Scale."""

    def __init__(self, store: Store, reconciler: Reconciler, events: EventLog) -> None:
        self._store = store
        self._reconciler = reconciler
        self._events = events

    async def Scale(self, request: pb.ScaleRequest, context: Context) -> pb.ScaleResponse:
        async def attempt() -> tuple[AppRecord, dict[str, int]]:
            app = await require_app(self._store, request.app)
            formation, formation_rev = await self._store.formation(app.name)
            release = await self._store.release(app.name, app.release) if app.release else None
            changes = [_change(c) for c in request.changes]
            # The release phase runs once per release (rollout.py), never as a formation.
            types = [t for t in release.commands if t != RELEASE_PHASE] if release else []
            new = apply_changes(formation, changes, types)
            await self._store.set_formation(app, new, formation_rev)
            return app, new

        app, new = await retry_conflicts(attempt, "the formation")
        self._events.add(app.name, f"Scaled to {describe(new)}")
        self._reconciler.kick()
        return pb.ScaleResponse(formation=new)


def _change(change: pb.FormationChange) -> Change:
    # Its type, op and count are checked with the request (validate.py).
    return Change(change.type, _OPS[change.op], change.count)
