"""Mutual TLS with real processes: who is let in, who is refused, and that a refusal is one
line (or PERMISSION_DENIED / UNAUTHENTICATED at the API) with nothing changed in etcd.

One cluster (two scheduler replicas, one agent) serves the whole module: each test
only reads, or makes a credential of its own name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from paas.cli.localcluster import LocalCluster
from paas.common import pki
from paas.common.grpcutil import CHANNEL_OPTIONS
from paas.common.pki import Credentials, Identity, Role
from paas.common.ports import free_port
from paas.common.tls import dial
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc
from tests.helpers import Result, etcd_keys, paas

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    logs = tmp_path_factory.mktemp("tls-logs")
    async with LocalCluster(
        agents=1, schedulers=2, node_grace=3.0, stop_grace=2.0, log_to=logs
    ) as started:
        yield started


@pytest.fixture
def ca(cluster: LocalCluster) -> pki.CertificateAuthority:
    """The cluster's own CA, to mint what an attacker or a test needs."""
    return pki.CertificateAuthority.load(cluster.tls_dir)


def write(path: Path, creds: Credentials) -> Path:
    pki.write_credentials(path, creds)
    return path


def one_line(result: Result) -> str:
    """The single `error: ...` line a refused command prints, after checking exit 1."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


async def as_(creds_file: Path | None, cluster: LocalCluster, *args: str) -> Result:
    """`paas ARGS` presenting `creds_file` (None: PAAS_INSECURE=1)."""
    env = {"PAAS_INSECURE": "1"} if creds_file is None else {"PAAS_CREDENTIALS": str(creds_file)}
    return await paas(cluster.scheduler_address, *args, env=env)


async def unchanged(cluster: LocalCluster, before: dict[str, bytes]) -> None:
    assert await etcd_keys(cluster.etcd_endpoint) == before


def scale_request() -> pb.ScaleRequest:
    return pb.ScaleRequest(
        app="shop", changes=[pb.FormationChange(type="web", op=pb.FormationChange.SET, count=1)]
    )


async def code_of(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """What ListApps answers on `channel` (OK when it succeeds)."""
    try:
        await pb_grpc.SchedulerStub(channel).ListApps(pb.ListAppsRequest(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ the CLI refused


async def test_without_credentials_the_cli_says_where_it_looked(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(await as_(tmp_path / "none", cluster, "apps", "create", "shop"))
    assert f"no credentials at {tmp_path / 'none'}" in line and "paas up" in line
    await unchanged(cluster, before)


async def test_credentials_from_another_ca_fail_the_handshake(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    other = pki.CertificateAuthority.create()
    foreign = write(
        tmp_path / "foreign",
        other.issue_credentials(Identity(Role.ADMIN, "admin"), dt.timedelta(hours=1)),
    )
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(await as_(foreign, cluster, "apps", "create", "shop"))
    assert "TLS handshake failed" in line
    async with dial(cluster.scheduler_addresses[0], pki.read_credentials(foreign)) as channel:
        assert await code_of(channel) == grpc.StatusCode.UNAVAILABLE
    await unchanged(cluster, before)


async def test_a_plaintext_client_on_the_tls_port_is_refused(cluster: LocalCluster) -> None:
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(await as_(None, cluster, "apps", "create", "shop"))
    assert "refused a plaintext connection" in line
    async with grpc.aio.insecure_channel(cluster.scheduler_addresses[0]) as channel:
        assert await code_of(channel) == grpc.StatusCode.UNAVAILABLE
    await unchanged(cluster, before)


async def test_an_expired_admin_certificate_is_refused(
    cluster: LocalCluster, ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    expired = write(
        tmp_path / "expired",
        ca.issue_credentials(
            Identity(Role.ADMIN, "old"), dt.timedelta(days=1), not_before=long_ago
        ),
    )
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(await as_(expired, cluster, "apps", "create", "shop"))
    assert line.startswith(f"error: the credentials in {expired} expired at "), line
    # The scheduler refuses it too, whatever the client: the handshake fails.
    async with dial(cluster.scheduler_addresses[0], pki.read_credentials(expired)) as channel:
        assert await code_of(channel) == grpc.StatusCode.UNAVAILABLE
    await unchanged(cluster, before)


async def test_a_credentials_file_readable_by_others_is_refused_naming_it(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    loose = tmp_path / "loose.credentials"
    shutil.copy(cluster.credentials_path, loose)
    os.chmod(loose, 0o644)
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(await as_(loose, cluster, "apps", "create", "shop"))
    assert (
        line
        == f"error: {loose} is mode 0644; a file holding a key must be 0600 (chmod 600 {loose})"
    )
    await unchanged(cluster, before)


# ------------------------------------------------------------------ roles at the API


async def test_a_node_certificate_cannot_scale(
    cluster: LocalCluster, ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    node = ca.issue_credentials(Identity(Role.NODE, "node-1"), dt.timedelta(hours=1))
    before = await etcd_keys(cluster.etcd_endpoint)
    async with dial(cluster.scheduler_addresses[0], node, CHANNEL_OPTIONS) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.SchedulerStub(channel).Scale(scale_request(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == (
        "Scale needs a certificate of role admin; node 'node-1' may not call it"
    )
    line = one_line(
        await as_(write(tmp_path / "node", node), cluster, "scale", "-a", "shop", "web=1")
    )
    assert line == "error: Scale needs a certificate of role admin; node 'node-1' may not call it"
    await unchanged(cluster, before)


async def open_session(creds: Credentials, address: str, name: str) -> grpc.aio.AioRpcError:
    """Open a Session saying hello as `name`; the error it ends with."""
    hello = pb.AgentMessage(hello=pb.Hello(name=name, address="127.0.0.9:7071", capacity=4))

    async def messages() -> AsyncIterator[pb.AgentMessage]:
        yield hello
        await asyncio.sleep(30)

    async with dial(address, creds, CHANNEL_OPTIONS) as channel:
        call = pb_grpc.SchedulerStub(channel).Session(messages(), timeout=15)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
    return refused.value


async def test_node_1_cannot_open_the_session_of_node_2(
    cluster: LocalCluster, ca: pki.CertificateAuthority
) -> None:
    node_1 = ca.issue_credentials(Identity(Role.NODE, "node-1"), dt.timedelta(hours=1))
    before = await etcd_keys(cluster.etcd_endpoint)
    refused = await open_session(node_1, cluster.scheduler_addresses[0], "node-2")
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.details() == "node 'node-1' may not open a session as node 'node-2'"
    await unchanged(cluster, before)


async def test_an_admin_certificate_cannot_open_a_session(cluster: LocalCluster) -> None:
    assert cluster.client_tls is not None
    before = await etcd_keys(cluster.etcd_endpoint)
    refused = await open_session(cluster.client_tls, cluster.scheduler_addresses[0], "node-1")
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Session needs a certificate of role node; admin 'admin'" in (refused.details() or "")
    await unchanged(cluster, before)


async def test_the_agents_api_takes_only_the_scheduler(
    cluster: LocalCluster, ca: pki.CertificateAuthority
) -> None:
    address = cluster.agent_address("node-1")
    request = pb.LogsRequest(app="shop", lines=1)
    for who in (Identity(Role.ADMIN, "admin"), Identity(Role.NODE, "node-2")):
        creds = ca.issue_credentials(who, dt.timedelta(hours=1))
        async with dial(address, creds, CHANNEL_OPTIONS, server_name="node-1") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in pb_grpc.AgentStub(channel).ReadLogs(request, timeout=10):
                    pass
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, who
        assert "takes only role scheduler" in (refused.value.details() or "")


# ------------------------------------------------------------------ credentials


async def test_created_credentials_work_and_a_revoked_one_is_refused_by_every_replica(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    out = tmp_path / "ci.credentials"
    made = await paas(cluster, "credentials", "create", "ci", "--ttl", "2d", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"export PAAS_CREDENTIALS={out.resolve()}"
    assert os.stat(out).st_mode & 0o777 == 0o600
    ci = pki.read_credentials(out)
    assert ci.identity == Identity(Role.ADMIN, "ci")
    listed = {c["name"]: c for c in (await paas(cluster, "credentials", "--json")).json()}
    assert listed["ci"]["serial"] == ci.serial and listed["ci"]["revoked"] is False
    assert "admin" in listed, "cluster init's credentials are listed too"
    # Each replica lets ci in: the leader answers, the follower redirects.
    let_in = {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}
    channels = [dial(address, ci, CHANNEL_OPTIONS) for address in cluster.scheduler_addresses]
    try:
        codes = [await code_of(channel) for channel in channels]
        assert set(codes) <= let_in and grpc.StatusCode.OK in codes, codes

        revoked = await paas(cluster, "credentials", "revoke", "ci")
        assert revoked.returncode == 0, revoked.stderr
        # The very next call on every replica, on the channels already open.
        for channel in channels:
            assert await code_of(channel) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        for channel in channels:
            await channel.close(None)
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(await as_(out, cluster, "apps", "create", "shop"))
    assert line == f"error: the certificate of admin 'ci' (serial {ci.serial}) has been revoked"
    await unchanged(cluster, before)
    listed = {c["name"]: c for c in (await paas(cluster, "credentials", "--json")).json()}
    assert listed["ci"]["revoked"] is True


async def test_credentials_of_a_taken_name_are_refused(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    assert (await paas(cluster, "credentials")).returncode == 0  # `cluster init`'s is entered
    before = await etcd_keys(cluster.etcd_endpoint)
    line = one_line(
        await paas(cluster, "credentials", "create", "admin", "--out", str(tmp_path / "a"))
    )
    assert "credentials named 'admin' exist already" in line
    assert not (tmp_path / "a").exists()
    await unchanged(cluster, before)


# ------------------------------------------------------------------ daemons refused


async def run_paas(*args: str, timeout: float = 60) -> Result:  # noqa: ASYNC109
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paas", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Result(list(args), process.returncode, stdout.decode(), stderr.decode())


async def test_a_scheduler_needs_tls_or_insecure(cluster: LocalCluster) -> None:
    listen = f"127.0.0.1:{free_port()}"
    result = await run_paas("scheduler", "--etcd", cluster.etcd_endpoint, "--listen", listen)
    assert one_line(result) == (
        "error: the scheduler needs --tls-dir DIR (the CA of `paas cluster init --dir DIR`), "
        "or --insecure to serve plaintext with no authentication"
    )


async def test_a_scheduler_refuses_a_ca_key_readable_by_others(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    shutil.copytree(cluster.tls_dir, tls)
    os.chmod(tls / pki.CA_KEY_FILE, 0o640)
    listen = f"127.0.0.1:{free_port()}"
    before = await etcd_keys(cluster.etcd_endpoint)
    result = await run_paas(
        "scheduler", "--etcd", cluster.etcd_endpoint, "--listen", listen, "--tls-dir", str(tls)
    )
    key = tls / pki.CA_KEY_FILE
    assert one_line(result) == (
        f"error: {key} is mode 0640; a file holding a key must be 0600 (chmod 600 {key})"
    )
    await unchanged(cluster, before)


async def test_an_agent_refuses_node_credentials_readable_by_others(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster.issue_node_credentials("node-7", tmp_path)
    creds = tmp_path / "node-7" / "node.credentials"
    os.chmod(creds, 0o644)
    result = await run_paas(
        "agent", "--join", cluster.scheduler_address, "--name", "node-7",
        "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path),
    )  # fmt: skip
    assert one_line(result) == (
        f"error: the agent cannot start: {creds} is mode 0644; a file holding a key must be "
        f"0600 (chmod 600 {creds})"
    )


async def test_an_agent_without_node_credentials_says_how_to_get_them(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    result = await run_paas(
        "agent", "--join", cluster.scheduler_address, "--name", "node-8",
        "--listen", f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path),
    )  # fmt: skip
    line = one_line(result)
    assert f"no node credentials at {tmp_path / 'node-8' / 'node.credentials'}" in line


async def test_the_local_agent_holds_its_session_over_tls(cluster: LocalCluster) -> None:
    nodes = (await paas(cluster, "nodes", "--json")).json()
    assert [(n["name"], n["state"]) for n in nodes] == [("node-1", "ready")]
