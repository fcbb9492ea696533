"""The apps and their releases: CreateApp, ListApps, DestroyApp, Deploy.

Each request is checked before anything is written; a deploy is one release
written with the formation beside it, in one compare-and-swap.
"""

from __future__ import annotations

import os
import time
from typing import Any

import grpc
from google.protobuf import json_format

from paas.common.errors import InvalidInput
from paas.common.names import check_app_name
from paas.common.procfile import parse_procfile
from paas.proto import paas_pb2 as pb
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.errors import AlreadyExists
from paas.scheduler.events import EventLog
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.sessions import Sessions
from paas.scheduler.settings import settings_from, settings_problem
from paas.scheduler.store import ConflictError, ReleaseRecord, Store


class AppsService:
    """CreateApp, ListApps, DestroyApp and Deploy."""

    def __init__(
        self, store: Store, sessions: Sessions, reconciler: Reconciler, events: EventLog
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler
        self._events = events

    async def CreateApp(self, request: pb.CreateAppRequest, context: Context) -> pb.App:
        check_app_name(request.name)
        try:
            record = await self._store.create_app(request.name)
        except ConflictError:
            raise AlreadyExists(f"app {request.name!r} already exists") from None
        self._events.add(request.name, "App created")
        return pb.App(name=record.name, created_at=record.created_at)

    async def ListApps(self, request: pb.ListAppsRequest, context: Context) -> pb.ListAppsResponse:
        apps = await self._store.apps()
        result = []
        for app in sorted(apps.values(), key=lambda a: a.name):
            formation, _ = await self._store.formation(app.name)
            release = await self._store.release(app.name, app.release) if app.release else None
            result.append(
                pb.App(
                    name=app.name,
                    release=app.release,
                    formation=formation,
                    process_types=list(release.commands) if release else [],
                    created_at=app.created_at,
                )
            )
        return pb.ListAppsResponse(apps=result)

    async def DestroyApp(
        self, request: pb.DestroyAppRequest, context: Context
    ) -> pb.DestroyAppResponse:
        # Issue 8 lands this RPC; until then it is refused.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "apps destroy is not built yet")

    async def Deploy(self, request: pb.DeployRequest, context: Context) -> pb.Release:
        commands = parse_procfile(request.procfile)
        unknown = sorted(set(request.settings) - set(commands))
        if unknown:
            raise InvalidInput(
                f"settings name unknown process type(s) {', '.join(unknown)} "
                f"(Procfile has: {', '.join(sorted(commands))})"
            )
        for type_, wanted in request.settings.items():
            problem = settings_problem(wanted, self._sessions.grace)
            if problem:
                raise InvalidInput(f"{type_}: {problem}")
        settings: dict[str, dict[str, Any]] = {
            type_: json_format.MessageToDict(wanted) for type_, wanted in request.settings.items()
        }
        if not os.path.isabs(request.dir):
            raise InvalidInput(f"the app directory must be an absolute path, got {request.dir!r}")

        async def attempt() -> ReleaseRecord:
            app = await require_app(self._store, request.app)
            formation, formation_rev = await self._store.formation(app.name)
            if app.release == 0 and not formation and "web" in commands:
                formation = {"web": 1}  # as Heroku does on the first deploy
            for type_ in commands:
                formation.setdefault(type_, 0)
            release = ReleaseRecord(
                app=app.name,
                version=app.release + 1,
                dir=request.dir,
                commands=commands,
                env=dict(request.env),
                created_at=time.time(),
                description=f"Deploy of {request.dir}",
                settings=settings,
            )
            await self._store.add_release(app, release, formation, formation_rev)
            return release

        release = await retry_conflicts(attempt, "the app")
        self._events.add(release.app, f"Release v{release.version} created ({', '.join(commands)})")
        self._reconciler.kick()
        return release_pb(release)


def release_pb(release: ReleaseRecord) -> pb.Release:
    return pb.Release(
        app=release.app,
        version=release.version,
        dir=release.dir,
        commands=release.commands,
        env=release.env,
        created_at=release.created_at,
        description=release.description,
        settings={t: settings_from(v) for t, v in release.settings.items()},
    )
