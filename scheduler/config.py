"""Settings of one scheduler replica, as `paas scheduler` flags give them."""

from __future__ import annotations

from dataclasses import dataclass, field

from paas.scheduler.etcd_access import EtcdAccess


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
