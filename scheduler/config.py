"""Settings of one scheduler replica, as `paas scheduler` flags give them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from paas.common.pki import SCHEDULER_TTL
from paas.common.slugs import DEFAULT_MAX_SLUG_SIZE
from paas.scheduler.etcd_access import EtcdAccess

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
    etcd_access: EtcdAccess = field(default_factory=EtcdAccess)  # TLS and user; none: plaintext
    etcd_check: float = 15.0  # seconds a secured start-up waits to get into etcd, then exits
    # The cluster CA (`paas cluster init --dir`); None only with `insecure`.
    tls_dir: Path | None = None
    insecure: bool = False  # plaintext and no authentication, said loudly at start
    sans: tuple[str, ...] = ()  # more names for the serving certificate
    # Seconds a node certificate lives (signed at Join and at each renewal, which the
    # agent asks for at two thirds of it).
    node_cert_ttl: float = 24 * 3600.0
    # Seconds the replica's own serving certificate lives; it re-issues itself one at
    # two thirds of that and reloads it without a restart.
    # Where agents without a certificate yet call Join (no client certificate asked
    # for there); "" = the host of `listen`, any free port (its certificate names it).
    join_listen: str = ""
    serving_cert_ttl: float = SCHEDULER_TTL.total_seconds()
    max_slug_size: int = DEFAULT_MAX_SLUG_SIZE  # bytes, compressed, of one slug
    slug_budget: int = DEFAULT_SLUG_BUDGET  # bytes of every slug together
    keep_releases: int = DEFAULT_KEEP_RELEASES  # per app, for rollback; the current always
    # An uploaded slug no release names yet is kept this long (for the deploy to come).
    slug_grace: float = DEFAULT_SLUG_GRACE
