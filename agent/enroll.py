"""The agent's first start: trust the scheduler by the token's CA digest, get a certificate.

An agent with no certificate cannot verify the scheduler the usual way, so it
trusts the CA the join token pins (Docker Swarm's and kubeadm's way):

1. a TLS handshake with the scheduler that verifies nothing, only to read the
   certificate chain it serves (leaf, then the CA). Python 3.11's ssl has no
   public way to read a peer's chain, so this one handshake is pyOpenSSL's
   (`Connection.get_peer_cert_chain`); nothing is sent over it;
2. the chain must hold a certificate whose sha256 is the token's digest (else:
   not this cluster's scheduler, an impostor; nothing is sent), and the leaf
   must be issued by it and carry the scheduler role;
3. a new key is made here (it never leaves the host), and Join is called over a
   verified gRPC connection with that CA as the only root, at the join address the
   now trusted certificate names (paas://join/HOST:PORT: gRPC's Python servers
   cannot ask for a client certificate without requiring one, so joins have a port
   of their own): the token, the node name and a CSR; the answer is the node
   certificate.

The credentials are written to STATE_DIR/NAME/node.credentials (0600, atomic).
Later starts read that file and need no token. A token the scheduler refuses
(unknown, expired, used up, revoked) ends the start with the scheduler's one line.

    identity = await node_identity(config)   # reads the file, or joins with config.token
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import select
import socket
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from OpenSSL import SSL

from paas.agent.config import AgentConfig
from paas.agent.identity import IdentityError, NodeIdentity, expired
from paas.common import pki
from paas.common.addresses import parse_address
from paas.common.grpcutil import CHANNEL_OPTIONS, LEADER_METADATA_KEY
from paas.common.jointoken import JoinToken, TokenError, join_address_of, parse_token
from paas.proto import paas_pb2 as pb
from paas.proto import paas_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# Each dial and call of the first start; the whole of it keeps trying for JOIN_PATIENCE
# while no replica answers or none leads yet.
DIAL_TIMEOUT = 5.0
JOIN_PATIENCE = 30.0


class JoinError(IdentityError):
    """The first start cannot get a certificate; the message says why, in one line."""


async def node_identity(config: AgentConfig) -> NodeIdentity:
    """The node's credentials: from its file, or (first start, or after they expired)
    by joining with `config.token`. JoinError or IdentityError when neither works."""
    path = config.credentials_path
    held = await asyncio.to_thread(_read, path, config.name)
    now = dt.datetime.now(dt.UTC)
    if held is not None and not expired(held, now):
        if config.token:
            log.info("node %s has its certificate already; --token is not used", config.name)
        return NodeIdentity(path, held)
    if not config.token:
        if held is not None:
            raise JoinError(
                f"the node certificate in {path} expired at "
                f"{held.expires.isoformat(timespec='seconds')}: make a new join token "
                "(`paas tokens create`) and start the agent with --token TOKEN"
            )
        raise JoinError(
            f"the agent cannot start: no node credentials at {path}: join once with "
            "--token TOKEN (`paas tokens create`), or run with --insecure against an "
            "--insecure scheduler"
        )
    try:
        token = parse_token(config.token)
    except TokenError as exc:
        raise JoinError(f"--token: {exc}") from None
    credentials = await join(config.join, config.name, token)
    await asyncio.to_thread(pki.write_credentials, path, credentials)
    log.info(
        "node %s joined: certificate serial %s valid until %s, kept in %s",
        config.name,
        credentials.serial,
        credentials.expires.isoformat(timespec="seconds"),
        path,
    )
    return NodeIdentity(path, credentials)


def _read(path: Path, name: str) -> pki.Credentials | None:
    if not path.exists():
        return None
    try:
        credentials = pki.read_credentials(path)
        identity = credentials.identity
    except pki.PKIError as exc:
        raise IdentityError(f"the agent cannot start: {exc}") from None
    if identity != pki.Identity(pki.Role.NODE, name):
        raise IdentityError(
            f"the agent cannot start: {path} holds the certificate of {identity}, "
            f"not of node {name!r}"
        )
    return credentials


async def join(addresses: list[str], name: str, token: JoinToken) -> pki.Credentials:
    """Join through the first replica of `addresses` that answers (following a
    follower to the leader): the node's new credentials, or JoinError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + JOIN_PATIENCE
    key = pki.generate_key()
    csr = pki.make_csr(key, pki.Identity(pki.Role.NODE, name))
    last = "no scheduler answered"
    queue = list(addresses)
    while True:
        address = queue.pop(0)
        try:
            ca, joins = await asyncio.to_thread(trusted_ca, address, token.ca_digest)
            answer = await _call_join(address, joins, ca, token, name, csr)
        except _Redirect as redirect:
            queue.insert(0, redirect.leader)
            continue
        except _Retry as retry:
            last = str(retry)
            log.debug("join through %s: %s", address, last)
        else:
            cert = pki.load_cert_pem(answer.certificate)
            if cert.public_key() != key.public_key() or pki.identity_of(cert) != pki.Identity(
                pki.Role.NODE, name
            ):
                raise JoinError(
                    f"scheduler {address} answered with a certificate not for this node"
                )
            return pki.Credentials(ca_cert=ca, cert=cert, key=key)
        if not queue:
            if loop.time() >= deadline:
                raise JoinError(f"cannot join: {last} (--join {','.join(addresses)})")
            await asyncio.sleep(1.0)
            queue = list(addresses)


class _Retry(Exception):
    """This replica cannot take the join now (unreachable, no leader yet)."""


class _Redirect(Exception):
    def __init__(self, leader: str) -> None:
        self.leader = leader


def scheduler_chain(address: str, timeout: float = DIAL_TIMEOUT) -> list[x509.Certificate]:
    """The certificates the scheduler at `address` serves, leaf first, read over a
    handshake that verifies nothing (blocking). Nothing is sent over it."""
    host, port = parse_address(address)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    context.set_alpn_protos([b"h2"])
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise _Retry(f"scheduler {address} is unreachable: {exc.strerror or exc}") from None
    try:
        connection = SSL.Connection(context, sock)
        if not _is_ip(host):
            connection.set_tlsext_host_name(host.encode())
        connection.set_connect_state()
        _handshake(connection, sock, address, time.monotonic() + timeout)
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        return list(chain)
    finally:
        sock.close()


def _handshake(
    connection: SSL.Connection, sock: socket.socket, address: str, deadline: float
) -> None:
    """pyOpenSSL knows no socket timeouts: the socket does not block, and each
    WantRead/WantWrite waits for the socket up to the deadline."""
    sock.setblocking(False)
    while True:
        try:
            connection.do_handshake()
            return
        except SSL.WantReadError:
            waiting: tuple[list[socket.socket], list[socket.socket]] = ([sock], [])
        except SSL.WantWriteError:
            waiting = ([], [sock])
        except (SSL.Error, OSError) as exc:
            raise JoinError(
                f"scheduler {address} does not speak TLS ({exc or 'the handshake failed'}); "
                "a scheduler started with --insecure takes no join tokens"
            ) from None
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(*waiting, [], remaining)):
            raise _Retry(f"scheduler {address} did not finish a TLS handshake in time")


def trusted_ca(address: str, digest: str) -> tuple[x509.Certificate, str]:
    """The CA the token pins, if the scheduler at `address` holds it (else JoinError),
    and where that scheduler takes joins, as its certificate says."""
    chain = scheduler_chain(address)
    ca = check_chain(address, chain, digest)
    joins = join_address_of(chain[0])
    if joins is None:
        raise JoinError(
            f"scheduler {address} takes no joins (its certificate names no join address)"
        )
    return ca, _dialable(joins, address)


def _dialable(joins: str, address: str) -> str:
    """The join address, with the host the agent reached the scheduler by when the
    scheduler takes joins on every address of its host."""
    host, port = parse_address(joins)
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        return joins
    reached, _ = parse_address(address)
    return f"[{reached}]:{port}" if ":" in reached else f"{reached}:{port}"


def check_chain(address: str, chain: list[x509.Certificate], digest: str) -> x509.Certificate:
    """The CA of `chain` whose sha256 is `digest`, with the leaf (chain[0]) issued by it
    for a scheduler; JoinError otherwise (pure)."""
    impostor = (
        f"scheduler {address} does not hold the CA the join token pins (sha256 {digest[:16]}...): "
        "it is not this cluster's scheduler, or an impostor; nothing was sent"
    )
    if not chain:
        raise JoinError(impostor)
    pinned = [cert for cert in chain[1:] if pki.ca_digest(cert) == digest]
    if not pinned:
        raise JoinError(impostor)
    ca, leaf = pinned[0], chain[0]
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise JoinError(impostor) from None
    try:
        role = pki.identity_of(leaf).role
    except pki.PKIError:
        role = None
    if role is not pki.Role.SCHEDULER:
        raise JoinError(f"{impostor} (its certificate is not a scheduler's)")
    return ca


async def _call_join(
    address: str, joins: str, ca: x509.Certificate, token: JoinToken, name: str, csr: bytes
) -> pb.JoinResponse:
    """Join at `joins`, verified against `ca` only, for a certificate that names the
    host of `address` (the scheduler the operator named)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.cert_pem(ca))
    host, _ = parse_address(address)
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", host)]
    async with grpc.aio.secure_channel(joins, credentials, options=options) as channel:
        stub: Any = pb_grpc.SchedulerStub(channel)
        try:
            response: pb.JoinResponse = await stub.Join(
                pb.JoinRequest(token=str(token), node=name, csr=csr), timeout=DIAL_TIMEOUT
            )
            return response
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or code.name
            if code is grpc.StatusCode.FAILED_PRECONDITION:
                leader = _leader(exc)
                if leader and leader != address:
                    raise _Redirect(leader) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise _Retry(f"scheduler {address}: {details}") from None
            raise JoinError(details) from None


def _leader(error: grpc.aio.AioRpcError) -> str | None:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == LEADER_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
