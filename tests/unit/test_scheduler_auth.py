"""auth.py's policy on a call's verified certificate: roles, a node's own name, expiry,
the deny list, and TLS off. The certificate reaches it as gRPC hands it over
(`x509_pem_cert` in the auth context); the handshake itself is the integration tests'."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from paas.common import pki
from paas.common.pki import CertificateAuthority, Credentials, Identity, Role
from paas.proto import paas_pb2 as pb
from paas.scheduler.auth import NODE_METHODS, Authorizer, required_role
from paas.scheduler.errors import PermissionDenied, Unauthenticated

CA = CertificateAuthority.create()


class Call:
    """The one thing of a ServicerContext auth.py reads."""

    def __init__(self, creds: Credentials | None) -> None:
        self._pem = [creds.cert_pem] if creds else []

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": self._pem} if self._pem else {}


class DenyList:
    def __init__(self) -> None:
        self.revoked: set[str] = set()

    async def is_revoked(self, serial: str) -> bool:
        return serial in self.revoked


def context(creds: Credentials | None) -> Any:
    """A call's context presenting `creds` (None: no certificate)."""
    return Call(creds)


def call(role: Role, name: str) -> Any:
    return context(CA.issue_credentials(Identity(role, name), dt.timedelta(hours=1)))


def test_every_rpc_but_the_agents_needs_an_admin() -> None:
    rpcs = {m.name for m in pb.DESCRIPTOR.services_by_name["Scheduler"].methods}
    assert NODE_METHODS <= rpcs
    assert {r for r in rpcs if required_role(r) is Role.NODE} == {"Session", "FetchSlug"}
    assert required_role("Scale") is Role.ADMIN and required_role("CreateCredentials") is Role.ADMIN


async def test_an_admin_may_scale_and_a_node_may_not() -> None:
    auth = Authorizer(DenyList())
    await auth.authorize("Scale", call(Role.ADMIN, "alice"))
    with pytest.raises(PermissionDenied, match="Scale needs a certificate of role admin"):
        await auth.authorize("Scale", call(Role.NODE, "node-1"))
    with pytest.raises(PermissionDenied):
        await auth.authorize("Scale", call(Role.SCHEDULER, "s1"))


async def test_a_node_and_an_admin_may_fetch_a_slug_and_a_scheduler_may_not() -> None:
    auth = Authorizer(DenyList())
    await auth.authorize("FetchSlug", call(Role.NODE, "node-1"))
    await auth.authorize("FetchSlug", call(Role.ADMIN, "alice"))
    with pytest.raises(PermissionDenied, match="FetchSlug needs a certificate of role node"):
        await auth.authorize("FetchSlug", call(Role.SCHEDULER, "s1"))


async def test_a_node_opens_a_session_only_as_itself_and_an_admin_none() -> None:
    auth = Authorizer(DenyList())
    node_1 = call(Role.NODE, "node-1")
    await auth.authorize("Session", node_1)
    auth.check_session_name(node_1, "node-1")
    with pytest.raises(PermissionDenied, match="may not open a session as node 'node-2'"):
        auth.check_session_name(node_1, "node-2")
    with pytest.raises(PermissionDenied, match="Session needs a certificate of role node"):
        await auth.authorize("Session", call(Role.ADMIN, "node-1"))


async def test_no_certificate_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated, match="none was presented"):
        await Authorizer(DenyList()).authorize("ListApps", context(None))


async def test_an_expired_certificate_is_unauthenticated() -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    old = context(
        CA.issue_credentials(Identity(Role.ADMIN, "old"), dt.timedelta(1), not_before=start)
    )
    with pytest.raises(Unauthenticated, match="expired"):
        await Authorizer(DenyList()).authorize("ListApps", old)


async def test_a_revoked_serial_is_refused_from_the_next_call_on() -> None:
    deny = DenyList()
    auth = Authorizer(deny)
    creds = CA.issue_credentials(Identity(Role.ADMIN, "ci"), dt.timedelta(hours=1))
    await auth.authorize("ListApps", context(creds))
    deny.revoked.add(pki.serial_of(creds.cert))
    with pytest.raises(Unauthenticated, match="has been revoked"):
        await auth.authorize("ListApps", context(creds))


async def test_with_tls_off_everything_is_let_in() -> None:
    auth = Authorizer(None)
    await auth.authorize("Scale", context(None))
    auth.check_session_name(context(None), "node-2")
