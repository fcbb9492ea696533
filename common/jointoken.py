"""Join tokens: their text, their secret's hash, and when one may still be used.

A join token lets one agent (or `uses` agents) in before it has a certificate:

    paas1.<sha256 of the CA certificate (DER), 64 hex>.<id, 12 hex>.<secret, 32 hex>

The CA digest lets the agent trust the scheduler before it has anything else,
as Docker Swarm's and kubeadm's tokens do: it checks the certificate the
scheduler shows against it. The id names the token (`paas tokens revoke ID`)
and is not secret; the secret is 128 random bits (`secrets`) and is stored only
as its sha256. A plain sha256 is enough here: slow hashes (bcrypt, scrypt) are
for passwords people choose, which can be guessed; 128 random bits cannot be
searched through a fast hash either.

Whether a stored token may be used (`refusal`) and what using it leaves
(`consumed`) are decided here, apart from etcd. Pure: no I/O.

Where joins are taken: gRPC's Python servers either require a client
certificate or do not ask for one, so a replica takes joins (the one call made
without a certificate) on a port of its own, `--join-listen`. Its serving
certificate names that address in a URI SAN, paas://join/HOST:PORT
(`join_uri`, `join_address_of`): an agent reads it once it trusts the
certificate, and needs to be given only the scheduler's usual address.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography import x509

from paas.common.errors import InvalidInput

PREFIX = "paas1"
DEFAULT_TTL = 3600.0  # seconds
MAX_TTL = 30 * 24 * 3600.0  # a join token is for joining soon, not a standing key
DEFAULT_USES = 1
MAX_USES = 10_000
SECRET_BYTES = 16  # 128 bits
ID_BYTES = 6

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[0-9a-f]{32}")
# The longest text that can be a token, for request size checks.
MAX_TEXT = len(PREFIX) + 3 + 64 + 12 + 32


JOIN_URI_PREFIX = "paas://join/"


def join_uri(address: str) -> x509.UniformResourceIdentifier:
    """The SAN by which a scheduler's certificate says where it takes joins."""
    return x509.UniformResourceIdentifier(JOIN_URI_PREFIX + address)


def join_address_of(cert: x509.Certificate) -> str | None:
    """Where the scheduler of `cert` takes joins (HOST:PORT), if it says."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(JOIN_URI_PREFIX):
            return uri[len(JOIN_URI_PREFIX) :]
    return None


class TokenError(InvalidInput):
    """A join token's text that is not one; the message names what is wrong."""


@dataclass(frozen=True)
class JoinToken:
    """A token as its text carries it."""

    ca_digest: str  # sha256 of the CA certificate's DER, hex
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{PREFIX}.{self.ca_digest}.{self.id}.{self.secret}"

    @property
    def secret_hash(self) -> str:
        return secret_hash(self.secret)


def new_token(ca_digest: str) -> JoinToken:
    """A new token for the CA of `ca_digest`, with a fresh id and secret."""
    check_ca_digest(ca_digest)
    return JoinToken(
        ca_digest=ca_digest,
        id=secrets.token_hex(ID_BYTES),
        secret=secrets.token_hex(SECRET_BYTES),
    )


def parse_token(text: str) -> JoinToken:
    """The token `text` holds; TokenError naming the part that is wrong."""
    parts = text.strip().split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TokenError(
            "not a join token: want paas1.<CA sha256>.<id>.<secret> "
            "(as `paas tokens create` prints it)"
        )
    _, digest, token_id, secret = parts
    if not _HEX64.fullmatch(digest):
        raise TokenError("not a join token: its CA digest is not 64 lowercase hex digits")
    check_token_id(token_id)
    if not _SECRET.fullmatch(secret):
        raise TokenError("not a join token: its secret is not 32 lowercase hex digits")
    return JoinToken(ca_digest=digest, id=token_id, secret=secret)


def check_token_id(token_id: str) -> str:
    if not _ID.fullmatch(token_id):
        raise TokenError(f"invalid token id {token_id!r}: want 12 lowercase hex digits")
    return token_id


def check_ca_digest(digest: str) -> str:
    if not _HEX64.fullmatch(digest):
        raise TokenError(f"invalid CA digest {digest!r}: want 64 lowercase hex digits (sha256)")
    return digest


def secret_hash(secret: str) -> str:
    """What etcd keeps of a secret: its sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(stored_hash: str, secret: str) -> bool:
    """Whether `secret` is the one hashed to `stored_hash` (in constant time)."""
    return hmac.compare_digest(stored_hash, secret_hash(secret))


def check_ttl(ttl: float) -> float:
    if not 0 < ttl <= MAX_TTL:
        raise TokenError(
            f"a token's lifetime must be above 0 s and at most {MAX_TTL:.0f} s (30 days)"
        )
    return ttl


def check_uses(uses: int) -> int:
    if not 1 <= uses <= MAX_USES:
        raise TokenError(f"a token's uses must be between 1 and {MAX_USES}")
    return uses


# ------------------------------------------------------------ a stored token's life


class Refusal(enum.Enum):
    """Why a token cannot be used; each value is the agent's one line."""

    UNKNOWN = "the join token is unknown to this cluster (mistyped, or from another cluster)"
    EXPIRED = "the join token has expired; make a new one with `paas tokens create`"
    USED_UP = "the join token is used up; make a new one with `paas tokens create`"
    REVOKED = "the join token was revoked; make a new one with `paas tokens create`"


@dataclass(frozen=True)
class TokenRecord:
    """A token as etcd keeps it: the secret only hashed."""

    id: str
    secret_hash: str
    created_at: float  # unix seconds
    expires_at: float
    uses: int  # made for this many joins
    uses_left: int
    revoked: bool = False


def made(token: JoinToken, now: float, ttl: float, uses: int) -> TokenRecord:
    """The record of a new token: `uses` joins within `ttl` seconds of `now`."""
    return TokenRecord(
        id=token.id,
        secret_hash=token.secret_hash,
        created_at=now,
        expires_at=now + check_ttl(ttl),
        uses=check_uses(uses),
        uses_left=uses,
    )


def refusal(record: TokenRecord | None, secret: str, now: float) -> Refusal | None:
    """Why `secret` cannot join by `record` at `now`, or None if it may.

    A wrong secret reads as an unknown token: it must not tell a guesser that the
    id exists. Revoked comes before expired and used up: it is what an operator did."""
    if record is None or not secret_matches(record.secret_hash, secret):
        return Refusal.UNKNOWN
    if record.revoked:
        return Refusal.REVOKED
    if now >= record.expires_at:
        return Refusal.EXPIRED
    if record.uses_left <= 0:
        return Refusal.USED_UP
    return None


def consumed(record: TokenRecord) -> TokenRecord:
    """The record after one join."""
    if record.uses_left <= 0:
        raise ValueError(f"token {record.id} has no use left")
    return dataclasses.replace(record, uses_left=record.uses_left - 1)


def revoked(record: TokenRecord) -> TokenRecord:
    return dataclasses.replace(record, revoked=True)


def spent(record: TokenRecord, now: float) -> bool:
    """A token that can never be used again (kept a while so `paas tokens` shows why)."""
    return record.revoked or record.uses_left <= 0 or now >= record.expires_at
