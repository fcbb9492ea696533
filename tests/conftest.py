"""Fixtures shared by all tests: `cluster` is a real local cluster for integration tests,
`etcd` a bare single-member etcd for tests of the store, `leading_store` a Store on it
whose replica leads (so its writes are allowed), `scheduler` a raw gRPC stub on the
`cluster`'s scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from paas.cli.localcluster import LocalCluster, etcd_binary
from paas.common.ports import free_port
from paas.proto import paas_pb2_grpc as pb_grpc
from paas.scheduler.leader import Leadership
from paas.scheduler.store import Store
from tests.etcd_pki import CA, issue, make_ca
from tests.helpers import wait_for

if TYPE_CHECKING:
    from paas.proto.paas_pb2_grpc import SchedulerAsyncStub


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """etcd, a scheduler and 3 agents (node-1..3), all ready; stopped at teardown.

    Node grace is short (3 s) so node-loss tests are quick. Logs of every part
    are kept in the test's tmp_path/logs for a failing test to look at.
    """
    async with LocalCluster(
        agents=3, node_grace=3.0, stop_grace=2.0, log_to=tmp_path / "logs"
    ) as started:
        yield started


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    """A real etcd on free ports with a temporary data dir; its client endpoint."""
    client, peer = free_port(), free_port()
    endpoint = f"127.0.0.1:{client}"
    argv = [
            etcd_binary(),
            "--data-dir", str(tmp_path / "etcd"),
            "--listen-client-urls", f"http://{endpoint}",
            "--advertise-client-urls", f"http://{endpoint}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=(tmp_path / "etcd.log").open("wb")
    )
    try:
        yield endpoint
    finally:
        process.kill()
        process.wait()


@dataclass
class TLSEtcd:
    """An etcd that serves only https and wants a client certificate from `ca`."""

    endpoint: str  # 127.0.0.1:PORT
    ca: CA
    client_cert: Path  # CN "root": etcd's user once auth is on
    client_key: Path
    directory: Path
    argv: list[str]
    process: subprocess.Popen[bytes]

    def restart(self) -> None:
        """Kill etcd and start it again on the same data (it forgets auth tokens)."""
        self.process.kill()
        self.process.wait()
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=(self.directory / "etcd.log").open("ab")
        )

    def etcdctl(self, *args: str, user: str = "") -> subprocess.CompletedProcess[str]:
        argv = [
            str(Path(etcd_binary()).with_name("etcdctl")),
            f"--endpoints=https://{self.endpoint}",
            f"--cacert={self.ca.path}",
            f"--cert={self.client_cert}",
            f"--key={self.client_key}",
            *([f"--user={user}"] if user else []),
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[TLSEtcd]:
    """A real etcd with --client-cert-auth, certificates from a CA made in the test."""
    pki = tmp_path / "etcd-pki"
    ca = make_ca(pki)
    server_cert, server_key = issue(ca, pki, "etcd", server=True)
    client_cert, client_key = issue(ca, pki, "root")
    client, peer = free_port(), free_port()
    endpoint = f"127.0.0.1:{client}"
    argv = [
            etcd_binary(),
            "--data-dir", str(tmp_path / "etcd"),
            "--listen-client-urls", f"https://{endpoint}",
            "--advertise-client-urls", f"https://{endpoint}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--client-cert-auth",
            "--trusted-ca-file", str(ca.path),
            "--cert-file", str(server_cert),
            "--key-file", str(server_key),
            "--auth-token", "simple",
            "--unsafe-no-fsync",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=(tmp_path / "etcd.log").open("wb")
    )
    etcd = TLSEtcd(endpoint, ca, client_cert, client_key, pki, argv, process)
    try:
        yield etcd
    finally:
        etcd.process.kill()
        etcd.process.wait()


@pytest.fixture
async def leading_store(etcd: str) -> AsyncIterator[Store]:
    """A store whose replica leads, so that its writes are allowed."""
    store = Store([etcd])
    leadership = Leadership(store, "a", "a:7070", ttl=5, on_change=lambda _: None)
    election = asyncio.create_task(leadership.run())
    try:
        await wait_for(lambda: leadership.is_leader, timeout=30, what="the replica to lead")
        yield store
    finally:
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        await store.close()


@pytest.fixture
async def scheduler(cluster: LocalCluster) -> AsyncIterator[SchedulerAsyncStub]:
    """A raw Scheduler stub on the cluster's scheduler, as its admin: requests as no CLI
    would send them."""
    async with cluster.channel() as channel:
        yield pb_grpc.SchedulerStub(channel)
