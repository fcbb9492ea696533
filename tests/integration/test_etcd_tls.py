"""The scheduler against an etcd that wants TLS client certificates (and, later, a user).

A real etcd started with --client-cert-auth (tests/conftest.py `tls_etcd`) and real
`paas scheduler` processes: they lead and serve over TLS; without a certificate, with one
from another CA, with a wrong password or a key file others can read they exit non-zero
with one line, and never hang.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from paas.common.ports import free_port
from tests.conftest import TLSEtcd
from tests.etcd_pki import issue, make_ca
from tests.helpers import paas, wait_for

pytestmark = pytest.mark.timeout(180)

# The scheduler's own API is plaintext here (--insecure): what is under test is
# its link to etcd, which is TLS whatever the API does.
PLAINTEXT_API = {"PAAS_INSECURE": "1"}


def tls_flags(etcd: TLSEtcd, cert: Path | None = None, key: Path | None = None) -> list[str]:
    return [
        "--etcd-cacert", str(etcd.ca.path),
        "--etcd-cert", str(cert or etcd.client_cert),
        "--etcd-key", str(key or etcd.client_key),
    ]  # fmt: skip


def scheduler_argv(etcd: TLSEtcd, listen: str, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "paas", "scheduler",
        "--etcd", f"https://{etcd.endpoint}", "--listen", listen, "--insecure", *flags,
    ]  # fmt: skip


@asynccontextmanager
async def serving(
    etcd: TLSEtcd, *flags: str, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """A scheduler replica with `flags`, running until the block ends; its address."""
    listen = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        *scheduler_argv(etcd, listen, *flags),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(etcd.directory / f"scheduler-{listen.rsplit(':')[1]}.log").open("wb"),
        env={**os.environ, **(env or {})},
    )
    try:
        yield listen
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


async def refused(etcd: TLSEtcd, *flags: str, env: dict[str, str] | None = None) -> str:
    """Run a scheduler that must not start: it exits non-zero in time; its one line."""
    process = await asyncio.create_subprocess_exec(
        *scheduler_argv(etcd, f"127.0.0.1:{free_port()}", *flags),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode not in (0, None), stderr
    # --insecure's warning (about the API, not etcd) comes first; then the one line.
    insecure = "warning: the scheduler runs with --insecure"
    lines = [line for line in stderr.decode().strip().splitlines() if not line.startswith(insecure)]
    assert len(lines) == 1, lines
    return lines[0]


async def serves_an_app(address: str, etcd: TLSEtcd, app: str = "shop") -> None:
    """Once the replica leads: create, deploy and scale an app; it lands in etcd."""

    async def created() -> bool:
        result = await paas(address, "apps", "create", app, timeout=20, env=PLAINTEXT_API)
        return result.returncode == 0

    await wait_for(created, timeout=60, what="`paas apps create` through a leading scheduler")
    source = etcd.directory / "shop"
    source.mkdir(exist_ok=True)
    (source / "Procfile").write_text("web: sleep 600\n")
    deployed = await paas(address, "deploy", str(source), app=app, env=PLAINTEXT_API)
    assert deployed.returncode == 0, deployed.stderr
    scaled = await paas(address, "scale", "web=2", app=app, env=PLAINTEXT_API)
    assert scaled.returncode == 0, scaled.stderr
    formation = etcd.etcdctl("get", f"/paas/formation/{app}")
    assert formation.returncode == 0, formation.stderr
    assert '"web": 2' in formation.stdout, formation.stdout


def password_file(etcd: TLSEtcd, text: str, mode: int = 0o600) -> Path:
    path = etcd.directory / f"password-{len(text)}-{mode:o}"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def enable_auth(etcd: TLSEtcd) -> None:
    """A user `paas` (password `right`) allowed /paas/, and auth on (the client
    certificate's CN, root, stays the admin for etcdctl)."""
    steps = [
        ["user", "add", "root", "--new-user-password=rootpw"],
        ["user", "grant-role", "root", "root"],
        ["user", "add", "paas", "--new-user-password=right"],
        ["role", "add", "paas"],
        ["role", "grant-permission", "paas", "--prefix=true", "readwrite", "/paas/"],
        ["user", "grant-role", "paas", "paas"],
        ["auth", "enable"],
    ]
    for step in steps:
        result = etcd.etcdctl(*step)
        assert result.returncode == 0, (step, result.stderr)


async def etcd_ready(etcd: TLSEtcd) -> None:
    def healthy() -> bool:
        return etcd.etcdctl("endpoint", "health").returncode == 0

    await wait_for(healthy, timeout=60, what="the TLS etcd to answer")


async def test_the_scheduler_leads_and_serves_over_tls(tls_etcd: TLSEtcd) -> None:
    await etcd_ready(tls_etcd)
    async with serving(tls_etcd, *tls_flags(tls_etcd)) as address:
        await serves_an_app(address, tls_etcd)


async def test_without_a_client_certificate_the_scheduler_exits_with_one_line(
    tls_etcd: TLSEtcd,
) -> None:
    await etcd_ready(tls_etcd)
    line = await refused(tls_etcd, "--etcd-cacert", str(tls_etcd.ca.path))
    assert line.startswith("error: cannot use etcd (TLS handshake refused: check"), line


async def test_a_certificate_from_another_ca_is_refused_with_one_line(tls_etcd: TLSEtcd) -> None:
    await etcd_ready(tls_etcd)
    other = make_ca(tls_etcd.directory / "other", "other-ca")
    cert, key = issue(other, tls_etcd.directory / "other", "intruder")
    line = await refused(tls_etcd, *tls_flags(tls_etcd, cert, key))
    assert line.startswith("error: cannot use etcd (TLS handshake refused: check"), line


@pytest.mark.parametrize("how", ["file", "environment"])
async def test_a_user_and_password_get_in_and_a_wrong_password_is_one_line(
    tls_etcd: TLSEtcd, how: str
) -> None:
    await etcd_ready(tls_etcd)
    enable_auth(tls_etcd)

    def password(text: str) -> tuple[list[str], dict[str, str]]:
        if how == "file":
            return ["--etcd-password-file", str(password_file(tls_etcd, text))], {}
        return [], {"PAAS_ETCD_PASSWORD": text}

    flags, env = password("wrong")
    line = await refused(tls_etcd, *tls_flags(tls_etcd), "--etcd-user", "paas", *flags, env=env)
    assert line.startswith("error: cannot use etcd: etcd refused the request"), line
    assert "invalid user ID or password" in line, line

    flags, env = password("right")
    user = ["--etcd-user", "paas", *flags]
    async with serving(tls_etcd, *tls_flags(tls_etcd), *user, env=env) as address:
        await serves_an_app(address, tls_etcd)


async def test_a_user_s_scheduler_gets_back_in_after_etcd_restarts_and_forgets_its_token(
    tls_etcd: TLSEtcd,
) -> None:
    await etcd_ready(tls_etcd)
    enable_auth(tls_etcd)
    user = ["--etcd-user", "paas", "--etcd-password-file", str(password_file(tls_etcd, "right"))]
    async with serving(tls_etcd, *tls_flags(tls_etcd), *user) as address:
        await serves_an_app(address, tls_etcd)
        tls_etcd.restart()
        await etcd_ready(tls_etcd)
        await serves_an_app(address, tls_etcd, app="cart")


@pytest.mark.parametrize(
    "loosen",
    [
        lambda etcd: ["--etcd-key", str(etcd.client_key)],
        lambda etcd: ["--etcd-user", "paas", "--etcd-password-file", str(password_file(etcd, "x"))],
    ],
    ids=["key", "password-file"],
)
async def test_files_others_can_read_are_refused_with_one_line(
    tls_etcd: TLSEtcd, loosen: Callable[[TLSEtcd], list[str]]
) -> None:
    flags = loosen(tls_etcd)
    os.chmod(flags[-1], 0o644)
    base = ["--etcd-cacert", str(tls_etcd.ca.path), "--etcd-cert", str(tls_etcd.client_cert)]
    if flags[0] != "--etcd-key":
        base += ["--etcd-key", str(tls_etcd.client_key)]
    line = await refused(tls_etcd, *base, *flags)
    assert "is readable by others (mode 0644); run: chmod 600" in line, line
