"""Settings of one agent, as `paas agent` flags give them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NODE_CREDENTIALS_FILE = "node.credentials"


@dataclass(frozen=True)
class AgentConfig:
    join: list[str]  # scheduler replicas, HOST:PORT each
    name: str
    listen: str = "127.0.0.1:7071"  # the agent's own gRPC server (log reading)
    ports: tuple[int, int] = (5000, 5999)  # inclusive range handed to instances as $PORT
    # Shared by every agent of this host, so that no two hand out one port; None: the
    # host's default (ports.default_lock_dir: /run/paas-ports or /tmp/paas-ports).
    port_lock_dir: Path | None = None
    capacity: int = 256  # most instances this node runs at once
    # Kept back from what instances may reserve (the host's memory and cores, reported
    # to the scheduler for placement): bytes and cores.
    reserve_memory: int = 0
    reserve_cpu: float = 0.0
    state_dir: Path = Path("/tmp/paas-agent")
    labels: dict[str, str] = field(default_factory=dict)
    stop_grace: float = 30.0  # SIGTERM -> SIGKILL, seconds
    boot_timeout: float = 60.0  # a web instance must accept on $PORT within this
    heartbeat_interval: float = 1.0
    # A session whose scheduler sends nothing (it heartbeats every second) for this
    # long is ended and the next replica dialled.
    scheduler_silence: float = 5.0
    log_buffer_lines: int = 10_000  # kept per instance
    # The on-disk log spool (STATE_DIR/NAME/logs): rotated files of every line, and
    # how many bytes of lines may wait for its writer thread before lines are dropped.
    log_spool_file_bytes: int = 64 << 20
    log_spool_files: int = 4
    log_spool_backlog_bytes: int = 16 << 20
    # Where the scheduler reaches this agent's API; "" = listen (with its real port if 0).
    advertise: str = ""
    # Crash restarts: the first at once, then base doubling with jitter up to cap;
    # an instance up for reset_after seconds starts again from the first.
    restart_base: float = 1.0
    restart_cap: float = 300.0
    restart_reset_after: float = 600.0
    # How often CPU and memory of each instance are sampled (and reported on change); 0 = never.
    usage_interval: float = 5.0
    # Every child of this process is the agent's (`paas agent`), so the orphan reaper
    # may wait for any zombie child it did not spawn. False when the agent runs inside
    # a process with children of its own (tests, benches): then it waits only for
    # zombies known to be an instance's (see orphans.py).
    own_all_children: bool = True
    # Plaintext to an `--insecure` scheduler, and an unauthenticated API of our own.
    insecure: bool = False
    # The node credentials (CA certificate, node certificate, key; 0600); None: the
    # default, STATE_DIR/NAME/node.credentials, where the first join writes them.
    credentials: Path | None = None

    # A join token (paas1....) for the first start, when the node has no certificate
    # in STATE_DIR/NAME/node.credentials yet (or it expired); later starts need none.
    token: str = ""
    # STATE_DIR/NAME/slugs: past this many bytes of unpacked slugs, the least recently
    # used that no desired instance uses are removed.
    slug_cache_budget: int = 2 << 30
    # One slug unpacks to at most this many bytes of file contents (a bigger one, a tar
    # bomb, is refused).
    slug_max_unpacked: int = 1 << 30

    @property
    def credentials_path(self) -> Path:
        return self.credentials or self.state_dir / self.name / NODE_CREDENTIALS_FILE
