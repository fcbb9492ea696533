"""The node's own certificate: where it is kept, what it is served with, when it renews.

The node's credentials (the cluster CA, the node certificate, the key made here)
live in STATE_DIR/NAME/node.credentials (AgentConfig.credentials_path), 0600.
NodeIdentity holds the current ones for the agent: the session dials with them,
the agent's own server serves with them, and a renewal replaces them in both
without a restart. The server's credentials are gRPC's dynamic ones: at each new
handshake gRPC asks for the certificate configuration, and gets the renewed one
once there is one; open connections keep theirs.

Renewal is at about two thirds of the certificate's life (common/renewal.py): a
new key is made here (`begin_renewal` gives the CSR to send), and the scheduler's
answer is taken only if it is for that key, issued by the same CA, for the same
node (`complete_renewal`), and then written atomically before it is used.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from paas.agent.errors import AgentError
from paas.common import pki
from paas.common.renewal import renew_at

log = logging.getLogger(__name__)


class IdentityError(AgentError):
    """The node's credentials cannot be used or renewed; the message says which and why."""


def expired(credentials: pki.Credentials, now: dt.datetime) -> bool:
    return now >= credentials.cert.not_valid_after_utc


class NodeIdentity:
    """The node's credentials in use, replaced whole by each renewal."""

    def __init__(self, path: Path, credentials: pki.Credentials) -> None:
        self.path = path
        self._credentials = credentials
        self._pending: ec.EllipticCurvePrivateKey | None = None
        self._renewals = 0
        self._lock = threading.Lock()  # the server's fetcher runs on a gRPC thread
        self._served = 0  # the renewal the server's configuration was last made for
        self._received = dt.datetime.now(dt.UTC)  # when the current certificate came

    @property
    def credentials(self) -> pki.Credentials:
        return self._credentials

    @property
    def name(self) -> str:
        return self._credentials.identity.name

    @property
    def renewals(self) -> int:
        return self._renewals

    def seconds_to_renewal(self, now: dt.datetime | None = None) -> float:
        cert = self._credentials.cert
        due = renew_at(cert.not_valid_before_utc, cert.not_valid_after_utc, self._received)
        return (due - (now or dt.datetime.now(dt.UTC))).total_seconds()

    # ------------------------------------------------------------ renewal

    def begin_renewal(self) -> bytes:
        """A CSR for a new key, kept here until the certificate for it comes."""
        self._pending = pki.generate_key()
        return pki.make_csr(self._pending, self._credentials.identity)

    def complete_renewal(self, cert_pem: bytes) -> None:
        """Take the renewed certificate: checked, written atomically, then used.

        Blocking (it writes and syncs the file): call it in a thread."""
        key = self._pending
        if key is None:
            raise IdentityError("a renewed certificate came that this node did not ask for")
        cert = pki.load_cert_pem(cert_pem)
        old = self._credentials
        if cert.public_key() != key.public_key():
            raise IdentityError("the renewed certificate is not for the key this node made")
        try:
            cert.verify_directly_issued_by(old.ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise IdentityError("the renewed certificate is not from this cluster's CA") from None
        if pki.identity_of(cert) != old.identity:
            raise IdentityError(
                f"the renewed certificate names {pki.identity_of(cert)}, not {old.identity}"
            )
        renewed = pki.Credentials(ca_cert=old.ca_cert, cert=cert, key=key)
        pki.write_credentials(self.path, renewed)
        with self._lock:
            self._credentials = renewed
            self._received = dt.datetime.now(dt.UTC)
            self._pending = None
            self._renewals += 1
        log.info(
            "node certificate renewed (serial %s, valid until %s)",
            renewed.serial,
            renewed.expires.isoformat(timespec="seconds"),
        )

    # ------------------------------------------------------------ gRPC credentials

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For a new connection to a scheduler: the current certificate."""
        creds = self._credentials
        return grpc.ssl_channel_credentials(
            root_certificates=creds.ca_pem,
            private_key=creds.key_pem,
            certificate_chain=creds.cert_pem,
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """For the agent's own server: client certificates required (the scheduler's),
        the node certificate reloaded at the first handshake after a renewal."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch_configuration,  # type: ignore[arg-type]  # None is allowed
            require_client_authentication=True,
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        creds = self._credentials
        return grpc.ssl_server_certificate_configuration(
            [(creds.key_pem, creds.cert_pem)], root_certificates=creds.ca_pem
        )

    def _fetch_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        # gRPC calls this at each new handshake; None keeps what it has.
        with self._lock:
            if self._served == self._renewals:
                return None
            self._served = self._renewals
        return self._configuration()
