"""Join tokens in a real etcd: a use is taken by compare-and-swap, a refusal writes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from paas.common import jointoken, pki
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import JoinRefused
from paas.scheduler.nodecerts import NodeCertificates
from paas.scheduler.store import ConflictError, Store
from paas.scheduler.tokens_api import TokensService
from tests.helpers import etcd_keys

pytestmark = pytest.mark.integration


class Caller:
    """The servicer context of a call: only who the peer is, for the log."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def join_request(text: str, node: str) -> pb.JoinRequest:
    csr = pki.make_csr(pki.generate_key(), pki.Identity(pki.Role.NODE, node))
    return pb.JoinRequest(token=text, node=node, csr=csr)


@pytest.fixture
def service(leading_store: Store) -> TokensService:
    return TokensService(leading_store, NodeCertificates(pki.CertificateAuthority.create()))


async def make(service: TokensService, uses: int = 1, ttl: float = 60) -> str:
    made = await service.CreateToken(pb.CreateTokenRequest(ttl=ttl, uses=uses), Caller())  # type: ignore[arg-type]
    return made.text


async def test_a_use_is_a_compare_and_swap_on_the_tokens_revision(leading_store: Store) -> None:
    token = jointoken.new_token("0" * 64)
    await leading_store.add_token(jointoken.made(token, time.time(), 60, 2))
    found = await leading_store.token(token.id)
    assert found is not None
    record, revision = found
    await leading_store.update_token(jointoken.consumed(record), revision)
    with pytest.raises(ConflictError):
        await leading_store.update_token(jointoken.consumed(record), revision)
    again = await leading_store.token(token.id)
    assert again is not None and again[0].uses_left == 1


async def test_of_many_joins_racing_for_one_use_exactly_one_gets_a_certificate(
    service: TokensService, etcd: str
) -> None:
    text = await make(service, uses=1)
    context: Any = Caller()
    results = await asyncio.gather(
        *(service.Join(join_request(text, f"node-{i}"), context) for i in range(6)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, pb.JoinResponse)]
    lost = [r for r in results if isinstance(r, JoinRefused)]
    assert len(won) == 1 and len(lost) == 5, results
    assert all("used up" in str(r) for r in lost)
    listed = await service.ListTokens(pb.ListTokensRequest(), context)
    assert [t.uses_left for t in listed.tokens] == [0]


async def test_a_token_of_three_uses_joins_three(service: TokensService) -> None:
    text = await make(service, uses=3)
    context: Any = Caller()
    results = await asyncio.gather(
        *(service.Join(join_request(text, f"node-{i}"), context) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, pb.JoinResponse) for r in results) == 3


async def test_refused_joins_write_nothing(service: TokensService, etcd: str) -> None:
    context: Any = Caller()
    text = await make(service)
    token = jointoken.parse_token(text)
    wrong_secret = str(jointoken.JoinToken(token.ca_digest, token.id, "f" * 32))
    unknown = str(jointoken.new_token(token.ca_digest))
    other_ca = str(jointoken.new_token("a" * 64))
    bad_csr = pb.JoinRequest(token=text, node="node-1", csr=b"not a csr")
    before = await etcd_keys(etcd)
    for request, word in [
        (join_request(wrong_secret, "node-1"), "unknown"),
        (join_request(unknown, "node-1"), "unknown"),
        (join_request(other_ca, "node-1"), "another cluster"),
        (bad_csr, "certificate signing request"),
    ]:
        with pytest.raises(JoinRefused, match=word):
            await service.Join(request, context)
    assert await etcd_keys(etcd) == before
    # The token was not spent by any of them.
    answer = await service.Join(join_request(text, "node-1"), context)
    cert = pki.load_cert_pem(answer.certificate)
    assert pki.identity_of(cert) == pki.Identity(pki.Role.NODE, "node-1")


async def test_revoked_and_expired_tokens_are_refused(service: TokensService) -> None:
    context: Any = Caller()
    revoked = await make(service)
    await service.RevokeToken(pb.RevokeTokenRequest(id=revoked.split(".")[2]), context)
    with pytest.raises(JoinRefused, match="revoked"):
        await service.Join(join_request(revoked, "node-1"), context)
    expiring = await make(service, ttl=0.2)
    await asyncio.sleep(0.3)  # the token's lifetime is what is tested
    with pytest.raises(JoinRefused, match="expired"):
        await service.Join(join_request(expiring, "node-1"), context)
