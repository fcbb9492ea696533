"""The formation: Scale, how many instances of each process type an app runs.

A scale is one compare-and-swap of the formation against the app's current
release; the reconcile loop does the placing. `plan` set, nothing is written:
the answer is what a reconcile pass would do with that formation.
"""

from __future__ import annotations

from paas.common.formation import Change, Op, apply_changes, describe
from paas.proto import paas_pb2 as pb
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.events import EventLog
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.plan import shortfall_text
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
            if not request.plan:
                await self._store.set_formation(app, new, formation_rev)
            return app, new

        app, new = await retry_conflicts(attempt, "the formation")
        if request.plan:
            return await self._planned(app.name, new)
        self._events.add(app.name, f"Scaled to {describe(new)}")
        self._reconciler.kick()
        return pb.ScaleResponse(formation=new)

    async def _planned(self, app: str, formation: dict[str, int]) -> pb.ScaleResponse:
        """`paas scale --plan`: what a reconcile pass would do with `formation`, for
        every app (capacity is shared), written nowhere."""
        result, world, nodes = await self._reconciler.preview(app, formation)
        where = {(i.app, str(i.name)): i.node for i in world.instances}
        response = pb.ScaleResponse(formation=formation)
        for placed in result.place:
            before = where.get((placed.app, str(placed.name)), "")
            response.place.append(
                pb.PlannedInstance(
                    app=placed.app,
                    instance=str(placed.name),
                    node=placed.node,
                    from_node=before if before != placed.node else "",
                    release=placed.release,
                )
            )
        for stopped_app, name in result.stop:
            response.stop.append(
                pb.PlannedInstance(
                    app=stopped_app,
                    instance=str(name),
                    node=where.get((stopped_app, str(name)), ""),
                )
            )
        for (unplaced_app, type_), unplaced in result.unplaced.items():
            response.unplaced.append(
                pb.UnplacedType(
                    app=unplaced_app,
                    type=type_,
                    count=unplaced.count,
                    reason=shortfall_text(unplaced, type_, nodes),
                )
            )
        return response


def _change(change: pb.FormationChange) -> Change:
    # Its type, op and count are checked with the request (validate.py).
    return Change(change.type, _OPS[change.op], change.count)
