"""Join tokens end to end: real etcd, a real TLS scheduler, real agents joining by token.

A token joins one agent; used up, expired, revoked, unknown and impostor tokens end
the agent with exit 1 and one line, changing nothing in etcd; two agents racing for
one single-use token: one joins; a joined node restarts without a token; and with
6-second node certificates (and 9-second serving certificates), ten renewals under
a running formation restart no instance and drop no session, and the agent and the
scheduler serve their newest certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from paas.common import pki
from paas.common.jointoken import JoinToken, join_address_of, new_token
from paas.common.ports import free_port
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import Result, etcd_keys, paas, wait_for

pytestmark = pytest.mark.integration

STARTUP = 120.0  # generous: CI runs on a loaded machine


@dataclass
class Agent:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    state_dir: Path
    listen: str

    @property
    def credentials(self) -> Path:
        return self.state_dir / self.name / "node.credentials"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class TLSCluster:
    """etcd, one scheduler with --tls-dir, admin credentials for the CLI, and agents."""

    root: Path
    etcd: str
    tls_dir: Path
    node_cert_ttl: str = "24h"
    serving_cert_ttl: str = "30d"
    address: str = ""
    scheduler: asyncio.subprocess.Process | None = None
    agents: list[Agent] = field(default_factory=list)

    @property
    def scheduler_log(self) -> Path:
        return self.root / "scheduler.log"

    @property
    def env(self) -> dict[str, str]:
        return {"PAAS_CREDENTIALS": str(self.tls_dir / "admin.credentials")}

    async def start(self) -> None:
        ca = pki.CertificateAuthority.create()
        ca.save(self.tls_dir)
        admin = ca.issue_credentials(pki.Identity(pki.Role.ADMIN, "test"), dt.timedelta(hours=1))
        pki.write_credentials(self.tls_dir / "admin.credentials", admin)
        self.address = f"127.0.0.1:{free_port()}"
        self.scheduler = await _spawn(
            self.scheduler_log,
            "scheduler", "--etcd", self.etcd, "--listen", self.address,
            "--tls-dir", str(self.tls_dir), "--node-grace", "3",
            "--node-cert-ttl", self.node_cert_ttl, "--serving-cert-ttl", self.serving_cert_ttl,
        )  # fmt: skip

        async def answers() -> bool:
            return (await self.cli("tokens", "--json")).returncode == 0

        await wait_for(answers, timeout=STARTUP, interval=0.3, what="the scheduler to answer")

    async def cli(self, *args: str, app: str | None = None) -> Result:
        return await paas(self.address, *args, app=app, env=self.env)

    async def token(self, *args: str) -> str:
        made = await self.cli("tokens", "create", *args)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    async def agent(self, name: str, token: str | None, state_dir: Path | None = None) -> Agent:
        state = state_dir or self.root / "agents"
        listen = f"127.0.0.1:{free_port()}"
        log = self.root / f"{name}.{len(self.agents)}.log"
        args = [
            "agent", "--join", self.address, "--name", name, "--listen", listen,
            "--state-dir", str(state), "--ports", "30000-39999", "--stop-grace", "2",
        ]  # fmt: skip
        if token is not None:
            args += ["--token", token]
        agent = Agent(name, await _spawn(log, *args), log, state, listen)
        self.agents.append(agent)
        return agent

    async def nodes(self) -> dict[str, str]:
        result = await self.cli("nodes", "--json")
        return {node["name"]: node["state"] for node in result.json()}

    async def wait_ready(self, name: str) -> None:
        async def ready() -> bool:
            return (await self.nodes()).get(name) == "ready"

        await wait_for(ready, timeout=STARTUP, interval=0.3, what=f"node {name} ready")

    async def stop(self) -> None:
        for process in [a.process for a in self.agents] + [self.scheduler]:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in [a.process for a in self.agents] + [self.scheduler]:
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def _spawn(log: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


async def _cluster(
    tmp_path: Path, etcd: str, node_cert_ttl: str, serving_cert_ttl: str = "30d"
) -> AsyncIterator[TLSCluster]:
    cluster = TLSCluster(tmp_path, etcd, tmp_path / "tls", node_cert_ttl, serving_cert_ttl)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
async def tls_cluster(tmp_path: Path, etcd: str) -> AsyncIterator[TLSCluster]:
    async for cluster in _cluster(tmp_path, etcd, "24h"):
        yield cluster


async def refused(agent: Agent) -> str:
    """The one line an agent that was refused said, after it exited 1."""
    code = await asyncio.wait_for(agent.process.wait(), STARTUP)
    output = agent.output()
    assert code == 1, f"agent {agent.name} exited {code}: {output}"
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "Traceback" not in output, output
    return errors[0]


async def durable_state(cluster: TLSCluster) -> dict[str, bytes]:
    """What etcd holds, less the scheduler's own event log (not about the join)."""
    keys = await etcd_keys(cluster.etcd)
    return {k: v for k, v in keys.items() if not k.startswith("/paas/events/")}


def ca_digest(cluster: TLSCluster) -> str:
    return pki.ca_digest(pki.load_cert_pem((cluster.tls_dir / "ca.crt").read_bytes()))


def served_certificate(address: str) -> x509.Certificate:
    """The certificate a TLS server at `address` presents (verifying nothing)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# ------------------------------------------------------------------ joining


async def test_a_token_joins_one_agent_and_a_second_use_is_refused(
    tls_cluster: TLSCluster,
) -> None:
    token = await tls_cluster.token()
    first = await tls_cluster.agent("node-1", token)
    await tls_cluster.wait_ready("node-1")
    mode = stat.S_IMODE(first.credentials.stat().st_mode)
    assert mode == 0o600
    held = pki.read_credentials(first.credentials)
    assert held.identity == pki.Identity(pki.Role.NODE, "node-1")
    listed = (await tls_cluster.cli("tokens", "--json")).json()
    assert [(t["uses"], t["uses_left"], t["revoked"]) for t in listed] == [(1, 0, False)]
    assert token.split(".")[-1] not in (await tls_cluster.cli("tokens", "--json")).stdout

    before = await durable_state(tls_cluster)
    second = await tls_cluster.agent("node-2", token)
    assert "used up" in await refused(second)
    assert await durable_state(tls_cluster) == before
    assert not second.credentials.exists()
    assert "node-2" not in await tls_cluster.nodes()


async def test_expired_revoked_and_unknown_tokens_are_refused_each_saying_which(
    tls_cluster: TLSCluster,
) -> None:
    expiring = await tls_cluster.token("--ttl", "1s")
    revoked = await tls_cluster.token()
    revoked_id = revoked.split(".")[2]
    assert (await tls_cluster.cli("tokens", "revoke", revoked_id)).returncode == 0
    unknown = str(new_token(ca_digest(tls_cluster)))
    await asyncio.sleep(1.5)  # the token's lifetime is the point here, not a wait on state
    before = await durable_state(tls_cluster)
    agents = [
        (await tls_cluster.agent("node-e", expiring), "expired"),
        (await tls_cluster.agent("node-r", revoked), "revoked"),
        (await tls_cluster.agent("node-u", unknown), "unknown"),
    ]
    for agent, word in agents:
        line = await refused(agent)
        assert word in line, line
        assert not agent.credentials.exists()
    assert await durable_state(tls_cluster) == before
    states = {t["id"]: t for t in (await tls_cluster.cli("tokens", "--json")).json()}
    assert states[revoked_id]["revoked"] is True


async def test_a_token_pinning_another_ca_finds_an_impostor_and_sends_nothing(
    tls_cluster: TLSCluster,
) -> None:
    real: JoinToken = new_token(pki.CertificateAuthority.create().digest)
    before = await durable_state(tls_cluster)
    agent = await tls_cluster.agent("node-x", str(real))
    line = await refused(agent)
    assert "impostor" in line and "nothing was sent" in line, line
    assert await durable_state(tls_cluster) == before
    assert "node-x" not in tls_cluster.scheduler_log.read_text()


async def test_two_agents_racing_for_one_single_use_token_one_joins(
    tls_cluster: TLSCluster,
) -> None:
    token = await tls_cluster.token()
    racers = [await tls_cluster.agent(f"node-{i}", token) for i in (1, 2)]

    async def settled() -> list[Agent] | None:
        nodes = await tls_cluster.nodes()
        exited = [a for a in racers if a.process.returncode is not None]
        joined = [a for a in racers if nodes.get(a.name) == "ready"]
        return joined if len(exited) == 1 and len(joined) == 1 else None

    joined = await wait_for(settled, timeout=STARTUP, interval=0.3, what="one join, one refusal")
    loser = next(a for a in racers if a is not joined[0])
    assert "used up" in await refused(loser)
    assert joined[0].process.returncode is None


async def test_a_joined_node_restarts_without_a_token(tls_cluster: TLSCluster) -> None:
    agent = await tls_cluster.agent("node-1", await tls_cluster.token())
    await tls_cluster.wait_ready("node-1")
    serial = pki.read_credentials(agent.credentials).serial
    agent.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(agent.process.wait(), 30) == 0

    again = await tls_cluster.agent("node-1", None, agent.state_dir)
    await tls_cluster.wait_ready("node-1")
    assert again.process.returncode is None
    assert pki.read_credentials(again.credentials).serial == serial


async def test_a_first_start_without_a_token_says_how_to_join(tls_cluster: TLSCluster) -> None:
    agent = await tls_cluster.agent("node-1", None)
    line = await refused(agent)
    assert "--token" in line and "paas tokens create" in line, line


# ------------------------------------------------------------------ renewal


@pytest.fixture
async def short_lived(tmp_path: Path, etcd: str) -> AsyncIterator[TLSCluster]:
    async for cluster in _cluster(tmp_path, etcd, "6s", "9s"):
        yield cluster


RENEWALS = 10


async def test_ten_renewals_restart_no_instance_and_drop_no_session(
    short_lived: TLSCluster, tmp_path: Path
) -> None:
    cluster = short_lived
    agent = await cluster.agent("node-1", await cluster.token())
    await cluster.wait_ready("node-1")
    first = served_certificate(agent.listen)
    scheduler_first = served_certificate(cluster.address)

    app = tmp_path / "app"
    app.mkdir()
    (app / "Procfile").write_text("worker: sleep 1000\nclock: sleep 1001\n")
    assert (await cluster.cli("apps", "create", "shop")).returncode == 0
    deployed = await cluster.cli("deploy", str(app), app="shop")
    assert deployed.returncode == 0, deployed.stderr
    assert (await cluster.cli("scale", "worker=2", "clock=1", app="shop")).returncode == 0

    async def pids() -> dict[str, int] | None:
        rows: list[dict[str, Any]] = (await cluster.cli("ps", "--json", app="shop")).json()
        up = {row["name"]: row["pid"] for row in rows if row["state"] == "up"}
        return up if len(up) == 3 and len(rows) == 3 else None

    running = await wait_for(pids, timeout=STARTUP, interval=0.3, what="the formation up")

    def renewals() -> int:
        return agent.output().count("node certificate renewed")

    # Ten renewals of a 6 s certificate take about 40 s.
    await wait_for(
        lambda: renewals() >= RENEWALS, timeout=180, interval=0.5, what=f"{RENEWALS} renewals"
    )
    assert await pids() == running, "an instance restarted"
    log = cluster.scheduler_log.read_text()
    assert log.count("agent node-1 connected") == 1, "the session was dropped"
    assert agent.output().count("session open with scheduler") == 1, "the agent reconnected"
    assert f"({RENEWALS} this session)" in log
    # The scheduler re-issued its own certificate meanwhile (9 s ones), and serves it
    # without a restart.
    assert log.count("serving certificate renewed") >= 4
    assert served_certificate(cluster.address).serial_number != scheduler_first.serial_number
    assert cluster.scheduler is not None and cluster.scheduler.returncode is None

    # The agent's own server serves the certificate its file holds, the newest (polled:
    # a renewal may land between the two reads).
    def serves_the_newest() -> bool:
        served = served_certificate(agent.listen)
        held = pki.read_credentials(agent.credentials)
        return served.serial_number != first.serial_number and pki.serial_of(served) == held.serial

    await wait_for(serves_the_newest, timeout=30, what="the agent to serve its newest certificate")
    assert (await cluster.nodes())["node-1"] == "ready"
    # Long past the first certificate's expiry: the CLI still sees the node's reports.
    assert await pids() == running


async def test_the_join_port_answers_only_join_without_a_certificate(
    tls_cluster: TLSCluster,
) -> None:
    joins = join_address_of(served_certificate(tls_cluster.address))
    assert joins is not None and joins != tls_cluster.address
    ca = (tls_cluster.tls_dir / "ca.crt").read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    before = await durable_state(tls_cluster)
    async with grpc.aio.secure_channel(joins, credentials) as channel:
        stub: Any = pb_grpc.SchedulerStub(channel)
        for call, request in [
            (stub.CreateToken, pb.CreateTokenRequest()),
            (stub.ListTokens, pb.ListTokensRequest()),
            (stub.ListApps, pb.ListAppsRequest()),
            (stub.Scale, pb.ScaleRequest(app="shop", changes=[pb.FormationChange(type="web")])),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused_call:
                await call(request, timeout=10)
            assert refused_call.value.code() == grpc.StatusCode.UNAUTHENTICATED
        session = stub.Session()
        with pytest.raises(grpc.aio.AioRpcError) as refused_session:
            await session.read()
        assert refused_session.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Join itself is answered there: a token it does not know is refused as such.
        unknown = str(new_token(ca_digest(tls_cluster)))
        csr = pki.make_csr(pki.generate_key(), pki.Identity(pki.Role.NODE, "node-9"))
        with pytest.raises(grpc.aio.AioRpcError) as refused_join:
            await stub.Join(pb.JoinRequest(token=unknown, node="node-9", csr=csr), timeout=10)
        assert refused_join.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "unknown" in (refused_join.value.details() or "")
    assert await durable_state(tls_cluster) == before


async def test_a_node_whose_certificate_expired_while_off_joins_again_with_a_new_token(
    short_lived: TLSCluster,
) -> None:
    cluster = short_lived
    agent = await cluster.agent("node-1", await cluster.token())
    await cluster.wait_ready("node-1")
    agent.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(agent.process.wait(), 30) == 0
    held = pki.read_credentials(agent.credentials)

    def expired() -> bool:
        return dt.datetime.now(dt.UTC) > held.expires

    await wait_for(expired, timeout=30, interval=0.2, what="the node certificate to expire")
    off_too_long = await cluster.agent("node-1", None, agent.state_dir)
    line = await refused(off_too_long)
    assert "expired" in line and "paas tokens create" in line, line

    again = await cluster.agent("node-1", await cluster.token(), agent.state_dir)
    await cluster.wait_ready("node-1")
    assert again.process.returncode is None
    assert pki.read_credentials(again.credentials).serial != held.serial
