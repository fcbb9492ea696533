"""Join tokens and the one call an agent makes before it has a certificate.

    CreateToken, ListTokens, RevokeToken   admins: `paas tokens ...`
    Join                                   an agent's first start: token + node name +
                                           CSR in, a signed node certificate out

Join is the only RPC the guard lets in without a client certificate. It checks the
CSR first (a broken one costs no use of the token), then takes one use of the
token with a compare-and-swap on its etcd key, so that of two agents racing for
a single-use token exactly one gets a certificate; the other is told the token is
used up. A refused join changes nothing in etcd. When a token may be used is
common/jointoken.py's to say; this module reads, decides through it and writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Protocol

from paas.common import jointoken
from paas.common.jointoken import JoinToken, TokenRecord
from paas.proto import paas_pb2 as pb
from paas.scheduler.cas import retry_conflicts
from paas.scheduler.errors import JoinRefused, NotFound
from paas.scheduler.guard import Context
from paas.scheduler.store import Store

log = logging.getLogger(__name__)

# A token expired this long ago is forgotten when the next one is made: `paas tokens`
# shows for a day why one failed, then drops it.
FORGET_SPENT_AFTER = 24 * 3600.0


class NodeIssuer(Protocol):
    """What Join needs of the cluster CA (the scheduler's pki)."""

    @property
    def ca_digest(self) -> str:
        """sha256 of the CA certificate's DER, hex: what a token pins."""
        ...

    @property
    def ca_pem(self) -> bytes: ...

    def check_csr(self, csr_pem: bytes) -> None:
        """Raise JoinRefused if `csr_pem` is not a CSR signed by its own key."""
        ...

    def sign_node(self, csr_pem: bytes, node: str) -> bytes:
        """A node certificate (PEM) for the CSR's key, role node, name `node`."""
        ...


def token_view(record: TokenRecord) -> pb.JoinToken:
    return pb.JoinToken(
        id=record.id,
        created_at=record.created_at,
        expires_at=record.expires_at,
        uses=record.uses,
        uses_left=record.uses_left,
        revoked=record.revoked,
    )


class TokensService:
    """CreateToken, ListTokens, RevokeToken and Join."""

    def __init__(self, store: Store, issuer: NodeIssuer | None) -> None:
        """`issuer` None: this scheduler runs --insecure and refuses every call."""
        self._store = store
        self._maybe_issuer = issuer

    def _ca(self) -> NodeIssuer:
        if self._maybe_issuer is None:
            raise JoinRefused(
                "this scheduler runs --insecure: it has no CA, so there are no join tokens; "
                "agents join it with --insecure"
            )
        return self._maybe_issuer

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        now = time.time()
        await self._forget_spent(now)
        token = jointoken.new_token(self._ca().ca_digest)
        record = jointoken.made(
            token,
            now=now,
            ttl=request.ttl or jointoken.DEFAULT_TTL,
            uses=request.uses or jointoken.DEFAULT_USES,
        )
        await self._store.add_token(record)
        log.info(
            "join token %s made: %d use(s) until %s",
            record.id,
            record.uses,
            dt.datetime.fromtimestamp(record.expires_at, dt.UTC).isoformat(timespec="seconds"),
        )
        return pb.CreateTokenResponse(token=token_view(record), text=str(token))

    async def _forget_spent(self, now: float) -> None:
        old = [
            record.id
            for record in await self._store.tokens()
            if record.expires_at < now - FORGET_SPENT_AFTER
        ]
        if old:
            await self._store.delete_tokens(old)

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        self._ca()  # refuses with --insecure
        return pb.ListTokensResponse(
            tokens=[token_view(record) for record in await self._store.tokens()]
        )

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.JoinToken:
        self._ca()  # refuses with --insecure

        async def attempt() -> TokenRecord:
            found = await self._store.token(request.id)
            if found is None:
                raise NotFound(f"unknown join token {request.id!r} (`paas tokens` lists them)")
            record, revision = found
            if record.revoked:
                return record
            done = jointoken.revoked(record)
            await self._store.update_token(done, revision)
            return done

        record = await retry_conflicts(attempt, "the join token")
        log.info("join token %s revoked", record.id)
        return token_view(record)

    async def Join(self, request: pb.JoinRequest, context: Context) -> pb.JoinResponse:
        token = jointoken.parse_token(request.token)
        if token.ca_digest != self._ca().ca_digest:
            raise JoinRefused(
                "the join token is for another cluster's CA; make one on this cluster with "
                "`paas tokens create`"
            )
        self._ca().check_csr(request.csr)
        await retry_conflicts(
            lambda: self._take_use(token, request.node, context), "the join token"
        )
        certificate = await asyncio.to_thread(self._ca().sign_node, request.csr, request.node)
        log.info("node %s joined with token %s from %s", request.node, token.id, context.peer())
        return pb.JoinResponse(certificate=certificate, ca_certificate=self._ca().ca_pem)

    async def _take_use(self, token: JoinToken, node: str, context: Context) -> None:
        found = await self._store.token(token.id)
        record, revision = found if found is not None else (None, 0)
        refusal = jointoken.refusal(record, token.secret, time.time())
        if refusal is not None:
            log.warning(
                "node %s refused from %s: %s (token %s)",
                node,
                context.peer(),
                refusal.name,
                token.id,
            )
            raise JoinRefused(refusal.value)
        assert record is not None
        # Compared on the revision read: a racing join that took the use first fails
        # this write, and the retry reads the token used up.
        await self._store.update_token(jointoken.consumed(record), revision)
