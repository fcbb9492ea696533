"""An app's releases and config vars: ListReleases, GetRelease, SetConfig, Rollback.

Config lives with the app: it is the current release's env. SetConfig makes one
new release with the current release's code and the env changed (before any
deploy, one with no code at all, as Heroku does); Rollback makes one with an
older release's code and env, never its formation. Both are written through
releases.commit_release, as Deploy's releases are, with status "rolling" (the
rollout moves it on). Each request's shape is checked by the guard
(validate.py); what needs the stored state is checked here, before anything is
written.

GetRelease of version 0 answers the current release; an app with none yet gets
an empty Release of version 0 (so `paas config` of a new app lists nothing rather
than failing). While a release is rolling, GetRelease and ListReleases fill
`instances` and `replaced` from what the last reconcile pass saw and what the
agents report: memory only, no etcd read.

Config values never appear in a log line or an event: only their keys do.
"""

from __future__ import annotations

import logging

from paas.common.configvars import changed_config
from paas.proto import paas_pb2 as pb
from paas.scheduler.apps_api import release_pb
from paas.scheduler.errors import NotFound
from paas.scheduler.events import EventLog
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.releases import (
    ROLLING,
    build_release,
    caller_name,
    check_rollback_code,
    code_of,
    commit_release,
    config_description,
    rollback_target,
    rollout_progress,
)
from paas.scheduler.sessions import Sessions
from paas.scheduler.sluggc import SlugCollector
from paas.scheduler.store import AppRecord, InstanceRecord, ReleaseRecord, Store

log = logging.getLogger(__name__)


class ReleasesService:
    """ListReleases, GetRelease, SetConfig and Rollback."""

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        reconciler: Reconciler,
        events: EventLog,
        slug_gc: SlugCollector,
        keep_releases: int | None = None,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler
        self._events = events
        self._slug_gc = slug_gc
        self._keep_releases = keep_releases

    async def ListReleases(
        self, request: pb.ListReleasesRequest, context: Context
    ) -> pb.ListReleasesResponse:
        app = await require_app(self._store, request.app)
        releases = sorted(await self._store.releases(app.name), key=lambda r: -r.version)
        if request.limit:
            releases = releases[: request.limit]
        return pb.ListReleasesResponse(releases=[self._view(r) for r in releases])

    async def GetRelease(self, request: pb.GetReleaseRequest, context: Context) -> pb.Release:
        app = await require_app(self._store, request.app)
        version = request.version or app.release
        if version == 0:
            return pb.Release(app=app.name)
        release = await self._store.release(app.name, version)
        if release is None:
            raise NotFound(self._no_release(app, version))
        return self._view(release)

    async def SetConfig(self, request: pb.SetConfigRequest, context: Context) -> pb.Release:
        by = caller_name(context)
        unset = list(request.unset)
        description = config_description(sorted(request.set), unset)

        async def decide(
            app: AppRecord, current: ReleaseRecord | None, formation: dict[str, int]
        ) -> tuple[ReleaseRecord, dict[str, int]]:
            env = changed_config(current.env if current else {}, request.set, unset)
            release = build_release(app, code_of(current), env, description, by, ROLLING)
            return release, formation

        release = await commit_release(self._store, self._slug_gc, request.app, decide)
        self._created(release)
        return release_pb(release)

    async def Rollback(self, request: pb.RollbackRequest, context: Context) -> pb.Release:
        by = caller_name(context)

        async def decide(
            app: AppRecord, current: ReleaseRecord | None, formation: dict[str, int]
        ) -> tuple[ReleaseRecord, dict[str, int]]:
            kept = {r.version: r for r in await self._store.releases(app.name)}
            version = rollback_target(
                app, kept, request.version, self._keep_releases, current.previous if current else 0
            )
            target = kept[version]
            check_rollback_code(target)
            code = code_of(target)
            for type_ in code.commands:
                formation.setdefault(type_, 0)
            release = build_release(app, code, target.env, f"Rollback to v{version}", by, ROLLING)
            return release, formation

        release = await commit_release(
            self._store,
            self._slug_gc,
            request.app,
            decide,
            slug_missing="is no longer stored: its release cannot be rolled back to",
        )
        self._created(release)
        return release_pb(release)

    # ------------------------------------------------------------ pieces

    def _created(self, release: ReleaseRecord) -> None:
        """The event, the log line and the kicks every new release gets. The description
        names keys only, never a value."""
        who = f" by {release.by}" if release.by else ""
        self._events.add(release.app, f"Release v{release.version} created{who}: "
                         f"{release.description}")  # fmt: skip
        log.info("app %s: release v%d%s: %s", release.app, release.version, who,
                 release.description)  # fmt: skip
        self._reconciler.kick()
        self._slug_gc.kick()  # releases past --keep-releases and their slugs go

    def _view(self, release: ReleaseRecord) -> pb.Release:
        view = release_pb(release)
        if release.status == ROLLING:
            view.instances, view.replaced = self._progress(release)
        return view

    def _progress(self, release: ReleaseRecord) -> tuple[int, int]:
        world = self._reconciler.world
        if world is None:
            return 0, 0

        def is_up(record: InstanceRecord) -> bool:
            session = self._sessions.get(record.node)
            key = (record.app, str(record.name), record.release)
            status = session.reports.get(key) if session else None
            return (
                status is not None
                and status.incarnation == record.incarnation
                and status.state == pb.UP
            )

        return rollout_progress(
            release, world.formations.get(release.app, {}), world.instances, is_up
        )

    def _no_release(self, app: AppRecord, version: int) -> str:
        if version > app.release:
            return f"{app.name} has no release v{version} (`paas releases` lists them)"
        limit = (
            f" (the scheduler keeps the last {self._keep_releases})" if self._keep_releases else ""
        )
        return f"release v{version} of {app.name} is no longer kept{limit}"
