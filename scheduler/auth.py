"""Who may call what on the Scheduler API: the one policy, checked by the guard on every RPC.

The TLS handshake already proved the caller holds a certificate from the cluster CA
(common/tls.py); this module reads the role and name it carries and decides:

    admin       every operator RPC, and FetchSlug (an operator may read a slug back);
                never an agent session
    node        Session (only as itself: the Hello's name must be the certificate's,
                `Authorizer.check_session_name`) and FetchSlug; nothing an operator calls
    scheduler   nothing on this API (replicas dial agents, not each other)
    none        only the RPCs in ANONYMOUS_METHODS: Join, by which a new agent
                that has no certificate yet trades a join token for one
                (tokens_api.py); the server asks for a client certificate but
                does not require one at the handshake, so this check is the gate

A certificate past its expiry, or whose serial is on the deny list in etcd
(store.py `revoked/SERIAL`), is refused UNAUTHENTICATED. The deny list is read on
every call, one key by its serial, with no cache: a revocation holds on every
replica from the next call on, at the cost of one small etcd read per call (a
replica that cannot reach etcd answers UNAVAILABLE, as it would for the call itself).

With TLS off (`--insecure`) the Authorizer lets everything through: there is no
identity to check, and the scheduler said so loudly when it started.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

import grpc

from paas.common.pki import Identity, PKIError, Role
from paas.common.tls import peer_identity, peer_of
from paas.scheduler.errors import PermissionDenied, Unauthenticated

# RPCs a caller without a certificate may make (only reachable on a port that does
# not require one).
ANONYMOUS_METHODS: frozenset[str] = frozenset({"Join"})
# What a node certificate may call; every other RPC is an operator's (admin).
NODE_METHODS: frozenset[str] = frozenset({"Session", "FetchSlug"})
# What both may call: reading a slug's bytes changes nothing.
SHARED_METHODS: frozenset[str] = frozenset({"FetchSlug"})


class DenyList(Protocol):
    """store.Store's deny list of revoked certificate serials."""

    async def is_revoked(self, serial: str) -> bool: ...


def required_role(method: str) -> Role:
    return Role.NODE if method in NODE_METHODS else Role.ADMIN


def allowed_roles(method: str) -> frozenset[Role]:
    if method in SHARED_METHODS:
        return frozenset({Role.NODE, Role.ADMIN})
    return frozenset({required_role(method)})


class Authorizer:
    """Checks each call's certificate against the policy above."""

    def __init__(self, deny_list: DenyList | None) -> None:
        """`deny_list` None: TLS is off and every call is let through."""
        self._deny_list = deny_list

    @property
    def enabled(self) -> bool:
        return self._deny_list is not None

    async def authorize(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Raise Unauthenticated or PermissionDenied unless the caller may call `method`."""
        if self._deny_list is None:
            return
        try:
            peer = peer_of(context)
        except PKIError as exc:
            raise PermissionDenied(f"the client certificate is not a paas one: {exc}") from None
        if peer is None:
            if method in ANONYMOUS_METHODS:
                return
            raise Unauthenticated(
                f"{method} needs a client certificate from the cluster CA; none was presented"
            )
        identity = peer.identity
        if peer.expires <= dt.datetime.now(dt.UTC):
            raise Unauthenticated(
                f"the certificate of {identity} expired at {peer.expires:%Y-%m-%d %H:%M:%S} UTC"
            )
        needed = required_role(method)
        if identity.role not in allowed_roles(method):
            raise PermissionDenied(
                f"{method} needs a certificate of role {needed.value}; {identity} may not call it"
            )
        if await self._deny_list.is_revoked(peer.serial):
            raise Unauthenticated(
                f"the certificate of {identity} (serial {peer.serial}) has been revoked"
            )

    def check_session_name(self, context: grpc.aio.ServicerContext[Any, Any], name: str) -> None:
        """A node's certificate opens the session only for its own node name."""
        if self._deny_list is None:
            return
        identity: Identity | None = peer_identity(context)
        if identity is None or identity.role is not Role.NODE or identity.name != name:
            who = str(identity) if identity else "a caller without a certificate"
            raise PermissionDenied(f"{who} may not open a session as node {name!r}")
