"""Per process type supervision settings of a release: checked, stored as JSON, sent on.

Pure: the JSON form is ProcessSettings' own (protobuf's JSON mapping), so what
the CLI sends is what the agent receives.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format

from paas.common.placement import (
    PlacementError,
    TypePlacement,
    parse_constraint,
    parse_label,
)
from paas.common.rollouts import MAX_MIN_HEALTHY, max_parallel
from paas.proto import paas_pb2 as pb

# Generous ceilings: past them a typo is likelier than intent.
MAX_GRACE = 3600.0
MAX_BOOT = 3600.0
MAX_BACKOFF = 86400.0
MAX_PROGRESS_DEADLINE = 86400.0
MAX_HEALTH_PATH = 1024
# An HTTP path as a request line carries it: no spaces, no control characters.
_HEALTH_PATH = re.compile(r"/[\x21-\x7e]*")


def settings_from(data: dict[str, Any]) -> pb.ProcessSettings:
    settings = pb.ProcessSettings()
    json_format.ParseDict(data, settings)
    return settings


def settings_problem(settings: pb.ProcessSettings, node_grace: float) -> str | None:
    """What is wrong with `settings`, or None."""
    bounds = [
        ("stop_grace", settings.stop_grace, MAX_GRACE),
        ("boot_timeout", settings.boot_timeout, MAX_BOOT),
        ("backoff_cap", settings.backoff_cap, MAX_BACKOFF),
        ("backoff_reset", settings.backoff_reset, MAX_BACKOFF),
        ("stop_after_disconnected", settings.stop_after_disconnected, MAX_BACKOFF),
    ]
    for name, value, ceiling in bounds:
        if not 0 <= value <= ceiling:
            return f"{name} must be between 0 and {ceiling:g} seconds, got {value:g}"
    try:
        placement_of(settings)
    except PlacementError as exc:
        return str(exc)
    problem = rollout_problem(settings)
    if problem:
        return problem
    if settings.stop_after_disconnected >= node_grace:
        # Only a limit below the grace stops the old copy before the new one starts.
        return (
            f"stop_after_disconnected must be below the node grace ({node_grace:g}s) to "
            f"guarantee at most one copy, got {settings.stop_after_disconnected:g}"
        )
    return None


def placement_of(settings: pb.ProcessSettings) -> TypePlacement:
    """The placement rules in `settings`; PlacementError naming the key if one is bad."""
    if settings.memory < 0:
        raise PlacementError(f"memory: must not be negative, got {settings.memory}")
    if not 0 <= settings.cpu < 1e6:  # NaN fails this too
        raise PlacementError(f"cpu: must be a number of cores from 0, got {settings.cpu:g}")
    return TypePlacement(
        constraints=tuple(parse_constraint(c) for c in settings.constraints),
        spread=parse_label(settings.spread) if settings.spread else "",
        distinct_hosts=settings.distinct_hosts,
        memory=settings.memory,
        cpu=settings.cpu,
    )


def rollout_problem(settings: pb.ProcessSettings) -> str | None:
    """What is wrong with the health check and rolling replacement settings, or None."""
    health = settings.health
    if health and (len(health) > MAX_HEALTH_PATH or not _HEALTH_PATH.fullmatch(health)):
        return (
            f'health must be an HTTP path starting with "/" (at most {MAX_HEALTH_PATH} '
            f"characters, no spaces), got {health[:80]!r}"
        )
    if settings.HasField("min_healthy"):
        value = settings.min_healthy
        if not 0 <= value <= MAX_MIN_HEALTHY:
            return f"min_healthy must be between 0 and {MAX_MIN_HEALTHY:g} seconds, got {value:g}"
    if not 0 <= settings.progress_deadline <= MAX_PROGRESS_DEADLINE:
        return (
            f"progress_deadline must be between 0 and {MAX_PROGRESS_DEADLINE:g} seconds, "
            f"got {settings.progress_deadline:g}"
        )
    try:
        max_parallel(settings.max_parallel, 1)
    except ValueError as exc:
        return str(exc)
    return None
