"""What the slug GC keeps and what the budget allows: pure decisions, no I/O.

`releases_to_drop` (beyond --keep-releases per app), `slugs_to_drop` (named by
no kept release, past the upload grace), `budget_problem` (the one line of a
refusal, with the usage per app).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from paas.common.slugs import human_size
from paas.scheduler.store import ReleaseRecord, SlugRecord


def releases_to_drop(
    releases: Iterable[ReleaseRecord], current: Mapping[str, int], keep: int
) -> list[tuple[str, int]]:
    """(app, version) of every release beyond the app's `keep` newest; the current one
    is always kept. An app missing from `current` keeps all (created after `current`
    was read, say; a destroy deletes its own releases)."""
    by_app: dict[str, list[int]] = defaultdict(list)
    for release in releases:
        by_app[release.app].append(release.version)
    drop: list[tuple[str, int]] = []
    for app, versions in sorted(by_app.items()):
        if app not in current:
            continue
        kept = set(sorted(versions, reverse=True)[: max(1, keep)]) | {current[app]}
        drop += [(app, version) for version in sorted(versions) if version not in kept]
    return drop


def slugs_to_drop(
    stored: Mapping[str, SlugRecord],
    releases: Iterable[ReleaseRecord],
    now: float,
    grace: float,
) -> list[str]:
    """Digests no release in `releases` names, stored longer than `grace` seconds ago
    (a slug just uploaded waits for the deploy that names it)."""
    named = {release.slug.digest for release in releases if release.slug}
    return sorted(
        digest
        for digest, record in stored.items()
        if digest not in named and now - record.created_at >= grace
    )


def usage_by_app(
    stored: Mapping[str, SlugRecord], releases: Iterable[ReleaseRecord]
) -> dict[str, int]:
    """Bytes of the slugs each app's releases name (a shared slug counts for each), and
    under "" those no release names."""
    named: dict[str, set[str]] = defaultdict(set)
    for release in releases:
        if release.slug and release.slug.digest in stored:
            named[release.app].add(release.slug.digest)
    usage = {app: sum(stored[d].size for d in digests) for app, digests in named.items()}
    every = set().union(*named.values()) if named else set()
    loose = sum(record.size for digest, record in stored.items() if digest not in every)
    if loose:
        usage[""] = loose
    return usage


def budget_problem(
    size: int,
    stored: Mapping[str, SlugRecord],
    releases: Iterable[ReleaseRecord],
    budget: int,
    reserved: int = 0,
) -> str | None:
    """None if a new slug of `size` fits in `budget` beside what is stored and what
    uploads under way have `reserved`; else the one line that says why not."""
    used = sum(record.size for record in stored.values()) + reserved
    if used + size <= budget:
        return None
    parts = [
        f"{app or 'not deployed'} {human_size(bytes_)}"
        for app, bytes_ in sorted(
            usage_by_app(stored, releases).items(), key=lambda item: (-item[1], item[0])
        )
    ]
    if reserved:
        parts.append(f"uploads under way {human_size(reserved)}")
    detail = f" ({', '.join(parts)})" if parts else ""
    return (
        f"slug budget {human_size(budget)} would be exceeded by this slug of "
        f"{human_size(size)}: {human_size(used)} used{detail}"
    )
