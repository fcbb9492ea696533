"""Admin credentials: CreateCredentials (sign a CLI's CSR), ListCredentials, RevokeCredentials.

The CLI makes the key and sends only a CSR, so a key never leaves the host it was
made on; the scheduler signs it with the cluster CA for the role admin and the name
asked for, whatever the CSR's subject says. etcd keeps each credential's name,
serial, expiry and whether it is revoked, never a key (store.py). A revocation puts
the serial on the deny list that auth.py reads on every call.

The first admin credentials, made by `paas cluster init` before any scheduler ran,
are entered in etcd the first time this service is used (TLS_DIR/admin.crt), so they
can be listed and revoked like any other.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

from cryptography import x509

from paas.common.errors import InvalidInput
from paas.common.pki import (
    ADMIN_TTL,
    CertificateAuthority,
    Identity,
    Role,
    cert_pem,
    identity_of,
    serial_of,
)
from paas.common.pki import expires_at as cert_expires_at
from paas.proto import paas_pb2 as pb
from paas.scheduler.errors import AlreadyExists, NotFound
from paas.scheduler.guard import Context
from paas.scheduler.store import CredentialRecord, Store

log = logging.getLogger(__name__)


def _view(record: CredentialRecord) -> pb.Credential:
    return pb.Credential(
        name=record.name,
        serial=record.serial,
        expires_at=record.expires_at,
        created_at=record.created_at,
        revoked=record.revoked,
    )


def _record(cert: x509.Certificate, name: str, created_at: float) -> CredentialRecord:
    return CredentialRecord(
        name=name,
        serial=serial_of(cert),
        expires_at=cert_expires_at(cert).timestamp(),
        created_at=created_at,
    )


class CredentialsService:
    """CreateCredentials, ListCredentials, RevokeCredentials."""

    def __init__(
        self,
        store: Store,
        ca: CertificateAuthority | None,
        first_admin: x509.Certificate | None = None,
    ) -> None:
        """`ca` None: TLS is off, and there is nothing to sign with."""
        self._store = store
        self._ca = ca
        self._first_admin = first_admin

    def _require_ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise InvalidInput(
                "this scheduler runs with --insecure: it has no CA, so there are no credentials"
            )
        return self._ca

    async def _enter_first_admin(self) -> None:
        """Put `cluster init`'s admin credential in etcd, once (put-if-absent)."""
        cert = self._first_admin
        if cert is None:
            return
        name = identity_of(cert).name
        if await self._store.credential(name) is None:
            # Made by `cluster init` before any scheduler ran: its certificate's start
            # (a few minutes before it was made) is the best record of when.
            made = cert.not_valid_before_utc.timestamp()
            await self._store.add_credential(_record(cert, name, made))
        self._first_admin = None

    async def CreateCredentials(
        self, request: pb.CreateCredentialsRequest, context: Context
    ) -> pb.CreateCredentialsResponse:
        ca = self._require_ca()
        await self._enter_first_admin()
        if await self._store.credential(request.name) is not None:
            raise AlreadyExists(
                f"credentials named {request.name!r} exist already (`paas credentials` lists "
                "them); choose another name"
            )
        ttl = dt.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else ADMIN_TTL
        cert = ca.sign_csr(request.csr, Identity(Role.ADMIN, request.name), ttl)
        record = _record(cert, request.name, time.time())
        await self._store.add_credential(record)
        log.info("issued admin credentials %s (serial %s)", record.name, record.serial)
        return pb.CreateCredentialsResponse(
            credential=_view(record), certificate=cert_pem(cert), ca_certificate=ca.cert_pem
        )

    async def ListCredentials(
        self, request: pb.ListCredentialsRequest, context: Context
    ) -> pb.ListCredentialsResponse:
        self._require_ca()
        await self._enter_first_admin()
        records = await self._store.credentials()
        return pb.ListCredentialsResponse(
            credentials=[_view(records[name]) for name in sorted(records)]
        )

    async def RevokeCredentials(
        self, request: pb.RevokeCredentialsRequest, context: Context
    ) -> pb.Credential:
        self._require_ca()
        await self._enter_first_admin()
        record = await self._store.credential(request.name)
        if record is None:
            raise NotFound(f"no credentials named {request.name!r} (`paas credentials` lists them)")
        if not record.revoked:
            await self._store.revoke_credential(record, time.time())
            log.info("revoked admin credentials %s (serial %s)", record.name, record.serial)
        return _view(dataclasses.replace(record, revoked=True))
