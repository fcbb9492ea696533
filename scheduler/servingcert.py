"""The replica's own certificate, renewed by the replica itself and reloaded without a restart.

Each replica issues itself a serving certificate at start (tlsdir.py). This module
keeps it current: at two thirds of its life it issues the next one from the CA it
holds, and gRPC picks it up at the next handshake through dynamic server
credentials (open connections, agent sessions among them, keep theirs). The same
certificate is the replica's client certificate when it dials agents: readers
take `credentials` at each dial, so they dial with the newest.

The API's port requires a client certificate; the join port (an agent's first
Join has none) asks for none, and the guard (auth.py) lets only Join in there.

    serving = ServingCertificate(tls.credentials, reissue=lambda: ...)
    server.add_secure_port(listen, serving.server_credentials(True))
    task = asyncio.create_task(serving.run())
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence

import grpc
from cryptography import x509

from paas.common import pki
from paas.common.renewal import renew_at

log = logging.getLogger(__name__)

# After a failed re-issue (a CA key that cannot be read, say), try again this soon.
RETRY_AFTER = 5.0


def renew_in(credentials: pki.Credentials, received: dt.datetime, now: dt.datetime) -> float:
    """Seconds from `now` until `credentials`, had at `received`, is due for renewal
    (negative when past due)."""
    cert = credentials.cert
    due = renew_at(cert.not_valid_before_utc, cert.not_valid_after_utc, received)
    return (due - now).total_seconds()


class ServingCertificate:
    """The current serving (and agent-dialing) credentials of this replica."""

    def __init__(
        self, credentials: pki.Credentials, reissue: Callable[[], pki.Credentials]
    ) -> None:
        """`reissue`: makes the next credentials (blocking: it signs with the CA key)."""
        self._credentials = credentials
        self._reissue = reissue
        self._lock = threading.Lock()  # gRPC calls the fetcher on its own threads
        self._version = 0
        self._received = dt.datetime.now(dt.UTC)

    @property
    def credentials(self) -> pki.Credentials:
        return self._credentials

    def reissue_with(self, reissue: Callable[[], pki.Credentials]) -> None:
        self._reissue = reissue

    def server_credentials(self, require_client_certificate: bool) -> grpc.ServerCredentials:
        """For one port: the API's requires a client certificate from the cluster CA,
        the join port's asks for none (gRPC's Python servers cannot ask without
        requiring; the guard lets only Join in without one)."""
        served = [self._version]  # what this port's gRPC has, per port

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            with self._lock:
                if served[0] == self._version:
                    return None
                served[0] = self._version
                credentials = self._credentials
            return _configuration(credentials)

        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._credentials),
            fetch,  # type: ignore[arg-type]  # None keeps the current one
            require_client_authentication=require_client_certificate,
        )

    async def renew(self) -> None:
        credentials = await asyncio.to_thread(self._reissue)
        with self._lock:
            self._credentials = credentials
            self._received = dt.datetime.now(dt.UTC)
            self._version += 1
        log.info(
            "serving certificate renewed (serial %s, valid until %s)",
            credentials.serial,
            credentials.expires.isoformat(timespec="seconds"),
        )

    async def run(self) -> None:
        """Renew at two thirds of each certificate's life, until cancelled."""
        while True:
            now = dt.datetime.now(dt.UTC)
            await asyncio.sleep(max(0.0, renew_in(self._credentials, self._received, now)))
            try:
                await self.renew()
            except Exception as exc:  # keep serving the current one, and say so
                log.error("cannot renew the serving certificate: %s; retrying", exc)
                await asyncio.sleep(RETRY_AFTER)


def reissue_like(
    ca: pki.CertificateAuthority,
    credentials: pki.Credentials,
    ttl: dt.timedelta,
    more: Sequence[x509.GeneralName] = (),
) -> pki.Credentials:
    """New credentials (a new key) naming what `credentials` names (its identity, its
    hosts and its join address), and `more`, for `ttl`."""
    sans = credentials.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    role = pki.Identity(credentials.identity.role, credentials.identity.name).uri
    kept = [
        n
        for n in sans.value
        if not (isinstance(n, x509.UniformResourceIdentifier) and n.value == role)
    ]
    return ca.issue_credentials(credentials.identity, ttl, [*kept, *more])


def _configuration(credentials: pki.Credentials) -> grpc.ServerCertificateConfiguration:
    # The chain, leaf then CA: a joining agent pins the CA by its digest (agent/enroll.py).
    return grpc.ssl_server_certificate_configuration(
        [(credentials.key_pem, credentials.cert_pem + credentials.ca_pem)],
        root_certificates=credentials.ca_pem,
    )
