"""Settings of one scheduler replica, as `paas scheduler` flags give them."""

from __future__ import annotations

from dataclasses import dataclass, field

from paas.common.slugs import DEFAULT_MAX_SLUG_SIZE

DEFAULT_SLUG_BUDGET = 1024 * 1024 * 1024  # well under etcd's 2 GiB default quota
DEFAULT_KEEP_RELEASES = 10
DEFAULT_SLUG_GRACE = 600.0


@dataclass(frozen=True)
class SchedulerConfig:
    etcd: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])  # HOST:PORT each
    listen: str = "127.0.0.1:7070"
    # Advertised to agents and the CLI when this replica is leader; defaults to `listen`.
    advertise: str = ""
    node_grace: float = 10.0  # seconds an agent may be silent before its node is lost
    leader_ttl: int = 5  # seconds of the election lease
    replica_id: str = ""  # defaults to a random id
    max_slug_size: int = DEFAULT_MAX_SLUG_SIZE  # bytes, compressed, of one slug
    slug_budget: int = DEFAULT_SLUG_BUDGET  # bytes of every slug together
    keep_releases: int = DEFAULT_KEEP_RELEASES  # per app, for rollback; the current always
    # An uploaded slug no release names yet is kept this long (for the deploy to come).
    slug_grace: float = DEFAULT_SLUG_GRACE
