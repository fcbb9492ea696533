"""The nodes' certificates, as the scheduler signs them: at Join and on renewal.

Wraps the cluster CA (common/pki.py) with the one rule of node certificates: the
scheduler, not the CSR, says who the certificate names (role node and the name
the token was used for, or the name of the session that asks to renew), and
every one lives `ttl` (the scheduler's --node-cert-ttl, 24 h by default). The
key never comes here: a CSR carries only its public half.
"""

from __future__ import annotations

import datetime as dt

from paas.common import pki
from paas.scheduler.errors import JoinRefused

DEFAULT_NODE_CERT_TTL = pki.NODE_TTL.total_seconds()


class NodeCertificates:
    """Signs node certificates; tokens_api.NodeIssuer for Join, and the sessions' renewals."""

    def __init__(self, ca: pki.CertificateAuthority, ttl: float = DEFAULT_NODE_CERT_TTL) -> None:
        if ttl <= 0:
            raise ValueError(f"a node certificate's lifetime must be positive, not {ttl}")
        self._ca = ca
        self._ttl = dt.timedelta(seconds=ttl)

    @property
    def ca_digest(self) -> str:
        return self._ca.digest

    @property
    def ca_pem(self) -> bytes:
        return self._ca.cert_pem

    def check_csr(self, csr_pem: bytes) -> None:
        try:
            pki.load_csr(csr_pem)
        except pki.PKIError as exc:
            raise JoinRefused(f"the node's {exc}") from None

    def sign_node(self, csr_pem: bytes, node: str) -> bytes:
        """A node certificate for the CSR's key naming `node`; JoinRefused for a bad CSR."""
        identity = pki.Identity(pki.Role.NODE, node)
        try:
            return pki.cert_pem(self._ca.sign_csr(csr_pem, identity, self._ttl))
        except pki.PKIError as exc:
            raise JoinRefused(f"the node's {exc}") from None
