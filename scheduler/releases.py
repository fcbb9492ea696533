"""How a new release is made, the one way Deploy, SetConfig and Rollback make one.

A release is immutable and numbered: code (a slug or an --in-place dir, the
Procfile's commands, per type settings) and config vars (its env). Each new one
takes the next version, names the release in force when it was made
(`previous`) and who made it (`by`, the admin credential's name):

    code = code_of(current)                          # what the current release runs
    release = build_release(app, code, env, "Set FOO config vars", by, ROLLING)
    release = await commit_release(store, slug_gc, "shop", decide)   # the CAS, retried

Pure decisions beside one writer: `build_release`, `rollback_target` and
`rollout_progress` read nothing and write nothing; `commit_release` reads the
app afresh on every attempt, asks `decide` what to write and writes it with
store.add_release (a compare on the app, its formation and the slug's meta).
Config values never reach a log line or an event from here: descriptions name
keys only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from paas.common.errors import InvalidInput
from paas.common.pki import PKIError, Role
from paas.common.slugs import short_digest
from paas.common.tls import peer_identity
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.errors import NotFound, Refused
from paas.scheduler.guard import Context
from paas.scheduler.lookup import require_app
from paas.scheduler.sluggc import SlugCollector
from paas.scheduler.store import (
    AppRecord,
    InstanceRecord,
    ReleaseRecord,
    SlugRef,
    Store,
    next_version,
)

# ReleaseRecord.status values.
ROLLING = "rolling"
SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass(frozen=True)
class Code:
    """What a release runs: a slug or a dir (neither before the first deploy), the
    Procfile's commands and the settings per process type."""

    commands: dict[str, str] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    slug: SlugRef | None = None
    dir: str = ""

    @property
    def empty(self) -> bool:
        """No code at all: config set before any deploy (as on Heroku)."""
        return self.slug is None and not self.dir and not self.commands


def code_of(release: ReleaseRecord | None) -> Code:
    if release is None:
        return Code()
    return Code(dict(release.commands), dict(release.settings), release.slug, release.dir)


def build_release(
    app: AppRecord,
    code: Code,
    env: Mapping[str, str],
    description: str,
    by: str,
    status: str = ROLLING,
    now: float | None = None,
) -> ReleaseRecord:
    """The app's next release: the next version never used (a failed release's stays
    taken), `previous` the one in force; rolling (rollout.py replaces the instances,
    then marks it succeeded or failed)."""
    return ReleaseRecord(
        app=app.name,
        version=next_version(app),
        dir="" if code.slug else code.dir,
        commands=dict(code.commands),
        env=dict(env),
        created_at=time.time() if now is None else now,
        description=description,
        settings=dict(code.settings),
        slug=code.slug,
        by=by,
        status=status,
        previous=app.release,
    )


def config_description(set_: Iterable[str], unset: Iterable[str]) -> str:
    """`Set FOO, BAR config vars`, `Unset FOO config vars`, or both: keys, never values."""
    parts = []
    set_keys, unset_keys = list(set_), list(unset)
    if set_keys:
        parts.append(f"Set {', '.join(set_keys)} config vars")
    if unset_keys:
        parts.append(f"Unset {', '.join(unset_keys)} config vars")
    return "; ".join(parts)


def caller_name(context: Context) -> str:
    """The admin credential's name of the caller; "" with TLS off (no certificate)."""
    try:
        identity = peer_identity(context)
    except PKIError:
        return ""
    if identity is None or identity.role is not Role.ADMIN:
        return ""
    return identity.name


def rollback_target(
    app: AppRecord,
    kept: Iterable[int],
    version: int,
    keep_releases: int | None = None,
    previous: int = 0,
) -> int:
    """The version `paas rollback [vN]` goes back to, among the `kept` versions; 0 asks
    for the one before the current: the release that was in force when the current one
    was made (`previous`; a failed release in between is skipped), else current - 1.
    NotFound names what is wrong: a version never made, or one no longer kept
    (--keep-releases)."""
    kept_versions = set(kept)
    newest = max([app.release, *kept_versions], default=0)
    if app.release == 0:
        raise NotFound(f"{app.name} has no releases yet: nothing to roll back to")
    wanted = version or previous or app.release - 1
    if wanted in kept_versions:
        return wanted
    if version == 0 and wanted == 0:
        raise NotFound(f"{app.name} has only v{app.release}: there is no release before it")
    if wanted > newest:
        raise NotFound(f"{app.name} has no release v{wanted} (`paas releases` lists them)")
    limit = f" (the scheduler keeps the last {keep_releases})" if keep_releases else ""
    raise NotFound(
        f"release v{wanted} of {app.name} is no longer kept{limit}: `paas releases` lists "
        "those one can roll back to"
    )


def check_rollback_code(target: ReleaseRecord) -> None:
    """A release one can roll back to has code: a config-only one (made before the
    first deploy) would stop every process."""
    if Code(target.commands, target.settings, target.slug, target.dir).empty:
        raise Refused(
            f"v{target.version} of {target.app} has no code (it was made before the first "
            "deploy): rolling back to it would stop every process"
        )


def rollout_progress(
    release: ReleaseRecord,
    formation: Mapping[str, int],
    instances: Iterable[InstanceRecord],
    is_up: Callable[[InstanceRecord], bool],
) -> tuple[int, int]:
    """(instances the formation asks for over the release's process types, of them
    assigned to this release and reported up)."""
    wanted = sum(count for type_, count in formation.items() if type_ in release.commands)
    replaced = sum(
        1
        for record in instances
        if record.app == release.app
        and record.release == release.version
        and record.name.type in release.commands
        and is_up(record)
    )
    return wanted, min(replaced, wanted)


# What `commit_release` asks of its caller on each attempt: given the app as read now,
# its current release and its formation, the release to write and the formation beside it.
Decide = Callable[
    [AppRecord, ReleaseRecord | None, dict[str, int]],
    Awaitable[tuple[ReleaseRecord, dict[str, int]]],
]


async def commit_release(
    store: Store,
    slug_gc: SlugCollector,
    app_name: str,
    decide: Decide,
    slug_missing: str = "is not uploaded (UploadSlug first)",
) -> ReleaseRecord:
    """Read the app, ask `decide`, write its release as the app's current one; again
    (at most cas.CONFLICT_RETRIES times) when the app or its formation changed meanwhile.
    A release naming a slug is written with GC passes held off, after checking the slug
    is stored whole and of the size it names (InvalidInput otherwise; `slug_missing`
    follows "slug DIGEST" when it is not stored)."""

    async def attempt() -> ReleaseRecord:
        app = await require_app(store, app_name)
        current = await store.release(app.name, app.release) if app.release else None
        formation, formation_rev = await store.formation(app.name)
        release, formation = await decide(app, current, formation)
        guard = slug_gc.references() if release.slug else contextlib.nullcontext()
        async with guard:
            if release.slug is not None:
                await _check_slug(store, release.slug, slug_missing)
            # The txn also requires the slug's meta: a slug deleted meanwhile is refused.
            await store.add_release(app, release, formation, formation_rev)
        return release

    return await retry_conflicts(attempt, "the app")


async def _check_slug(store: Store, slug: SlugRef, missing: str) -> None:
    stored = await store.slug(slug.digest)
    if stored is None:
        raise InvalidInput(f"slug {short_digest(slug.digest)} {missing}")
    if stored.size != slug.size:
        raise InvalidInput(
            f"slug {short_digest(slug.digest)} is stored with {stored.size} bytes, not {slug.size}"
        )
