"""gRPC over mutual TLS, the one way every part opens a server port or a channel.

Each side presents `pki.Credentials` (the CA it trusts, its certificate and key);
gRPC's own TLS (BoringSSL) does the handshake: TLS 1.2 or newer (gRPC's floor), the
peer's certificate checked against the cluster CA, and on a server the client's
certificate required. `None` for credentials means plaintext, which only an explicit
`--insecure` asks for. The peer's role is read back by `peer_identity` from what the
handshake verified; what each role may do is decided elsewhere (scheduler/auth.py,
agent/server.py).

    port = add_port(server, "0.0.0.0:7070", creds)          # creds None: plaintext
    channel = dial("10.0.0.1:7070", creds, CHANNEL_OPTIONS)
    channel = dial(agent_address, creds, options, server_name="node-3")

It never reads files (pki.py does) and never decides who may do what.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from paas.common.pki import (
    Credentials,
    Identity,
    PKIError,
    Role,
    expires_at,
    identity_of,
    serial_of,
)
from paas.common.pki import load_cert_pem as _load_cert_pem

INSECURE_WARNING = (
    "warning: {what} runs with --insecure: plaintext, no authentication; anyone who can "
    "reach {address} can control the cluster"
)


def server_credentials(creds: Credentials) -> grpc.ServerCredentials:
    """Serve `creds`' certificate chain (leaf then CA, so a joining agent can pin the CA)
    and require a client certificate from the same CA."""
    return grpc.ssl_server_credentials(
        [(creds.key_pem, creds.cert_pem + creds.ca_pem)],
        root_certificates=creds.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(creds: Credentials) -> grpc.ChannelCredentials:
    """Trust only the cluster CA; present `creds`' certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.key_pem,
        certificate_chain=creds.cert_pem,
    )


def add_port(
    server: grpc.aio.Server, address: str, creds: Credentials | grpc.ServerCredentials | None
) -> int:
    """Listen on `address`, with TLS unless `creds` is None; the bound port (0: failed).
    Server credentials made elsewhere (dynamic ones, which reload a renewed
    certificate: agent/identity.py, scheduler/servingcert.py) are taken as they are."""
    if creds is None:
        return server.add_insecure_port(address)
    if isinstance(creds, grpc.ServerCredentials):
        return server.add_secure_port(address, creds)
    return server.add_secure_port(address, server_credentials(creds))


def dial(
    address: str,
    creds: Credentials | None,
    options: Sequence[tuple[str, Any]] = (),
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """A channel to `address`: TLS with `creds`, plaintext if None.

    `server_name` is the name the server's certificate must carry instead of the host
    of `address` (the scheduler dials an agent by address and checks its node name).
    """
    if creds is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    opts = list(options)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, channel_credentials(creds), options=opts)


class Peer:
    """The verified certificate of the other end of a call."""

    def __init__(self, pem: bytes) -> None:
        cert = _load_cert_pem(pem)
        self.identity: Identity = identity_of(cert)
        self.serial: str = serial_of(cert)
        self.expires: dt.datetime = expires_at(cert)


@functools.lru_cache(maxsize=1024)
def _peer_of(pem: bytes) -> Peer | PKIError:
    # One parse per certificate, not per call: a session's peer calls many times.
    try:
        return Peer(pem)
    except PKIError as exc:
        return exc


def peer_of(context: grpc.aio.ServicerContext[Any, Any]) -> Peer | None:
    """The peer's verified certificate, or None for a plaintext call or one without a
    certificate; PKIError if the certificate carries no usable paas role."""
    pems = list(context.auth_context().get("x509_pem_cert") or ())
    if not pems:
        return None
    peer = _peer_of(bytes(pems[0]))
    if isinstance(peer, PKIError):
        raise peer
    return peer


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> Identity | None:
    peer = peer_of(context)
    return peer.identity if peer is not None else None


if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]


class RequireRole(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A server interceptor that lets in only callers whose certificate has `role`
    (the agent's API takes only the scheduler); everyone else gets PERMISSION_DENIED."""

    def __init__(self, role: Role) -> None:
        self._role = role

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        role = self._role

        async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                identity = peer_identity(context)
            except PKIError as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                return
            if identity is None or identity.role is not role:
                who = str(identity) if identity else "a caller without a certificate"
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} takes only role {role.value}; {who} may not call it",
                )

        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                await refuse(context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await refuse(context)
                async for response in inner_us(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        raise RuntimeError(f"RequireRole does not wrap the streaming kind of {method}")
