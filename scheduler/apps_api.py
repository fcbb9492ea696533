"""The apps and their releases: CreateApp, ListApps, DestroyApp, Deploy.

Each request's shape is checked by the guard (validate.py) before it gets
here; what needs the stored state is checked here, before anything is
written. A deploy is one release written with the formation beside it, in
one compare-and-swap; a destroy deletes every key of the app in one txn and
stops what the app had running elsewhere in the scheduler (its rolling
restarts, its log drains, its events held in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, cast

from google.protobuf import json_format

from paas.common.configvars import check_config_vars
from paas.common.errors import InvalidInput
from paas.common.names import check_app_name
from paas.common.placement import spread_conflict
from paas.common.procfile import parse_procfile
from paas.common.slugs import short_digest
from paas.proto import paas_pb2 as pb
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.drains import Drains
from paas.scheduler.errors import AlreadyExists, NotFound
from paas.scheduler.events import EventLog
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.reconcile import Reconciler
from paas.scheduler.releases import Code, build_release, caller_name, code_of, commit_release
from paas.scheduler.rolling import Restarts
from paas.scheduler.rollout import RELEASE_PHASE
from paas.scheduler.sessions import Sessions
from paas.scheduler.settings import placement_of, settings_from, settings_problem
from paas.scheduler.sluggc import SlugCollector
from paas.scheduler.store import (
    RELEASE_STATUSES,
    AppRecord,
    ConflictError,
    ReleaseRecord,
    SlugRef,
    Store,
    StoreError,
)

log = logging.getLogger(__name__)

# How long a destroy waits for the app's queued events to reach etcd (so that the
# delete covers them); past it they are dropped after the delete (EventLog.forget).
_EVENTS_FLUSH = 2.0


class AppsService:
    """CreateApp, ListApps, DestroyApp and Deploy."""

    def __init__(
        self,
        store: Store,
        sessions: Sessions,
        reconciler: Reconciler,
        events: EventLog,
        restarts: Restarts,
        drains: Drains,
        slug_gc: SlugCollector,
    ) -> None:
        self._slug_gc = slug_gc
        self._store = store
        self._sessions = sessions
        self._reconciler = reconciler
        self._events = events
        self._restarts = restarts
        self._drains = drains

    async def CreateApp(self, request: pb.CreateAppRequest, context: Context) -> pb.App:
        check_app_name(request.name)
        try:
            record = await self._store.create_app(request.name)
        except ConflictError:
            raise AlreadyExists(f"app {request.name!r} already exists") from None
        self._events.add(request.name, "App created")
        return pb.App(name=record.name, created_at=record.created_at, id=record.id)

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
                    id=app.id,
                )
            )
        return pb.ListAppsResponse(apps=result)

    async def DestroyApp(
        self, request: pb.DestroyAppRequest, context: Context
    ) -> pb.DestroyAppResponse:
        # `confirm` is checked with the request's shape (validate.py).
        app = await require_app(self._store, request.name)
        drains = await self._store.drains(app.name)
        # Events queued before the delete reach etcd first, so the delete covers them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._events.flush(), _EVENTS_FLUSH)

        async def attempt() -> tuple[AppRecord, int]:
            current = await require_app(self._store, request.name)
            if current.id != app.id:
                raise NotFound(f"app {request.name!r} was destroyed and created anew meanwhile")
            return current, await self._store.destroy_app(current)

        # A refusal (etcd down, a lost lead, a race) changes nothing: all that follows
        # happens only once the app is gone. A restart step or reconcile pass that read
        # the app before cannot write it back (Assign is guarded on the app's key).
        _, instances = await retry_conflicts(attempt, "the app")
        await self._restarts.stop(app.name)
        self._events.forget(app.name)  # queued events of it are never written now
        # An event the writer took between the flush and the forget may have landed.
        try:
            await self._store.trim_events(app.name, 0)
        except StoreError as exc:
            log.warning("app %s destroyed, but its last events may be left: %s", app.name, exc)
        for drain in drains:
            await self._drains.forget(drain.app, drain.url)
        self._reconciler.kick()  # the agents' desired sets lose the app's instances
        self._slug_gc.kick()  # its slugs go unless another app's releases name them
        log.info("app %s (%s) destroyed with %d instance(s)", app.name, app.id, instances)
        return pb.DestroyAppResponse(instances=instances)

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

        slug: SlugRef | None = None
        if request.HasField("slug"):
            slug = SlugRef(request.slug.digest, request.slug.size)
            description = f"Deploy {short_digest(slug.digest)}"
        else:
            description = f"Deploy of {request.dir} (in place)"
        code = Code(commands, settings, slug, "" if slug else request.dir)
        by = caller_name(context)
        nodes = [dict(node.labels) for node in (await self._store.nodes()).values()]

        async def decide(
            app: AppRecord, current: ReleaseRecord | None, formation: dict[str, int]
        ) -> tuple[ReleaseRecord, dict[str, int]]:
            # Before the first code (no release, or only config set before it), web=1,
            # as Heroku does on the first deploy.
            if code_of(current).empty and not formation and "web" in commands:
                formation = {"web": 1}
            for type_ in commands:
                if type_ != RELEASE_PHASE:  # the release phase runs once, never scaled
                    formation.setdefault(type_, 0)
            _check_spread(request.settings, formation, nodes)
            # Config lives with the app: DIR/.env is merged over the current config.
            env = {**(current.env if current else {}), **request.env}
            check_config_vars(env)
            return build_release(app, code, env, description, by), formation

        release = await commit_release(self._store, self._slug_gc, request.app, decide)
        self._events.add(release.app, f"Release v{release.version} created ({', '.join(commands)})")
        self._reconciler.kick()
        self._slug_gc.kick()  # releases past --keep-releases and their slugs go
        return release_pb(release)


def _check_spread(
    settings: Mapping[str, pb.ProcessSettings],
    formation: Mapping[str, int],
    nodes: list[dict[str, str]],
) -> None:
    """Refuse settings whose spread and distinct_hosts cannot both hold for the
    formation on the nodes there are (placement would leave some unplaced for good)."""
    for type_, wanted in sorted(settings.items()):
        problem = spread_conflict(placement_of(wanted), formation.get(type_, 0), nodes)
        if problem:
            raise InvalidInput(f"paas.toml [types.{type_}]: {problem}")


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
        slug=pb.Slug(digest=release.slug.digest, size=release.slug.size) if release.slug else None,
        by=release.by,
        status=cast(pb.ReleaseStatus.ValueType, RELEASE_STATUSES.get(release.status, 0)),
        status_reason=release.status_reason,
        previous=release.previous,
    )
